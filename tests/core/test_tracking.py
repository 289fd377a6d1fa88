"""W&B tracking on the real wandb package, offline: what lands on disk, and failures that never raise."""

from __future__ import annotations

import json
import logging
import struct
import sys
from pathlib import Path

import pytest

from emotion_core import tracking

KEY = "0123456789abcdef0123456789abcdef01234567"  # a fake W&B API key (40 hex characters)

MANIFEST = {
    "run_id": "minilm-20260101T000000Z-abcdef12",
    "family": "encoder",
    "model": "minilm",
    "config": {"name": "minilm", "model": {"family": "encoder", "model": "minilm"}, "training": {"epochs": 2}},
    "data": {"dataset": "goemotions"},
    "timing": {"wall_seconds": 12.5, "train_seconds": 10.0},
    "parameters": {"trainable": 100, "total": 1000, "trainable_percent": 10.0},
    "summary": {"test": {"per_label": {"macro_f1": 0.42}}},
}
EVALUATION = {
    "test": {
        "per_label": {
            "macro_f1": 0.4321,
            "no_positive_predictions": False,
            "labels_never_predicted": ["fear"],
            "per_label": {"joy": {"f1": 0.6, "support": 12}},
        }
    }
}


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No W&B variables set: the defaults under ``tmp_path/wandb`` are what is tested."""
    for var in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_DIR",
        "WANDB_CACHE_DIR",
        "WANDB_DATA_DIR",
        "WANDB_CONFIG_DIR",
        "WANDB_SILENT",
    ):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "wandb"


def wandb_records(path: Path) -> list:
    """Records of an offline ``.wandb`` file (a LevelDB-style log of protobuf records after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending, records = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def summary_of(run_dir: Path) -> dict:
    [file] = run_dir.glob("run-*.wandb")
    out = {}
    for record in wandb_records(file):
        if record.WhichOneof("record_type") == "summary":
            out.update({item.key: json.loads(item.value_json) for item in record.summary.update if item.key})
    return out


def config_of(run_dir: Path) -> dict:
    [file] = run_dir.glob("run-*.wandb")
    [run] = [r.run for r in wandb_records(file) if r.WhichOneof("record_type") == "run"]
    return {item.key: json.loads(item.value_json) for item in run.config.update}


def test_mode_follows_the_environment(monkeypatch, wandb_env):
    assert tracking.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert tracking.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "Disabled")
    assert tracking.wandb_mode() == "disabled"
    assert tracking.log_run(MANIFEST) == {"status": "disabled", "mode": "disabled"}
    assert not wandb_env.exists()


def test_environment_defaults_only_fill_what_is_unset(monkeypatch, wandb_env, tmp_path):
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "mine"))
    dirs = tracking.prepare_environment(wandb_env)
    assert dirs == {
        "WANDB_DIR": str(wandb_env),
        "WANDB_CACHE_DIR": str(tmp_path / "mine"),
        "WANDB_DATA_DIR": str(wandb_env / "data"),
        "WANDB_CONFIG_DIR": str(wandb_env / "config"),
    }
    assert all(Path(p).is_dir() for p in dirs.values())
    import os

    assert os.environ["WANDB_SILENT"] == "true"


