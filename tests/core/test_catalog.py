"""`emotion runs`: every published run with its scores, the champion of each dataset marked, damaged runs named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from emotion_core import catalog
from emotion_core.registry import dataset_key
from emotion_core.runs import file_inventory
from emotion_core.store import open_store

LABELS = ["joy", "anger"]


def publish(store, run_id: str, config: str, val: float, finished: str) -> None:
    folder = store.staging(run_id)
    (folder / "weights.safetensors").write_bytes(run_id.encode() * 100)
    scores = (("validation", val), ("test", val - 0.1))
    summary = {split: {"calibrated": {"macro_f1": score}} for split, score in scores}
    manifest = {
        "run_id": run_id,
        "config_name": config,
        "family": "ffnn",
        "finished_at": finished,
        "data": {"dataset": "goemotions", "labels": LABELS},
        "threshold_policy": "calibrated",
        "summary": summary,
        "files": file_inventory(folder),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    store.publish(folder, run_id)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(tmp_path / "store")
    return open_store(f"s3://{request.getfixturevalue('s3_bucket')}/team")


def test_runs_are_listed_newest_first_with_the_champion_marked(store):
    publish(store, "old-run", "ffnn", 0.41, "2026-12-01T02:00:00+00:00")
    publish(store, "new-run", "minilm", 0.52, "2026-12-02T02:00:00+00:00")
    key = dataset_key("goemotions", LABELS)
    store.write_document(
        f"registry/{key}.json", {"dataset_key": key, "run_id": "new-run", "validation_macro_f1": 0.52}, create_only=True
    )
    rows = catalog.list_runs(store)
    assert [(r.run_id, r.config, r.champion) for r in rows] == [("new-run", "minilm", True), ("old-run", "ffnn", False)]
    assert rows[0].validation_macro_f1 == 0.52 and rows[0].test_macro_f1 == pytest.approx(0.42)
    assert rows[0].dataset == key and rows[0].problem == ""
    assert catalog.champions(store)[key]["run_id"] == "new-run"


def test_a_damaged_manifest_is_listed_with_its_problem_not_hidden(tmp_path):
    store = open_store(tmp_path / "store")
    publish(store, "good", "ffnn", 0.4, "2026-12-01T02:00:00+00:00")
    (store.root / "runs" / "bad").mkdir()
    (store.root / "runs" / "bad" / "manifest.json").write_text("{not json")
    rows = {r.run_id: r for r in catalog.list_runs(store)}
    assert set(rows) == {"good", "bad"}
    assert "not valid JSON" in rows["bad"].problem and rows["good"].problem == ""


def test_the_cli_prints_the_table_and_the_champion(tmp_path):
    store = open_store(tmp_path / "store")
    publish(store, "r1", "ffnn", 0.4, "2026-12-01T02:00:00+00:00")
    key = dataset_key("goemotions", LABELS)
    store.write_document(
        f"registry/{key}.json", {"dataset_key": key, "run_id": "r1", "validation_macro_f1": 0.4}, create_only=True
    )
    result = subprocess.run(
        [sys.executable, "-m", "emotion_cli.app", "runs", "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "r1" in result.stdout and "0.4000" in result.stdout and "0.3000" in result.stdout
    assert f"champion of {key}: r1 (validation macro-F1 0.4000)" in result.stdout
