"""Issue 11, classes 4, 6 and 9 (publishing): ``publish`` never deletes its source, never replaces or silently
drops a run under an existing id, and never publishes files that do not match their manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emotion_core.errors import StoreError
from emotion_core.runs import file_inventory
from emotion_core.store import open_store


def write_run(folder: Path, run_id: str, weights: bytes = b"\1" * 64) -> Path:
    """A complete run folder outside any store (like one kept after a failed publish)."""
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / "weights.bin").write_bytes(weights)
    (folder / "thresholds.json").write_text('{"joy": 0.5}')
    (folder / "manifest.json").write_text(json.dumps({"run_id": run_id, "files": file_inventory(folder)}))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- class 4: publish never deletes the user's data -------------------------------------------------------------------
@pytest.mark.slow
def test_publish_to_s3_keeps_the_source_folder(s3_bucket, tmp_path, emotion):
    source = write_run(tmp_path / "kept-run", "r1")
    before = snapshot(source)
    result = emotion("publish", str(source), "--store", f"s3://{s3_bucket}/team")
    assert result.returncode == 0, result.stderr
    assert snapshot(source) == before, "the source folder was deleted or changed"
    assert open_store(f"s3://{s3_bucket}/team").list_runs() == ["r1"]


def test_publish_into_a_store_that_holds_the_run_keeps_the_source_folder(tmp_path, emotion):
    store = tmp_path / "store"
    first, second = write_run(tmp_path / "a", "r1"), write_run(tmp_path / "b", "r1")
    assert emotion("publish", str(first), "--store", str(store)).returncode == 0
    result = emotion("publish", str(second), "--store", str(store))
    assert result.returncode == 0, result.stderr
    assert snapshot(first) == snapshot(second) == snapshot(store / "runs" / "r1"), "a source folder was deleted"


def test_publishing_a_stores_own_run_into_it_deletes_nothing(tmp_path, emotion):
    store = tmp_path / "store"
    assert emotion("publish", str(write_run(tmp_path / "a", "r1")), "--store", str(store)).returncode == 0
    published = snapshot(store / "runs" / "r1")
    result = emotion("publish", str(store / "runs" / "r1"), "--store", str(store))
    assert result.returncode == 0, result.stderr
    assert snapshot(store / "runs" / "r1") == published, "the published run was deleted"
    assert open_store(store).list_runs() == ["r1"]


def test_publish_from_a_folder_keeps_it_even_when_the_copy_is_renamed(tmp_path):
    store = open_store(tmp_path / "store")
    source = write_run(tmp_path / "user" / "r2", "r2")
    before = snapshot(source)
    store.publish(source, "r2")
    assert snapshot(source) == before and snapshot(tmp_path / "store" / "runs" / "r2") == before


# -- class 6: a different run under an existing id --------------------------------------------------------------------
def test_a_different_run_under_an_existing_id_is_refused_and_kept(tmp_path):
    from emotion_core import pipeline

    store = open_store(tmp_path / "store")
    store.publish(write_run(store.staging("r1"), "r1"), "r1")
    published = snapshot(tmp_path / "store" / "runs" / "r1")
    new = write_run(store.staging("r1"), "r1", weights=b"\2" * 64)  # another training, same id
    with pytest.raises(StoreError, match="run id r1 exists in the store .* with different content") as error:
        pipeline.publish_run(store, new, "r1")
    assert f"The new run is kept at {new}" in str(error.value)
    assert (new / "model" / "weights.bin").read_bytes() == b"\2" * 64, "the new run was discarded"
    assert snapshot(tmp_path / "store" / "runs" / "r1") == published
    open_store(tmp_path / "store")  # a kept complete run is never swept
    assert (new / "manifest.json").is_file()


@pytest.mark.slow
def test_a_different_run_under_an_existing_s3_id_is_refused(s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}")
    store.publish(write_run(tmp_path / "a", "r1"), "r1")
    with pytest.raises(StoreError, match="run id r1 exists in the store .* with different content"):
        store.publish(write_run(tmp_path / "b", "r1", weights=b"\2" * 64), "r1")
    assert (tmp_path / "b" / "model" / "weights.bin").read_bytes() == b"\2" * 64
    assert (store.run_folder("r1") / "model" / "weights.bin").read_bytes() == b"\1" * 64


@pytest.mark.slow
def test_train_reusing_a_run_id_for_a_different_training_fails_clearly(tmp_path, tiny_config, emotion, cli_env):
    store = tmp_path / "store"
    first = emotion("train", str(tiny_config), "--store", str(store), "--run-id", "shared-id", env=cli_env)
    assert first.returncode == 0, first.stderr
    published = snapshot(store / "runs" / "shared-id")
    second = emotion(
        "train",
        str(tiny_config),
        "--store",
        str(store),
        "--run-id",
        "shared-id",
        "--set",
        "training.seed=7",
        env=cli_env,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert "run id shared-id exists in the store" in second.stderr and "run published" not in second.stdout
    assert "Traceback" not in second.stderr + second.stdout
    assert snapshot(store / "runs" / "shared-id") == published


def test_publish_is_not_retried_on_a_run_id_conflict():
    from prefect.states import Failed

    from emotion_core.store import RunIdConflict
    from tasks.training import _retry_unless_conflict

    assert not _retry_unless_conflict(None, None, Failed(data=RunIdConflict("run id r1 exists")))
    assert _retry_unless_conflict(None, None, Failed(data=StoreError("store unreachable")))


# -- class 9: what is published matches its manifest ------------------------------------------------------------------
def test_a_staging_copy_with_empty_files_cannot_be_published(tmp_path, emotion):
    source = write_run(tmp_path / "kept-run", "r1")
    (source / "model" / "weights.bin").write_bytes(b"")  # a failed copy: complete manifest, empty files
    result = emotion("publish", str(source), "--store", str(tmp_path / "store"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "model/weights.bin does not match the sha256" in result.stderr
    assert not (tmp_path / "store" / "runs").exists() or not list((tmp_path / "store" / "runs").iterdir())


def test_a_manifest_naming_another_run_id_is_not_published_under_this_one(tmp_path):
    store = open_store(tmp_path / "store")
    with pytest.raises(StoreError, match="manifest.json names run 'other', not 'r1'"):
        store.publish(write_run(tmp_path / "a", "other"), "r1")
    assert store.list_runs() == []


def test_a_redispatched_child_finds_its_published_run_and_another_config_conflicts(tmp_path, tiny_config):
    """train-all re-dispatches a crashed child with its run id: if the first attempt had published, the
    second returns that run instead of training again and failing on the id; a different config does not."""
    from emotion_core.config import load_run_config
    from emotion_core.pipeline import published_run_uri, train_config
    from emotion_core.store import LocalStore, RunIdConflict

    store = LocalStore(tmp_path / "store")
    cfg = load_run_config(tiny_config)
    assert published_run_uri(store, "child-1", cfg) is None
    uri = train_config(cfg, store, run_id="child-1")
    assert published_run_uri(store, "child-1", cfg) == uri
    other = cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": cfg.training.seed + 1})})
    with pytest.raises(RunIdConflict, match="child-1 exists in the store .* with a different config"):
        published_run_uri(store, "child-1", other)
