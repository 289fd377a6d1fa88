"""The training recipe end to end on real GoEmotions rows: FFNN trained, published, evaluated, predicted."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import yaml

from emotion_core import pipeline
from emotion_core.config import load_run_config
from emotion_core.errors import ModelError
from emotion_core.metrics import sigmoid
from emotion_core.predict import predict_file
from emotion_core.runs import read_run
from emotion_core.store import open_store
from emotion_core.thresholds import apply_thresholds

SMALL = {
    "model": {"max_features": 20000, "hidden_size": 64},
    "data": {"max_train_samples": 3000, "max_validation_samples": 600, "max_test_samples": 400},
    "training": {"epochs": 6, "batch_size": 64, "early_stopping_patience": None},
}


@pytest.fixture(scope="module")
def ffnn_run(data_dir, repo, tmp_path_factory):
    store = open_store(tmp_path_factory.mktemp("store"))
    cfg = load_run_config(repo / "deployments" / "configs" / "ffnn-tfidf.yaml", SMALL)
    return pipeline.train_config(cfg, store), store


def test_run_folder_is_complete(ffnn_run):
    uri, store = ffnn_run
    run = read_run(uri)
    folder = run.folder
    for name in [
        "manifest.json",
        "config.yaml",
        "labels.json",
        "thresholds.json",
        "metrics.json",
        "data_report.json",
        "train_log.json",
        "calibration.json",
        "model/model.safetensors",
        "model/featurizer.json",
        "logits/validation.parquet",
        "logits/test.parquet",
    ]:
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoints").exists()
    assert store.list_runs() == [run.run_id]
    assert not list((store.root / ".staging").iterdir())
    m = run.manifest
    assert m["status"] == "completed" and m["family"] == "ffnn" and m["config_name"] == "ffnn-tfidf"
    assert m["data"]["hash"].startswith("sha256:") and m["data"]["rows"] == {
        "train": 3000,
        "validation": 600,
        "test": 400,
    }
    assert m["timing"]["train_samples_per_second"] > 0 and m["timing"]["epochs_completed"] > 0
    assert m["memory"]["peak_rss_mb"] > 100
    assert m["versions"]["torch"].startswith("2.13") and "transformers" in m["versions"]
    assert m["parameters"]["trainable"] == m["parameters"]["total"] > 64 * 28
    assert "commit" in m["git"] and m["device"]["cpu_count"] >= 1
    # The inventory matches the files on disk (the manifest lists everything but itself).
    listed = set(m["files"])
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert listed == on_disk


def test_metrics_say_which_thresholds_and_learn_something(ffnn_run):
    uri, _ = ffnn_run
    run = read_run(uri)
    metrics = run.metrics()
    for split in ("validation", "test"):
        for policy in ("fixed", "global", "per_label"):
            entry = metrics[split][policy]
            assert entry["threshold_policy"] == policy
            assert entry["thresholds_tuned_on"] == (None if policy == "fixed" else "validation")
    val = metrics["validation"]
    assert val["per_label"]["macro_f1"] >= val["global"]["macro_f1"] >= val["fixed"]["macro_f1"]
    # The held-out validation score: each of 5 folds at per-label thresholds tuned on the other 4, recomputed here
    # from the stored logits; below the in-sample score, which tuned on the rows it scores.
    from emotion_core.data import load_data
    from emotion_core.evaluation import align_labels
    from emotion_core.thresholds import choose_policy

    selection = run.manifest["threshold_selection"]
    val_ids, val_logits = run.logits("validation")
    data_val = load_data(run.config.data)
    again = choose_policy(
        align_labels(val_ids, data_val.ids("validation"), data_val.labels("validation")),
        sigmoid(val_logits),
        "macro_f1",
        candidates=["per_label"],
        seed=run.config.data.seed,
    )
    assert selection["policy"] == "per_label" and selection["held_out_score"] == pytest.approx(
        again["scores"]["per_label"]
    )
    assert 0.05 < selection["held_out_score"] < val["per_label"]["macro_f1"]
    # It learnt from the text: clearly better than a predictor that knows only each label's base
    # rate (constant probabilities, thresholds tuned the same way on the same validation rows).
    from emotion_core.data import load_data
    from emotion_core.thresholds import evaluate_policies

    data = load_data(run.config.data)
    prior = np.tile(data.labels("train").mean(axis=0), (len(data.split("validation")), 1))
    baseline = evaluate_policies(list(run.schema.names), data.labels("validation").astype(int), prior)["validation"][
        "per_label"
    ]
    assert val["per_label"]["macro_f1"] > baseline["macro_f1"] + 0.1
    assert val["per_label"]["micro_f1"] > baseline["micro_f1"] + 0.1
    # Stored logits reproduce the stored test metrics at the stored thresholds.
    ids, logits = run.logits("test")
    data_labels = pl.read_parquet(run.folder / "logits" / "test.parquet").height
    assert len(ids) == data_labels == 400
    thresholds = run.thresholds()
    stored = json.loads((run.folder / "thresholds.json").read_text())
    assert stored["policy"] == "per_label" and stored["tuned_on"] == "validation"
    assert len(stored["thresholds"]["per_label"]) == 28 and set(stored["thresholds"]["fixed"].values()) == {0.5}
    predicted = apply_thresholds(sigmoid(logits), thresholds)
    assert predicted.sum() > 0


def test_predict_on_a_trained_run_matches_stored_logits(ffnn_run, data_dir, tmp_path):
    uri, _ = ffnn_run
    run = read_run(uri)
    ids, logits = run.logits("validation")
    # GoEmotions dev is the validation split: predicting the official file gives the same numbers.
    shipped = run.calibration()
    names = list(run.schema.names)
    # Default: the run's shipped calibration; --no-calibration: raw sigmoid at thresholds.json's.
    for calibration, expected, cut in (
        (True, shipped.probabilities(logits), shipped.thresholds),
        (False, sigmoid(logits), run.thresholds()),
    ):
        out = predict_file(
            uri, data_dir / "goemotions" / "dev.tsv", tmp_path / f"preds-{calibration}.csv", calibration=calibration
        )
        frame = pl.read_csv(out, schema_overrides={"id": pl.Utf8})
        assert frame.columns == ["id", *names, *[f"{n}_prob" for n in names]]
        assert frame.height == 5426
        by_id = dict(zip(frame["id"].to_list(), range(frame.height)))
        rows = [by_id[i] for i in ids]
        probs = frame.select([f"{n}_prob" for n in names]).to_numpy()[rows]
        np.testing.assert_allclose(probs, expected, atol=2e-6)
        np.testing.assert_array_equal(frame.select(names).to_numpy()[rows], apply_thresholds(expected, cut))


def test_failed_run_leaves_nothing_in_the_store(data_dir, repo, tmp_path):
    store = open_store(tmp_path / "store")
    cfg = load_run_config(
        repo / "deployments" / "configs" / "minilm.yaml",
        {"model": {"model": "no-such-org/no-such-model"}, **{"data": SMALL["data"]}},
    )
    with pytest.raises(ModelError, match="no-such-org/no-such-model"):
        pipeline.train_config(cfg, store)
    assert store.list_runs() == [] and list((store.root / ".staging").iterdir()) == []


def test_collapsed_model_is_flagged():
    """A model whose validation predictions are empty for every label at 0.5 carries a flag."""
    from emotion_core.thresholds import evaluate_policies

    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.2).astype(np.int64)
    y[0] = [1, 1, 1]
    probs = np.full((200, 3), 0.1) + rng.random((200, 3)) * 0.05  # never reaches 0.5
    evaluation = evaluate_policies(["a", "b", "c"], y, probs)
    codes = [f["code"] for f in pipeline.quality_flags(evaluation, "per_label")]
    assert "no_predictions_at_0.5" in codes
    healthy = evaluate_policies(["a", "b", "c"], y, np.where(y == 1, 0.9, 0.1))
    assert pipeline.quality_flags(healthy, "per_label") == []


def test_config_snapshot_round_trips(ffnn_run):
    uri, _ = ffnn_run
    run = read_run(uri)
    snapshot = yaml.safe_load((run.folder / "config.yaml").read_text())
    assert snapshot["model"]["hidden_size"] == 64 and run.config.data.max_train_samples == 3000


def test_same_config_same_result_whatever_ran_before(data_dir, repo, tmp_path):
    """Seeded: two runs of one config agree even when other code consumed the random streams in between."""
    import random

    import torch

    cfg = load_run_config(
        repo / "deployments" / "configs" / "ffnn-tfidf.yaml",
        {
            "model": {"max_features": 3000, "hidden_size": 16},
            "data": {"max_train_samples": 800, "max_validation_samples": 200, "max_test_samples": 100},
            "training": {"epochs": 1},
        },
    )
    first = read_run(pipeline.train_config(cfg, open_store(tmp_path / "a")))
    torch.rand(1000), np.random.rand(7), random.random()  # what an earlier run in the process might do
    second = read_run(pipeline.train_config(cfg, open_store(tmp_path / "b")))
    np.testing.assert_allclose(first.logits("validation")[1], second.logits("validation")[1], atol=1e-6)
    assert first.manifest["summary"] == second.manifest["summary"]


@pytest.mark.slow
def test_semeval_run_is_tuned_selected_and_served_on_jaccard(data_dir, repo, tmp_path):
    """The semeval-cpu set's FFNN on a SemEval subset: tweets normalised, Jaccard everywhere, at-least-one honoured."""
    from emotion_core.config import deep_merge, load_config_set
    from emotion_core.data import load_data
    from emotion_core.submission import submit_run

    _, entries = load_config_set(repo / "deployments" / "sets" / "semeval-cpu.yaml")
    entry = next(e for e in entries if e.config.name == "ffnn-semeval")
    small = {"data": {"max_train_samples": 1500}, "training": {"epochs": 2}, "model": {"max_features": 20000}}
    cfg = load_run_config(entry.path, deep_merge(entry.overrides, small))
    uri = pipeline.train_config(cfg, open_store(tmp_path / "store"))
    run = read_run(uri)
    m = run.manifest
    selection = m["threshold_selection"]
    assert m["metric"] == selection["metric"] == "jaccard_samples" and selection["configured"] == "auto"
    assert set(selection["scores"]) == {"global", "per_label", "shrunk", "global_at_least_one"}
    assert m["threshold_policy"] == selection["policy"] == max(selection["scores"], key=selection["scores"].get)
    stored = json.loads((run.folder / "thresholds.json").read_text())
    assert stored["at_least_one"] == (m["threshold_policy"] == "global_at_least_one")
    assert set(stored["thresholds"]) == {"fixed", "global", "per_label", "shrunk", "global_at_least_one"}
    # Early stopping and the best checkpoint on Jaccard; the inference time is recorded for the cost table.
    assert any("eval_jaccard_samples" in step for step in json.loads((run.folder / "train_log.json").read_text()))
    assert m["timing"]["inference"]["texts"] == 684 + 684 and m["timing"]["inference"]["ms_per_text"] > 0
    # Stored logits come from normalised tweets; predicting the raw tweets normalises them the same way.
    raw = load_data(cfg.data.model_copy(update={"preprocess": None}))
    ids, logits = run.logits("validation")
    texts = dict(zip(raw.ids("validation"), raw.texts("validation")))
    assert any("#" in texts[i] or "@" in texts[i] for i in ids)  # the raw split really has tags and mentions
    tweets = tmp_path / "tweets.csv"
    pl.DataFrame({"id": ids, "text": [texts[i] for i in ids]}).write_csv(tweets)
    frame = pl.read_csv(
        predict_file(uri, tweets, tmp_path / "p.csv", calibration=False), schema_overrides={"id": pl.Utf8}
    )
    np.testing.assert_allclose(
        frame.select([f"{n}_prob" for n in run.schema.names]).to_numpy(), sigmoid(logits), atol=2e-6
    )
    # The Kaggle-style file of the unlabelled test split; with at-least-one, no tweet is left without a label.
    result = submit_run(uri, tmp_path / "E-c_en_pred.csv")
    assert result["rows"] == len(raw.split("predict")) > 3000
    if stored["at_least_one"]:
        assert result["rows_without_label"] == 0
