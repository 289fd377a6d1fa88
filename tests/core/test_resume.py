"""Checkpoints in the store, resume after an interruption, and GPU out-of-memory handling (on CPU).

Real training of a small FFNN on GoEmotions rows; the interruption is an exception raised right
after a checkpoint landed in the store, the out-of-memory errors are ``torch.OutOfMemoryError``
raised by the model's forward for batches above a size (what a too-small GPU does).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from emotion_core import pipeline
from emotion_core.config import parse_run_config
from emotion_core.errors import OutOfMemoryAtMinBatch, StoreError
from emotion_core.models.ffnn import FFNNClassifier
from emotion_core.runs import read_run
from emotion_core.store import open_store
from emotion_core.training.checkpoints import RunCheckpoints

ROWS = 320


def small_config(training: dict | None = None, name: str = "resume-ffnn"):
    return parse_run_config(
        {
            "name": name,
            "model": {"family": "ffnn", "max_features": 2000, "hidden_size": 32},
            "data": {
                "dataset": "goemotions",
                "max_train_samples": ROWS,
                "max_validation_samples": 160,
                "max_test_samples": 80,
            },
            "training": {
                "epochs": 2,
                "batch_size": 32,
                "learning_rate": 0.002,
                "head_learning_rate": 0.002,
                "early_stopping_patience": None,
                "evaluations_per_epoch": 2,
                "group_by_length": False,
                **(training or {}),
            },
            "resources": {"gpu_memory_gb": 2},
        }
    )


def manifest_of(staging) -> dict:
    return json.loads((staging / "manifest.json").read_text())


# -- the store's checkpoint area ----------------------------------------------------------------


def test_local_store_checkpoints_marker_last_only_latest_kept_verified_and_deleted(tmp_path):
    store = open_store(tmp_path / "store")
    assert store.latest_checkpoint("run-a") is None
    for step in (5, 10):
        folder = tmp_path / f"c{step}"
        (folder / "trainer").mkdir(parents=True)
        (folder / "trainer" / "weights.bin").write_bytes(bytes([step]) * 100)
        store.put_checkpoint("run-a", step, folder, {"step": step})
    marker = store.latest_checkpoint("run-a")
    assert marker["step"] == 10 and marker["meta"] == {"step": 10} and set(marker["files"]) == {"trainer/weights.bin"}
    area = store.root / "checkpoints" / "run-a"
    assert [p.name for p in area.iterdir()] == ["checkpoint-10"]  # only the latest kept
    # A newer checkpoint without its marker (an upload that died half-way) is never used.
    (area / "checkpoint-15" / "trainer").mkdir(parents=True)
    (area / "checkpoint-15" / "trainer" / "weights.bin").write_bytes(b"half")
    assert store.latest_checkpoint("run-a")["step"] == 10
    target = store.fetch_checkpoint("run-a", 10, tmp_path / "restored")
    assert (target / "trainer" / "weights.bin").read_bytes() == bytes([10]) * 100
    # A corrupted file is refused, and the target is not created.
    (area / "checkpoint-10" / "trainer" / "weights.bin").write_bytes(b"corrupt")
    with pytest.raises(StoreError, match="sha256"):
        store.fetch_checkpoint("run-a", 10, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    with pytest.raises(StoreError, match="run id"):
        store.latest_checkpoint("../escape")
    with pytest.raises(StoreError, match="document key"):
        store.write_document("checkpoints/run-a/x.json", {})
    store.delete_checkpoints("run-a")
    assert store.latest_checkpoint("run-a") is None and not area.exists()


# -- resume after an interruption ---------------------------------------------------------------


class Interrupted(Exception):
    """Stands for the process dying right after a checkpoint reached the store."""


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_store_checkpoint_and_matches_an_uninterrupted_one(
    data_dir, tmp_path, monkeypatch
):
    cfg = small_config({"checkpoint_every_steps": 6})  # 10 steps an epoch, 20 in all; validation every 5
    store = open_store(tmp_path / "store")
    upload = RunCheckpoints.upload

    def upload_then_die(self, step, *args, **kwargs):
        landed = upload(self, step, *args, **kwargs)
        if step == 12:
            raise Interrupted(f"killed after the checkpoint at step {step}")
        return landed

    monkeypatch.setattr(RunCheckpoints, "upload", upload_then_die)
    with pytest.raises(Interrupted):
        pipeline.train_run(cfg, store, run_id="interrupted")
    monkeypatch.setattr(RunCheckpoints, "upload", upload)
    marker = store.latest_checkpoint("interrupted")
    assert marker["step"] == 12 and marker["meta"]["best_step"] in (5, 10)  # the best validation step travels too
    assert {"trainer/optimizer.pt", "trainer/scheduler.pt", "trainer/trainer_state.json"} <= set(marker["files"])
    assert any(f.startswith("best/") for f in marker["files"])
    assert store.list_runs() == []  # nothing half-published

    events = []
    staging, run_id = pipeline.train_run(cfg, store, run_id="interrupted", progress=events.append)
    manifest = manifest_of(staging)
    assert manifest["resumed_from_step"] == 12 and manifest["timing"]["steps"] == 20
    begin = next(e for e in events if e["event"] == "begin")
    assert begin["step"] == 12  # it did not start at step 0
    assert manifest["oom_adjustments"] == []
    pipeline.publish_run(store, staging, run_id)
    assert store.latest_checkpoint("interrupted") is None  # published: its checkpoints are gone

    # Resuming loses nothing: the same weights as a run that was never interrupted (optimizer,
    # schedule, RNG and data position all came back with the checkpoint).
    straight = open_store(tmp_path / "straight")
    uri = pipeline.train_config(cfg, straight, run_id="straight")
    np.testing.assert_allclose(
        read_run(uri).logits("validation")[1],
        read_run(store.run_folder("interrupted")).logits("validation")[1],
        atol=1e-5,
    )


@pytest.mark.slow
def test_a_checkpoint_of_another_config_is_not_resumed(data_dir, tmp_path):
    store = open_store(tmp_path / "store")
    folder = tmp_path / "foreign"
    (folder / "trainer").mkdir(parents=True)
    (folder / "trainer" / "trainer_state.json").write_text("{}")
    store.put_checkpoint("reused-id", 4, folder, {"fingerprint": "another-config", "step": 4})
    staging, _ = pipeline.train_run(
        small_config({"checkpoint_every_steps": 50, "epochs": 1}), store, run_id="reused-id"
    )
    assert manifest_of(staging)["resumed_from_step"] is None


# -- GPU out of memory --------------------------------------------------------------------------


def oom_above(monkeypatch, rows: int, after_calls: int = 0) -> list[int]:
    """Make training forwards with more than ``rows`` rows raise ``torch.OutOfMemoryError`` (after
    ``after_calls`` successful ones); returns the row counts of the forwards that succeeded."""
    seen: list[int] = []
    forward = FFNNClassifier.forward

    def limited(self, indices, offsets, weights, labels=None):
        if self.training:
            if offsets.numel() > rows and len(seen) >= after_calls:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate 2.00 GiB ({offsets.numel()} rows, injected)"
                )
            seen.append(offsets.numel())
        return forward(self, indices, offsets, weights, labels)

    monkeypatch.setattr(FFNNClassifier, "forward", limited)
    return seen


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_keeps_the_effective_batch_and_is_recorded(data_dir, tmp_path, monkeypatch):
    seen = oom_above(monkeypatch, rows=8)
    cfg = small_config()
    staging, _ = pipeline.train_run(cfg, open_store(tmp_path / "store"))
    manifest = manifest_of(staging)
    assert manifest["oom_adjustments"] == [
        {"step": 0, "batch_size": 16, "gradient_accumulation_steps": 2},
        {"step": 0, "batch_size": 8, "gradient_accumulation_steps": 4},
    ]
    assert manifest["batching"] == {"batch_size": 32, "per_device_batch_size": 8, "gradient_accumulation_steps": 4}
    # The effective batch is unchanged: as many optimizer steps as with 32 rows a step, every row once an epoch.
    assert manifest["timing"]["steps"] == math.ceil(ROWS / 32) * 2
    assert max(seen) == 8 and sum(seen) == ROWS * 2
    assert manifest["status"] == "completed"


@pytest.mark.slow
def test_out_of_memory_mid_run_continues_from_the_failing_step(data_dir, tmp_path, monkeypatch):
    seen = oom_above(monkeypatch, rows=16, after_calls=7)  # steps 1-7 fit at 32 rows, step 8 does not
    staging, _ = pipeline.train_run(small_config({"checkpoint_every_steps": 0}), open_store(tmp_path / "store"))
    manifest = manifest_of(staging)
    assert manifest["oom_adjustments"] == [{"step": 7, "batch_size": 16, "gradient_accumulation_steps": 2}]
    assert manifest["timing"]["steps"] == 20
    assert seen[:7] == [32] * 7 and set(seen[7:]) == {16}
    assert sum(seen) == ROWS * 2  # no row trained twice, none skipped


@pytest.mark.slow
def test_out_of_memory_at_the_floor_stops_with_a_clear_error(data_dir, tmp_path, monkeypatch):
    oom_above(monkeypatch, rows=2)
    store = open_store(tmp_path / "store")
    with pytest.raises(OutOfMemoryAtMinBatch) as info:
        pipeline.train_run(small_config({"min_batch_size": 4}), store)
    message = str(info.value)
    assert "config 'resume-ffnn'" in message and "training.min_batch_size=4" in message
    assert "per-device batch sizes tried: 32, 16, 8, 4" in message and "training.batch_size=32" in message
    assert store.list_runs() == [] and list((store.root / ".staging").iterdir()) == []