def test_offline_run_and_summary_table_are_written_under_wandb_dir(wandb_env, monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    result = tracking.log_run(MANIFEST, EVALUATION, group="set-a", directory=wandb_env)
    assert result["status"] == "logged" and result["mode"] == "offline" and result["url"] is None
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == wandb_env / "wandb" and run_dir.name.startswith("offline-run-")
    assert result["sync_command"] == f"wandb sync {run_dir}"
    summary = summary_of(run_dir)
    assert summary["test/per_label/macro_f1"] == pytest.approx(0.4321)
    assert summary["test/per_label/per_label/joy/f1"] == pytest.approx(0.6)
    assert summary["test/per_label/no_positive_predictions"] is False
    assert summary["run/timing/wall_seconds"] == 12.5 and summary["manifest/test/per_label/macro_f1"] == 0.42
    assert not any("labels_never_predicted" in k for k in summary)  # lists are not summary numbers
    config = config_of(run_dir)
    assert config["model"] == {"family": "encoder", "model": "minilm"} and config["training"] == {"epochs": 2}

    rows = [
        {"model": "minilm", "macro_f1": 0.43, "flags": ["fear never predicted"]},
        {"model": "ffnn", "macro_f1": 0.38, "error": None},
    ]
    table = tracking.log_summary(rows, "set-a", directory=wandb_env)  # a second W&B run in the same process
    assert table["status"] == "logged" and table["rows"] == 2
    assert table["columns"] == ["model", "macro_f1", "flags", "error"]
    [table_file] = Path(table["run_dir"]).glob("files/media/table/comparison_*.table.json")
    stored = json.loads(table_file.read_text())
    assert stored["columns"] == table["columns"]
    assert stored["data"] == [["minilm", 0.43, '["fear never predicted"]', None], ["ffnn", 0.38, None, None]]
    assert Path(table["run_dir"]) != run_dir
    assert list(home.rglob("*")) == []  # nothing in the home folder


def test_broken_wandb_returns_failed_and_never_logs_the_key(monkeypatch, wandb_env, caplog):
    import wandb

    monkeypatch.setenv("WANDB_API_KEY", KEY)  # -> online, but init is refused before any network call

    def refuse(*args, **kwargs):
        raise RuntimeError(f"401 Unauthorized: api_key={KEY} rejected")

    monkeypatch.setattr(wandb, "init", refuse)
    with caplog.at_level(logging.DEBUG):
        result = tracking.log_run(MANIFEST, EVALUATION, directory=wandb_env)
        table = tracking.log_summary([{"a": 1}], "set-a", directory=wandb_env)
    assert result["status"] == table["status"] == "failed" and result["mode"] == "online"
    assert "RuntimeError: 401 Unauthorized" in result["error"]
    assert KEY not in result["error"] and KEY not in caplog.text
    assert any(r.levelno == logging.WARNING and "W&B tracking of run" in r.getMessage() for r in caplog.records)


def test_missing_wandb_package_is_not_fatal(monkeypatch, wandb_env):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    result = tracking.log_run(MANIFEST, directory=wandb_env)
    assert result["status"] == "failed" and "ModuleNotFoundError" in result["error"]


def test_real_offline_run_with_a_key_keeps_it_out_of_logs_and_files(monkeypatch, wandb_env, caplog):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with caplog.at_level(logging.DEBUG):
        result = tracking.log_run(MANIFEST, EVALUATION, directory=wandb_env)
    assert result["status"] == "logged" and result["mode"] == "offline"
    assert KEY not in caplog.text
    leaked = [p for p in wandb_env.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == []


def test_flatten_keeps_numbers_only(wandb_env):
    import numpy as np

    flat = tracking.flatten(
        {"a": {"b": 1, "c": "text", "d": [1, 2], "e": float("nan"), "f": np.float32(0.5)}, "g": True}
    )
    assert flat == {"a/b": 1, "a/f": 0.5, "g": True}
    assert tracking.redact(f"token {KEY}") == f"token {KEY}"  # no key in the environment: nothing to redact


def test_live_curves_are_off_offline_unless_asked(monkeypatch, wandb_env):
    assert tracking.live_report_to() == "none"  # offline: the curves are in train_log.json
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_DIR", str(wandb_env))
    assert tracking.live_report_to() == ["wandb"]  # online: live
    monkeypatch.setenv("EMOTION_WANDB_LIVE", "0")
    assert tracking.live_report_to() == "none"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("EMOTION_WANDB_LIVE", "1")
    assert tracking.live_report_to() == "none"


@pytest.mark.slow
def test_training_streams_its_curves_to_the_named_project(monkeypatch, wandb_env, tmp_path):
    from helpers import train_tiny_run

    from emotion_core.store import open_store

    monkeypatch.setenv("EMOTION_WANDB_LIVE", "1")
    monkeypatch.setenv("WANDB_PROJECT", "team-emotions")
    monkeypatch.setenv("WANDB_DIR", str(wandb_env))
    monkeypatch.chdir(tmp_path)
    train_tiny_run(tmp_path, open_store(tmp_path / "store"), "live-curves")
    [file] = wandb_env.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(file)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "team-emotions" and run.display_name == "live-curves"
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    evals = [row["eval/macro_f1"] for row in history if "eval/macro_f1" in row]
    assert losses and all(loss > 0 for loss in losses)  # curves while training, one point per logging step
    assert evals and all(0 <= f1 <= 1 for f1 in evals)
    assert any(r.WhichOneof("record_type") == "stats" for r in records)  # system metrics sampled while training
