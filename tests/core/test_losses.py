"""Training losses against torch and hand-computed values, rare-label oversampling, the non-finite guard,
and their wiring into the Trainer (one tiny real run on GoEmotions rows)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from emotion_core.config import LossConfig, parse_run_config
from emotion_core.errors import EmotionError, TrainingDiverged
from emotion_core.training.losses import build_loss, needs_train_labels, pos_weights
from emotion_core.training.sampling import oversample_indices

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
LABELS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
# Positives per label: 3, 1, 0 of 4 rows -> neg/pos = 1/3, 3, (none) -> pos_weight 1 (floor), 3, cap.
TRAIN = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]])


def loss(**kw) -> float:
    return float(build_loss(LossConfig(**kw), TRAIN)(LOGITS, LABELS))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_label_smoothing_moves_targets_towards_one_half_for_every_kind():
    smooth = LABELS * 0.9 + 0.05
    assert loss(kind="bce", label_smoothing=0.1) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(LOGITS, smooth)), rel=1e-6
    )
    assert loss(kind="focal", focal_gamma=0.0, label_smoothing=0.1) == pytest.approx(
        loss(kind="bce", label_smoothing=0.1), rel=1e-6
    )
    with pytest.raises(ValueError, match="label_smoothing"):
        LossConfig(label_smoothing=0.5)


def test_bce_equals_torch_and_special_cases_reduce_to_it():
    bce = float(F.binary_cross_entropy_with_logits(LOGITS, LABELS))
    assert loss(kind="bce") == pytest.approx(bce, rel=1e-6)
    assert loss(kind="focal", focal_gamma=0.0) == pytest.approx(bce, rel=1e-6)  # alpha unset: both weights 1
    assert loss(kind="asl", asl_gamma_pos=0.0, asl_gamma_neg=0.0, asl_clip=0.0) == pytest.approx(bce, rel=1e-6)


def test_pos_weight_is_negatives_over_positives_floored_at_one_and_capped():
    assert pos_weights(TRAIN, cap=30).tolist() == [1.0, 3.0, 30.0]  # a label without positives gets the cap
    assert pos_weights(TRAIN, cap=2).tolist() == [1.0, 2.0, 2.0]
    expected = F.binary_cross_entropy_with_logits(LOGITS, LABELS, pos_weight=torch.tensor([1.0, 3.0, 30.0]))
    assert loss(kind="bce_pos_weight") == pytest.approx(float(expected), rel=1e-6)
    assert loss(kind="bce_pos_weight", pos_weight_max=2.0) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(LOGITS, LABELS, pos_weight=torch.tensor([1.0, 2.0, 2.0]))), rel=1e-6
    )
    assert needs_train_labels(LossConfig(kind="bce_pos_weight"))
    assert needs_train_labels(LossConfig(kind="combined", weights={"bce_pos_weight": 1.0}))
    assert not needs_train_labels(LossConfig(kind="asl"))
    with pytest.raises(ValueError, match="training labels"):
        build_loss(LossConfig(kind="bce_pos_weight"))


def test_focal_down_weights_an_easy_example_by_hand():
    x, y = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    p = sig(2.0)
    focal = float(build_loss(LossConfig(kind="focal", focal_gamma=2.0))(x, y))
    assert focal == pytest.approx(-((1 - p) ** 2) * math.log(p), rel=1e-5)  # 0.0016 vs BCE 0.127
    assert focal < 0.02 * float(build_loss(LossConfig())(x, y))
    alpha = float(build_loss(LossConfig(kind="focal", focal_gamma=2.0, focal_alpha=0.25))(x, torch.tensor([[0.0]])))
    assert alpha == pytest.approx(-0.75 * p**2 * math.log(1 - p), rel=1e-5)  # a negative: weight 1 - alpha


def test_asl_clip_zeroes_easy_negatives_and_shifts_hard_ones_by_hand():
    negative = torch.tensor([[0.0]])
    # p = sigmoid(-3) = 0.047 < clip 0.05: exactly nothing, and no gradient.
    x = torch.tensor([[-3.0]], requires_grad=True)
    easy = build_loss(LossConfig(kind="asl", asl_clip=0.05))(x, negative)
    easy.backward()
    assert float(easy.detach()) == 0.0 and float(x.grad) == 0.0
    # p = sigmoid(1) = 0.731: p_m = 0.681, loss = -p_m^4 log(1 - p_m).
    q = sig(1.0) - 0.05
    hard = build_loss(LossConfig(kind="asl", asl_gamma_neg=4.0, asl_clip=0.05))(torch.tensor([[1.0]]), negative)
    assert float(hard) == pytest.approx(-(q**4) * math.log(1 - q), rel=1e-5)
    # Positives: -(1 - p)^gamma_pos log p.
    pos = build_loss(LossConfig(kind="asl", asl_gamma_pos=1.0))(torch.tensor([[0.5]]), torch.tensor([[1.0]]))
    assert float(pos) == pytest.approx(-(1 - sig(0.5)) * math.log(sig(0.5)), rel=1e-5)


def test_combined_is_the_weighted_sum():
    cfg = dict(focal_gamma=2.0, asl_gamma_neg=3.0, asl_clip=0.1)
    expected = 0.3 * loss(kind="bce") + 0.5 * loss(kind="focal", **cfg) + 2.0 * loss(kind="asl", **cfg)
    assert loss(kind="combined", weights={"bce": 0.3, "focal": 0.5, "asl": 2.0}, **cfg) == pytest.approx(
        expected, rel=1e-6
    )
    assert loss(kind="combined", weights={"bce_pos_weight": 1.0, "bce": 0.0}) == pytest.approx(
        loss(kind="bce_pos_weight")
    )


@pytest.mark.parametrize(
    "cfg",
    [
        {"kind": "bce"},
        {"kind": "bce_pos_weight"},
        {"kind": "focal"},
        {"kind": "focal", "focal_gamma": 0.5, "focal_alpha": 0.25},
        {"kind": "asl"},
        {"kind": "asl", "asl_gamma_neg": 0.5, "asl_gamma_pos": 0.5},
        {"kind": "asl", "asl_clip": 0.0},
        {"kind": "combined", "weights": {"bce_pos_weight": 1.0, "focal": 1.0, "asl": 1.0}},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_losses_and_gradients_stay_finite_at_extreme_logits(cfg):
    logits = torch.tensor([[1e4, -1e4, 0.0, 1e4, -1e4], [-1e4, 1e4, 30.0, 1e4, -1e4]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0]])
    train = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]])
    value = build_loss(LossConfig(**cfg), train)(logits, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    half = build_loss(LossConfig(**cfg), train)(logits.detach().half(), labels)  # fp16 logits: computed in fp32
    assert half.dtype == torch.float32 and torch.isfinite(half)


# -- oversampling ---------------------------------------------------------------------------------

RATES = np.array([0.4, 0.2, 0.1, 0.02, 0.005])


def skewed_labels(rows: int = 2000) -> np.ndarray:
    return (np.random.default_rng(0).random((rows, len(RATES))) < RATES).astype(np.int64)


def test_oversampling_strength_zero_is_the_identity():
    labels = skewed_labels()
    assert np.array_equal(oversample_indices(labels, 0.0, 1), np.arange(len(labels)))


def test_oversampling_raises_rare_labels_toward_the_median_and_keeps_every_row():
    labels = skewed_labels()
    idx = oversample_indices(labels, 1.0, 1)
    assert np.array_equal(np.unique(idx), np.arange(len(labels)))  # every row, at least once
    before, after = labels.sum(0), labels[idx].sum(0)
    median = np.median(before)
    assert after[3] >= 0.9 * median and after[4] >= 0.9 * median  # the rare labels reach about the median
    assert after.min() >= 0.9 * median
    assert after[0] < 1.5 * before[0]  # the frequent label rises only through co-occurrence
    # Strength 0.5 interpolates in log space: about the geometric mean of the count and the median.
    half = labels[oversample_indices(labels, 0.5, 1)].sum(0)
    assert before[4] < half[4] < after[4]
    assert half[4] == pytest.approx(math.sqrt(before[4] * median), rel=0.3)


def test_oversampling_is_deterministic_per_seed():
    labels = skewed_labels()
    idx = oversample_indices(labels, 0.7, 5)
    assert np.array_equal(idx, oversample_indices(labels, 0.7, 5))
    assert not np.array_equal(idx, oversample_indices(labels, 0.7, 6))  # stochastic rounding is seeded
    with pytest.raises(ValueError, match="strength"):
        oversample_indices(labels, 1.5, 5)


def test_length_grouping_reads_lengths_through_the_oversampling_subset():
    """The Trainer's ``LengthGroupedSampler`` infers lengths from each item's ``input_ids``, through the Subset."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from emotion_core.models.tokenized import TokenizedTexts

    lengths = [3, 9, 1, 5, 7, 2]
    texts = TokenizedTexts(
        {"input_ids": [[1] * n for n in lengths], "attention_mask": [[1] * n for n in lengths]},
        np.eye(6, 2, dtype=np.float32),
    )
    indices = [0, 1, 1, 2, 3, 4, 5, 5, 5]
    subset = torch.utils.data.Subset(texts, indices)
    sampler = LengthGroupedSampler(4, dataset=subset)
    assert sampler.lengths == [lengths[i] for i in indices]
    assert sorted(sampler) == list(range(len(indices)))


