"""The ``emotion`` console script: clear errors without tracebacks, predict on a run, train-all exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EMOTION = str(Path(sys.executable).with_name("emotion"))


def emotion(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EMOTION, *args], capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=600
    )


def test_check_config_ok_and_errors(tmp_path):
    ok = emotion("check-config", "deployments/sets/cpu-demo.yaml", "deployments/configs/minilm.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "set 'cpu-demo', 5 configs" in ok.stdout and "ok  minilm: encoder minilm on goemotions" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "b", "model": {"family": "encoder"}, "training": {"lr": 1}}))
    result = emotion("check-config", str(bad))
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "field 'training.lr'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_override_is_a_clear_error():
    result = emotion("train", "deployments/configs/minilm.yaml", "--set", "epochs")
    assert result.returncode == 2 and "expected KEY=VALUE" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_predict_cli_writes_labels_and_probabilities(data_dir, tmp_path):
    from emotion_core import pipeline
    from emotion_core.config import load_run_config
    from emotion_core.store import open_store

    cfg = load_run_config(
        REPO / "deployments" / "configs" / "ffnn-tfidf.yaml",
        {
            "data": {
                "dataset": "semeval2018-ec",
                "max_train_samples": 1500,
                "max_validation_samples": 300,
                "max_test_samples": 300,
            },
            "model": {"max_features": 5000, "hidden_size": 32},
            "training": {"epochs": 2},
        },
    )
    uri = pipeline.train_config(cfg, open_store(tmp_path / "store"))
    out = tmp_path / "submission.csv"
    result = emotion("predict", uri, str(data_dir / "semeval2018-ec" / "test-unlabelled.txt"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    frame = pl.read_csv(out)
    labels = [
        "anger",
        "anticipation",
        "disgust",
        "fear",
        "joy",
        "love",
        "optimism",
        "pessimism",
        "sadness",
        "surprise",
        "trust",
    ]
    assert frame.columns == ["ID", *labels, *[f"{n}_prob" for n in labels]]
    assert frame.height == 3259
    assert set(frame.select(labels).unpivot()["value"].unique().to_list()) <= {0, 1}
    assert frame.select(labels).to_numpy().sum() > 0
    # Errors: a missing column, and a run folder without a manifest.
    csv = tmp_path / "no-text.csv"
    csv.write_text("id,body\n1,hello\n")
    missing = emotion("predict", uri, str(csv), "--out", str(tmp_path / "x.csv"))
    assert missing.returncode == 2 and "no-text.csv" in missing.stderr and "text" in missing.stderr
    assert not (tmp_path / "x.csv").exists()
    half = tmp_path / "half-run"
    half.mkdir()
    incomplete = emotion("predict", str(half), str(csv), "--out", str(tmp_path / "y.csv"))
    assert incomplete.returncode == 2 and "incomplete run" in incomplete.stderr


@pytest.mark.slow
def test_train_all_cli_runs_the_flow_on_an_ephemeral_server(data_dir, tmp_path):
    """The main job's path: the console script, an in-process Prefect server (SQLite), a local store."""
    spec = {
        "name": "cli-tiny",
        "configs": [
            {
                "path": str(REPO / "deployments" / "configs" / "ffnn-tfidf.yaml"),
                "overrides": {
                    "model": {"max_features": 5000, "hidden_size": 32},
                    "training": {"epochs": 1},
                    "data": {"max_train_samples": 1000, "max_validation_samples": 300, "max_test_samples": 300},
                },
            }
        ],
    }
    set_path = tmp_path / "cli-tiny.yaml"
    set_path.write_text(yaml.safe_dump(spec))
    result = emotion(
        "train-all",
        str(set_path),
        "--store",
        str(tmp_path / "store"),
        PREFECT_HOME=str(tmp_path / "fresh-checkout" / ".emotion" / "prefect"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| ffnn-tfidf | full | ffnn |" in result.stdout and "completed" in result.stdout
    assert "comparison:" in result.stdout and "cli-tiny-" in result.stdout and "/report.html" in result.stdout
    assert (
        tmp_path / "fresh-checkout" / ".emotion" / "prefect" / "prefect.db"
    ).is_file()  # the flow ran against a local SQLite Prefect
    assert len(list((tmp_path / "store" / "runs").iterdir())) == 1


@pytest.mark.slow
def test_submit_writes_a_semeval_submission_at_calibrated_thresholds(data_dir, tmp_path):
    """A run on SemEval E-c -> the Kaggle-style file for the real unlabelled test tweets, ID + 11 labels."""
    from emotion_core.config import load_run_config
    from emotion_core.pipeline import train_config
    from emotion_core.store import open_store

    cfg = load_run_config(
        REPO / "deployments" / "configs" / "ffnn-tfidf.yaml",
        {
            "name": "semeval-ffnn",
            "model": {"max_features": 5000, "hidden_size": 32},
            "training": {"epochs": 1},
            "data": {"dataset": "semeval2018-ec"},
        },
    )
    uri = train_config(cfg, open_store(tmp_path / "store"))
    out = tmp_path / "submission.csv"
    result = emotion("submit", uri, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "calibrated thresholds" in result.stdout
    frame = pl.read_csv(out, infer_schema_length=0)
    assert frame.columns == [
        "ID",
        "anger",
        "anticipation",
        "disgust",
        "fear",
        "joy",
        "love",
        "optimism",
        "pessimism",
        "sadness",
        "surprise",
        "trust",
    ]
    unlabelled = pl.read_csv(data_dir / "semeval2018-ec" / "test-unlabelled.txt", separator="\t", infer_schema_length=0)
    assert frame["ID"].to_list() == unlabelled["ID"].to_list()
    assert set(frame.drop("ID").unpivot()["value"].unique().to_list()) <= {"0", "1"}
    raw = emotion("submit", uri, "--out", str(tmp_path / "plain.csv"), "--no-calibrated")
    assert raw.returncode == 0 and "run thresholds" in raw.stdout
    # a file without a text column: a clear error naming it, nothing written
    no_text = tmp_path / "no-text.csv"
    no_text.write_text("id,body\n1,so happy\n")
    bad = emotion("submit", uri, "--out", str(tmp_path / "bad.csv"), "--data", str(no_text))
    assert bad.returncode == 2 and "no-text.csv" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.csv").exists()
