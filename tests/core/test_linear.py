"""The ``linear`` family (TF-IDF + logistic regression): config, exact logits, and a real run through the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import write_tiny_tabular

from emotion_core import pipeline
from emotion_core.config import parse_run_config
from emotion_core.errors import ConfigError
from emotion_core.labels import LabelSchema
from emotion_core.model_configs import LinearConfig
from emotion_core.models import build_family, load_family
from emotion_core.models.family import label_prior_logits
from emotion_core.runs import read_run
from emotion_core.store import open_store
from emotion_core.training.batch_logits import predict_logits
from emotion_core.training.optimizer import param_groups

SCHEMA = LabelSchema(("joy", "anger"))
TEXTS = ["so happy today", "furious and mad", "happy but mad", "a calm day", "lovely happy day", "mad mad world"]
LABELS = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]], dtype=np.float32)


def config(**training):
    return parse_run_config(
        {"name": "lin", "model": {"family": "linear", "min_df": 1, "max_features": 500}, "training": training}
    )


def test_the_config_is_validated_naming_the_field():
    assert isinstance(config().model, LinearConfig)
    with pytest.raises(ConfigError, match=r"field 'model.word_ngrams': .*1 <= min <= max"):
        parse_run_config({"name": "lin", "model": {"family": "linear", "word_ngrams": [2, 1]}})
    with pytest.raises(ConfigError, match=r"field 'model.hidden_size': Extra inputs are not permitted"):
        parse_run_config({"name": "lin", "model": {"family": "linear", "hidden_size": 8}})


def test_logits_are_logistic_regression_on_the_tfidf_features():
    cfg = config(learning_rate=0.01, head_learning_rate=0.5)
    family = build_family(cfg, SCHEMA, TEXTS, LABELS)
    probs = torch.sigmoid(torch.from_numpy(predict_logits(family, TEXTS))).numpy()
    np.testing.assert_allclose(probs, np.tile(LABELS.mean(axis=0), (len(TEXTS), 1)), rtol=1e-5)  # untrained: priors
    with torch.no_grad():
        family.model.features.weight.normal_(generator=torch.Generator().manual_seed(0))
    features = family.make_dataset(TEXTS, None).features  # the CSR TF-IDF matrix
    weight = family.model.features.weight.detach().numpy()
    expected = features @ weight + family.model.bias.detach().numpy()
    np.testing.assert_allclose(predict_logits(family, TEXTS), expected, rtol=1e-5, atol=1e-6)
    # No separate head: every parameter learns at learning_rate; the bias is not decayed.
    groups = param_groups(family, cfg.training)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [(0.01, 0.01, 1), (0.01, 0.0, 1)]
    np.testing.assert_allclose(label_prior_logits(LABELS), family.model.bias.detach().numpy(), rtol=1e-6)


@pytest.mark.slow
def test_a_run_learns_the_tiny_data_and_reloads_to_the_same_logits(tmp_path):
    csv = write_tiny_tabular(tmp_path / "tiny.csv", rows=120)
    cfg = parse_run_config(
        {
            "name": "lin-tiny",
            "model": {"family": "linear", "min_df": 1, "max_features": 2000},
            "data": {"dataset": "tabular", "path": str(csv), "id_column": "id"},
            "training": {
                "epochs": 8,
                "batch_size": 8,
                "learning_rate": 0.05,
                "weight_decay": 0.0,
                "early_stopping_patience": None,
                "checkpoint_every_steps": 0,
            },
        }
    )
    uri = pipeline.train_config(cfg, open_store(tmp_path / "store"))
    run = read_run(uri)
    manifest = json.loads((run.folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["family"] == "linear" and manifest["timing"]["steps"] > 0
    assert manifest["parameters"]["trainable"] == manifest["parameters"]["total"] > len(SCHEMA)
    # joy = "happy lovely", anger = "furious mad": a linear model on these words separates both labels.
    assert manifest["summary"]["validation"]["per_label"]["macro_f1"] == 1.0
    assert manifest["summary"]["test"]["per_label"]["macro_f1"] == 1.0
    ids, stored = run.logits("test")
    reloaded = load_family(run.config, run.schema, run.folder / "model")
    texts = _texts_of(csv, ids)
    np.testing.assert_allclose(predict_logits(reloaded, texts), stored, rtol=1e-5, atol=1e-5)


def _texts_of(csv, ids: list[str]) -> list[str]:
    rows = dict(line.split(",")[:2] for line in csv.read_text(encoding="utf-8").splitlines()[1:])
    return [rows[i] for i in ids]