# -- non-finite guard -----------------------------------------------------------------------------


def test_non_finite_guard_raises_after_n_bad_logs_and_not_before():
    from emotion_core.training.guards import NonFiniteGuard

    guard = NonFiniteGuard(3, "cfg-x", learning_rate=5e-5, precision="bf16", max_grad_norm=1.0)
    state = SimpleNamespace(global_step=0)
    logs = [
        {"loss": float("nan"), "grad_norm": 2.0},
        {"loss": 0.3, "grad_norm": float("inf")},
        {"loss": 0.3, "grad_norm": 1.0},  # a finite step resets the count
        {"loss": float("nan")},
        {"eval_loss": float("nan")},  # evaluation logs are not judged
        {"loss": 0.3, "grad_norm": float("nan")},
    ]
    for step, entry in enumerate(logs, 1):
        state.global_step = step
        guard.on_log(None, state, None, logs=entry)
    assert len(guard.streak) == 2
    state.global_step = 7
    with pytest.raises(TrainingDiverged) as raised:
        guard.on_log(None, state, None, logs={"loss": float("inf"), "grad_norm": float("nan")})
    message = str(raised.value)
    assert isinstance(raised.value, EmotionError)
    assert message.startswith("config 'cfg-x': training diverged: 3 optimizer steps in a row")
    assert "step 4: loss=nan; step 6: grad_norm=nan; step 7: loss=inf, grad_norm=nan" in message
    assert "training.learning_rate (now 5e-05)" in message and "fp32" in message and "max_grad_norm=1.0" in message


