"""Model families on real weights: the offline MiniLM (a real training step) and the TF-IDF FFNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emotion_core.config import parse_run_config
from emotion_core.labels import LabelSchema
from emotion_core.models import build_family, load_family
from emotion_core.models.family import label_prior_logits
from emotion_core.training.batch_logits import predict_logits
from emotion_core.training.optimizer import adamw, layer_depths, param_groups

SCHEMA = LabelSchema(("joy", "anger", "sadness"))
TEXTS = [
    "I am so happy today!",
    "This makes me furious.",
    "I miss her so much, it hurts.",
    "What a lovely surprise, thank you!",
    "ugh, stop it",
    "meh",
]
LABELS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)


@pytest.fixture(scope="module")
def minilm():
    cfg = parse_run_config({"name": "m", "model": {"family": "encoder", "model": "minilm"}})
    torch.manual_seed(0)
    return cfg, build_family(cfg, SCHEMA, TEXTS, LABELS)


def test_label_prior_logits():
    logits = label_prior_logits(LABELS)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), [2 / 6, 2 / 6, 1 / 6], rtol=1e-5)
    assert np.isfinite(label_prior_logits(np.zeros((4, 2)))).all()  # a label never seen is clipped, not -inf


def test_minilm_head_starts_at_priors_and_pooler_is_frozen(minilm):
    _, family = minilm
    np.testing.assert_allclose(family.model.head.bias.detach().numpy(), label_prior_logits(LABELS), rtol=1e-6)
    frozen = [n for n, p in family.model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("body.pooler.") for n in frozen)


def test_mean_pooling_ignores_padding(minilm):
    _, family = minilm
    family.model.eval()
    alone = family.collate([family.make_dataset(["so happy"], None)[0]])
    padded = family.collate(
        [family.make_dataset(["so happy", "a much longer sentence that forces padding here"], None)[i] for i in (0, 1)]
    )
    assert padded["input_ids"].shape[1] > alone["input_ids"].shape[1]
    with torch.no_grad():
        a = family.model(**alone)["logits"][0]
        b = family.model(**padded)["logits"][0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_minilm_real_training_step_lowers_loss_on_the_batch(minilm):
    cfg, family = minilm
    model = family.model
    model.train()
    torch.manual_seed(1)
    batch = family.collate([family.make_dataset(TEXTS, LABELS)[i] for i in range(len(TEXTS))])
    assert batch["labels"].dtype == torch.float32 and batch["input_ids"].shape[0] == 6
    optimizer = adamw(family, cfg.training)
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == [5e-5, 1e-3]  # body and new head learn at their own rates
    body_before = model.body.encoder.layer[0].attention.self.query.weight.detach().clone()
    model.dropout.p = 0.0
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        out = model(**batch)
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert not torch.equal(
        body_before, model.body.encoder.layer[0].attention.self.query.weight
    )  # the body is fine-tuned too


def test_layer_wise_lr_decay_on_minilm(minilm):
    cfg, family = minilm
    training = cfg.training.model_copy(update={"layer_decay": 0.5, "learning_rate": 1e-4})
    lr_of = {id(p): g["lr"] for g in param_groups(family, training) for p in g["params"]}
    named = dict(family.model.named_parameters())
    lr = lambda name: lr_of[id(named[name])]  # noqa: E731
    # 6 blocks: block 5 at 1e-4 * 0.5, block 0 at 1e-4 * 0.5**6, embeddings 0.5**7; the new head keeps its own rate.
    assert lr("body.encoder.layer.5.attention.self.query.weight") == pytest.approx(5e-5)
    assert lr("body.encoder.layer.0.output.dense.bias") == pytest.approx(1e-4 * 0.5**6)
    assert lr("body.embeddings.word_embeddings.weight") == pytest.approx(1e-4 * 0.5**7)
    assert lr("head.weight") == 1e-3
    assert len(lr_of) == sum(p.requires_grad for p in named.values())  # every trainable weight, once
    # decay 1 (the default): the body in one rate, as before
    assert {g["lr"] for g in param_groups(family, cfg.training)} == {5e-5, 1e-3}
    assert layer_depths(["features.weight", "hidden.bias"]) == {}  # no numbered blocks (the FFNN): no decay


def test_minilm_save_and_load_give_identical_logits(minilm, tmp_path):
    cfg, family = minilm
    family.model.eval()
    before = predict_logits(family, TEXTS, batch_size=4)
    family.save(tmp_path)
    assert (tmp_path / "body" / "model.safetensors").is_file() and (tmp_path / "head.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pkl"))
    reloaded = load_family(cfg, SCHEMA, tmp_path)
    np.testing.assert_allclose(predict_logits(reloaded, TEXTS, batch_size=2), before, atol=1e-5)


def test_predict_logits_keeps_input_order(minilm):
    _, family = minilm
    texts = ["short", "a considerably longer text than the first one is", "mid length text"]
    forward = predict_logits(family, texts, batch_size=1)
    backward = predict_logits(family, texts[::-1], batch_size=3)
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-5)


def test_ffnn_features_model_save_load(tmp_path):
    cfg = parse_run_config(
        {"name": "f", "model": {"family": "ffnn", "max_features": 500, "min_df": 1, "hidden_size": 8}}
    )
    torch.manual_seed(0)
    family = build_family(cfg, SCHEMA, TEXTS, LABELS)
    rows = family.make_dataset(TEXTS, LABELS)
    features = rows.features
    assert features.shape[0] == 6 and 0 < features.shape[1] <= 500
    # Two L2-normalised blocks (word, char): every non-empty row has squared norm 2.
    np.testing.assert_allclose(np.asarray(features.multiply(features).sum(axis=1)).ravel(), 2.0, rtol=1e-5)
    batch = family.collate([rows[i] for i in range(6)])
    assert batch["offsets"].tolist()[0] == 0 and batch["indices"].shape == batch["weights"].shape
    loss = family.model(**batch)["loss"]
    loss.backward()
    assert family.model.features.weight.grad is not None
    family.model.eval()
    before = predict_logits(family, TEXTS)
    family.save(tmp_path)
    reloaded = load_family(cfg, SCHEMA, tmp_path)
    np.testing.assert_allclose(predict_logits(reloaded, TEXTS), before, atol=1e-6)
    # Unseen n-grams are ignored, not an error.
    assert predict_logits(reloaded, ["zzzzqqq xxyyzz"]).shape == (1, 3)


def test_in_training_validation_scores_align_with_labels_under_length_grouping(minilm, tmp_path):
    """Regression: the Trainer length-groups the validation set too; scores must use the labels of each batch.

    The Trainer's own evaluation (which picks the best checkpoint and drives early stopping) must
    equal macro-F1 recomputed from predictions in the original order.
    """
    from emotion_core.metrics import multilabel_metrics, sigmoid
    from emotion_core.thresholds import apply_thresholds, tune_thresholds
    from emotion_core.training.fit import build_trainer

    cfg, family = minilm
    rng = np.random.default_rng(3)
    words = ["glad", "furious", "tears", "lovely", "meh", "thanks", "awful", "why", "sure"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 30, size=48)]
    labels = (rng.random((48, 3)) < 0.35).astype(np.float32)
    dataset = family.make_dataset(texts, labels)
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"eval_batch_size": 8})})
    trainer, _ = build_trainer(cfg, family, dataset, dataset, tmp_path)
    assert trainer.args.train_sampling_strategy == "group_by_length"
    reported = trainer.evaluate()["eval_macro_f1"]
    probs = sigmoid(predict_logits(family, texts, batch_size=48))
    y = labels.astype(np.int64)
    expected = multilabel_metrics(y, apply_thresholds(probs, tune_thresholds(y, probs, "per_label")), ["a", "b", "c"])[
        "macro_f1"
    ]
    assert reported == pytest.approx(expected, abs=1e-6)
