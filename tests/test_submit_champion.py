"""`emotion submit champion:<dataset>`: the registry's SemEval champion writes the Kaggle-style file (real CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
EMOTION = str(Path(sys.executable).with_name("emotion"))


def emotion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EMOTION, *args], capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=600)


def test_submit_the_champion_of_semeval(data_dir, tmp_path):
    from emotion_core.config import load_run_config
    from emotion_core.pipeline import train_config
    from emotion_core.registry import Registry, candidate_from_manifest, dataset_key_of, decide
    from emotion_core.runs import read_run
    from emotion_core.store import open_store

    store = open_store(tmp_path / "store")
    missing = emotion("submit", "champion:semeval2018-ec", "--store", str(store.root), "--out", str(tmp_path / "x.csv"))
    assert missing.returncode == 2 and "no champion of dataset 'semeval2018-ec'" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "x.csv").exists()

    cfg = load_run_config(
        REPO / "deployments" / "configs" / "ffnn-tfidf.yaml",
        {
            "name": "semeval-ffnn",
            "model": {"max_features": 5000, "hidden_size": 32},
            "training": {"epochs": 1},
            "data": {"dataset": "semeval2018-ec"},
            "threshold_policy": "global_at_least_one",
        },
    )
    manifest = read_run(train_config(cfg, store)).manifest
    assert manifest["metric"] == "jaccard_samples"
    registry = Registry(store)
    registry.record(
        decide(
            None,
            candidate_from_manifest(manifest),
            margin=0.005,
            alpha=0.05,
            paired=None,
            dataset_key=dataset_key_of(manifest),
        )
    )
    assert registry.champion(dataset_key_of(manifest))["metric"] == "jaccard_samples"

    out = tmp_path / "E-c_en_pred.csv"
    result = emotion("submit", "champion:semeval2018-ec", "--store", str(store.root), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 rows with no label" in result.stdout  # the champion's at-least-one rule
    frame = pl.read_csv(out, infer_schema_length=0)
    unlabelled = pl.read_csv(data_dir / "semeval2018-ec" / "test-unlabelled.txt", separator="\t", infer_schema_length=0)
    assert frame.columns[0] == "ID" and len(frame.columns) == 12
    assert frame["ID"].to_list() == unlabelled["ID"].to_list()