def test_non_finite_guard_sees_every_step_loss_through_the_loss_path():
    """The logged loss hides NaN steps (``logging_nan_inf_filter``): the loss path reports every batch."""
    from emotion_core.training.guards import NonFiniteGuard

    guard = NonFiniteGuard(2, precision="fp16")
    state, quiet = SimpleNamespace(global_step=0), SimpleNamespace(should_log=False)
    grad = torch.ones((), requires_grad=True)
    for step, value in enumerate([1.0, float("nan"), 0.5, float("nan")], 1):
        guard.observe_loss(grad * value)
        guard.observe_loss(torch.tensor(float("nan")))  # no gradient: an evaluation loss, ignored
        state.global_step = step
        guard.on_step_end(None, state, quiet)
    assert [s for s, _ in guard.streak] == [4]
    # A logged step: judged when its log arrives; fp16 ignores grad_norm (the loss scaler skips those steps).
    state.global_step = 5
    guard.observe_loss(grad * 1.0)
    guard.on_step_end(None, state, SimpleNamespace(should_log=True))
    guard.on_log(None, state, None, logs={"loss": 0.7, "grad_norm": float("inf")})
    assert guard.streak == []
    state.global_step = 6
    guard.observe_loss(grad * float("inf"))
    guard.on_step_end(None, state, SimpleNamespace(should_log=True))
    with pytest.raises(TrainingDiverged, match=r"step 6: loss=inf; step 7: loss=nan"):
        state.global_step = 7
        guard.observe_loss(grad * float("nan"))
        guard.on_step_end(None, state, quiet)  # step 6's log never came: judged now


# -- wiring into the Trainer ----------------------------------------------------------------------

SCHEMA_NAMES = ("joy", "anger", "sadness")
TEXTS = [
    "I am so happy today!",
    "This makes me furious.",
    "I miss her so much, it hurts.",
    "What a lovely surprise, thank you!",
    "ugh, stop it",
    "meh",
]
TINY_LABELS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)


