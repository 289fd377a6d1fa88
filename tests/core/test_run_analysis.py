"""A run's stored analysis (``emotion_core.run_analysis``): written by the child, read back by the parent unchanged;
anything malformed in the store is refused with the key named, never half-copied into the report."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from helpers import train_tiny_run

from emotion_core.analysis import DataCache, evaluate_run
from emotion_core.run_analysis import AnalysisSettings, AnalysisUnusable, analysis_key, read_analysis, write_analysis
from emotion_core.runs import read_run
from emotion_core.store import open_store

SETTINGS = AnalysisSettings(bootstrap_samples=100, seed=3)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A local store with one tiny run and its stored analysis; the entry and the child's report folder."""
    tmp = tmp_path_factory.mktemp("analysis")
    store = open_store(tmp / "store")
    run_id = train_tiny_run(tmp, store).rstrip("/").rsplit("/", 1)[-1]
    run = read_run(store.run_folder(run_id))
    child = tmp / "child"
    entry = evaluate_run(run, DataCache().for_run(run), child, bootstrap_samples=100, seed=3)
    entry = replace(entry, explanation={"error": "RuntimeError: no GPU"})
    key = write_analysis(store, entry, child, SETTINGS, {"host": "gpu-1"})
    return store, entry, child, key


def test_the_parent_reads_back_the_childs_entry_and_files_unchanged(stored, tmp_path):
    store, entry, child, key = stored
    assert key == f"analysis/{entry.run_id}/analysis.json"
    index = store.read_document(key)
    assert set(index["files"]) == {"evaluation.json", "calibration.json", "reliability.png"}
    assert index["context"] == {"host": "gpu-1"} and index["settings"] == SETTINGS.model_dump()

    read = read_analysis(store, entry.name, entry.run_id, tmp_path, SETTINGS)
    assert read.to_dict() == entry.to_dict()
    for name in index["files"]:
        copied = tmp_path / "models" / entry.name / name
        assert copied.read_bytes() == (child / "models" / entry.name / name).read_bytes()
    assert not list((tmp_path / "models" / entry.name).glob(".analysis-*"))  # no scratch left behind


def test_no_stored_analysis_is_none(stored, tmp_path):
    store, entry, _, _ = stored
    assert read_analysis(store, entry.name, "tiny-never-analysed", tmp_path, SETTINGS) is None


def test_other_settings_or_another_run_are_refused(stored, tmp_path):
    store, entry, _, key = stored
    with pytest.raises(AnalysisUnusable, match="bootstrap_samples"):
        read_analysis(store, entry.name, entry.run_id, tmp_path, AnalysisSettings(bootstrap_samples=200, seed=3))
    with pytest.raises(AnalysisUnusable, match="not .*other-name"):
        read_analysis(store, "other-name", entry.run_id, tmp_path, SETTINGS)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda index: index | {"files": {"../../x": index["files"]["calibration.json"]}}, "files"),
        (lambda index: index | {"format": "1"}, "format"),
        (lambda index: index | {"explanation": {"html": "/etc/passwd"}}, "malformed explanation"),
        (
            lambda index: index | {"files": {k: v for k, v in index["files"].items() if k != "reliability.png"}},
            "reliability.png",
        ),
    ],
)
def test_a_malformed_index_is_refused_naming_it(stored, tmp_path, damage, message):
    store, entry, child, key = stored
    original = store.read_document(key)
    try:
        store.write_document(key, damage(json.loads(json.dumps(original))))
        with pytest.raises(AnalysisUnusable, match=message) as info:
            read_analysis(store, entry.name, entry.run_id, tmp_path, SETTINGS)
        assert key in str(info.value)
        assert not (tmp_path / "models" / entry.name / "calibration.json").exists()  # nothing half-copied
    finally:
        store.write_document(key, original)


def test_a_changed_file_or_a_corrupt_index_is_refused(stored, tmp_path):
    store, entry, _, key = stored
    calibration = store.root / analysis_key(entry.run_id, "calibration.json")
    kept = calibration.read_bytes()
    calibration.write_bytes(kept.replace(b"{", b"[", 1))
    try:
        with pytest.raises(AnalysisUnusable, match="calibration.json does not match its sha256"):
            read_analysis(store, entry.name, entry.run_id, tmp_path, SETTINGS)
        assert not (tmp_path / "models" / entry.name / "evaluation.json").exists()
    finally:
        calibration.write_bytes(kept)
    index = store.root / key
    kept = index.read_bytes()
    index.write_text("{not json")
    try:
        with pytest.raises(AnalysisUnusable, match="analysis.json.*not valid JSON"):
            read_analysis(store, entry.name, entry.run_id, tmp_path, SETTINGS)
    finally:
        index.write_bytes(kept)


def test_the_same_analysis_round_trips_through_s3(stored, s3_bucket, tmp_path):
    """Child and parent on different machines: the run and its analysis in S3 (moto over HTTP)."""
    local, entry, child, _ = stored
    s3 = open_store(f"s3://{s3_bucket}/fleet")
    s3.publish(local.run_folder(entry.run_id), entry.run_id)
    key = write_analysis(s3, entry, child, SETTINGS)
    assert s3.read_document(key)["files"] == local.read_document(key)["files"]
    read = read_analysis(s3, entry.name, entry.run_id, tmp_path / "report", SETTINGS)
    assert read.to_dict() == entry.to_dict()
    copied = tmp_path / "report" / "models" / entry.name / "reliability.png"
    assert copied.read_bytes() == (child / "models" / entry.name / "reliability.png").read_bytes()
