"""Local artefact store: atomic publish, manifest-last completeness, idempotent re-publish."""

from __future__ import annotations

import json

import pytest

from emotion_core.errors import StoreError
from emotion_core.store import open_store, resolve_run_folder


def stage(store, run_id: str, with_manifest: bool = True):
    folder = store.staging(run_id)
    (folder / "model").mkdir()
    (folder / "model" / "weights.safetensors").write_bytes(b"w" * 10)
    if with_manifest:  # as the pipeline writes it: every file's size and sha256 (checked on every read)
        from emotion_core.runs import file_inventory

        (folder / "manifest.json").write_text(json.dumps({"run_id": run_id, "files": file_inventory(folder)}))
    return folder


def test_publish_is_a_move_and_lists_only_complete_runs(tmp_path):
    store = open_store(tmp_path / "store")
    folder = stage(store, "r1")
    uri = store.publish(folder, "r1")
    assert uri == (tmp_path / "store" / "runs" / "r1").as_uri()
    assert not folder.exists()
    assert (tmp_path / "store" / "runs" / "r1" / "model" / "weights.safetensors").read_bytes() == b"w" * 10
    # A folder without a manifest (a crashed writer) is not a run.
    (tmp_path / "store" / "runs" / "half").mkdir()
    (tmp_path / "store" / "runs" / "half" / "metrics.json").write_text("{}")
    assert store.list_runs() == ["r1"]
    with pytest.raises(StoreError, match="incomplete"):
        store.run_folder("half")
    with pytest.raises(StoreError, match="incomplete run"):
        resolve_run_folder(tmp_path / "store" / "runs" / "half")
    assert resolve_run_folder(uri) == tmp_path / "store" / "runs" / "r1"


def test_refuses_to_publish_without_manifest_and_republish_is_idempotent(tmp_path):
    store = open_store((tmp_path / "s").as_uri())
    with pytest.raises(StoreError, match="no manifest.json; refusing"):
        store.publish(stage(store, "r2", with_manifest=False), "r2")
    assert store.list_runs() == []
    first = store.publish(stage(store, "r3"), "r3")
    again = stage(store, "r3")
    assert store.publish(again, "r3") == first
    assert not again.exists()
    assert store.list_runs() == ["r3"]
    # An incomplete leftover under the final name is replaced by the complete run.
    (tmp_path / "s" / "runs" / "r4").mkdir()
    store.publish(stage(store, "r4"), "r4")
    assert store.list_runs() == ["r3", "r4"]
    assert list((tmp_path / "s" / ".staging").iterdir()) == [
        p for p in (tmp_path / "s" / ".staging").iterdir() if p.name.startswith("r2")
    ]


def test_unsupported_scheme_and_missing_run(tmp_path):
    with pytest.raises(StoreError, match="unsupported scheme 'gs'"):
        open_store("gs://bucket/prefix")
    with pytest.raises(StoreError, match="expected s3://<bucket>/"):
        resolve_run_folder("s3://bucket/no-runs-here")
    with pytest.raises(StoreError, match="no such folder"):
        resolve_run_folder(tmp_path / "nothing")