def tiny_ffnn(training: dict | None = None):
    from emotion_core.labels import LabelSchema
    from emotion_core.models import build_family

    cfg = parse_run_config(
        {
            "name": "tiny",
            "model": {"family": "ffnn", "max_features": 500, "min_df": 1, "hidden_size": 8},
            "training": {"batch_size": 2, "epochs": 2, **(training or {})},
        }
    )
    torch.manual_seed(0)
    return cfg, build_family(cfg, LabelSchema(SCHEMA_NAMES), TEXTS, TINY_LABELS)


def test_default_bce_through_compute_loss_func_equals_the_models_own_loss(tmp_path):
    from emotion_core.training.fit import build_trainer

    cfg, family = tiny_ffnn()
    dataset = family.make_dataset(TEXTS, TINY_LABELS)
    trainer, _ = build_trainer(cfg, family, dataset, dataset, tmp_path)
    family.model.eval()  # no dropout: both passes see the same logits
    batch = family.collate([dataset[i] for i in range(len(TEXTS))])
    with torch.no_grad():
        before = family.model(**batch)["loss"]  # what training optimised before compute_loss_func
        after = trainer.compute_loss(
            family.model, dict(batch), num_items_in_batch=torch.tensor(batch["labels"].numel())
        )
    assert float(after) == float(before)
    # Evaluation still scores each batch's labels, and the model is called without them.
    prediction = trainer.predict(dataset)
    assert prediction.label_ids.shape == prediction.predictions.shape == (6, 3)
    assert prediction.metrics["test_loss"] == pytest.approx(float(before), rel=1e-6)


def test_build_trainer_oversamples_and_needs_labels_for_label_statistics(tmp_path):
    from emotion_core.training.fit import build_trainer

    cfg, family = tiny_ffnn({"oversample_rare": 1.0, "loss": {"kind": "bce_pos_weight"}})
    dataset = family.make_dataset(TEXTS, TINY_LABELS)
    with pytest.raises(ValueError, match="train_labels"):
        build_trainer(cfg, family, dataset, dataset, tmp_path)
    trainer, _ = build_trainer(cfg, family, dataset, dataset, tmp_path, train_labels=TINY_LABELS)
    assert len(trainer.train_dataset) == 7  # sadness (1 positive) repeated to the median count (2)
    assert trainer.args.eval_steps == 4  # steps counted on the resampled epoch: ceil(7 / 2)


def test_a_diverging_run_stops_with_training_diverged(tmp_path):
    from emotion_core.training.fit import fit

    cfg, family = tiny_ffnn({"max_nonfinite_steps": 2, "epochs": 3})
    poisoned = family.make_dataset(TEXTS, np.full_like(TINY_LABELS, np.nan))  # every loss is NaN
    with pytest.raises(TrainingDiverged, match=r"config 'tiny': training diverged: 2 optimizer steps in a row"):
        fit(cfg, family, poisoned, family.make_dataset(TEXTS, TINY_LABELS), tmp_path)


@pytest.mark.slow
def test_a_real_run_trains_with_asl_and_oversampling(data_dir, repo, tmp_path):
    from emotion_core.config import load_run_config
    from emotion_core.data import load_data
    from emotion_core.models import build_family
    from emotion_core.training.fit import fit

    cfg = load_run_config(
        repo / "deployments" / "configs" / "ffnn-tfidf.yaml",
        {
            "model": {"max_features": 3000, "hidden_size": 32},
            "data": {"max_train_samples": 200, "max_validation_samples": 100, "max_test_samples": 100},
            "training": {
                "epochs": 1,
                "batch_size": 16,
                "evaluations_per_epoch": 1,
                "loss": {"kind": "asl"},
                "oversample_rare": 1.0,
            },
        },
    )
    data = load_data(cfg.data)
    texts, labels = data.texts("train"), data.labels("train")
    family = build_family(cfg, data.schema, texts, labels)
    stats = fit(
        cfg,
        family,
        family.make_dataset(texts, labels),
        family.make_dataset(data.texts("validation"), data.labels("validation")),
        tmp_path,
        train_labels=labels,
    )
    losses = [h["loss"] for h in stats.log_history if "loss" in h] + [
        h["eval_loss"] for h in stats.log_history if "eval_loss" in h
    ]
    assert losses and all(math.isfinite(v) for v in losses)
    assert stats.steps > math.ceil(200 / 16)  # the epoch holds more than the 200 rows (235 at seed 42)
    assert stats.best_validation_macro_f1 is not None and stats.train_samples_per_second > 0
