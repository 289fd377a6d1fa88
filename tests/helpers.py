"""Helpers shared by test modules (imported as ``helpers``: pytest puts ``tests/`` on the path for its conftest)."""

from __future__ import annotations

import importlib.util
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def write_tiny_tabular(path: Path, rows: int = 60) -> Path:
    """A tiny CSV (``id,text,joy,anger``) a tabular FFNN learns in a second: joy on odd rows, anger every third."""
    lines = ["id,text,joy,anger"] + [
        f"r{i},{'happy lovely' if i % 2 else 'calm'} {'furious mad' if i % 3 == 0 else 'fine'} day {i},"
        f"{i % 2},{int(i % 3 == 0)}"
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_refused(result, *fragments: str) -> None:
    """A CLI call refused clearly: exit 2, no traceback, every fragment on stderr."""
    where = f"--- stderr:\n{result.stderr[-3000:]}\n--- stdout:\n{result.stdout[-1000:]}"
    assert result.returncode == 2, where
    assert "Traceback" not in result.stderr + result.stdout, where
    for fragment in fragments:
        assert fragment in result.stderr, f"missing {fragment!r} in:\n{where}"


TINY_FFNN = {
    "model": {"family": "ffnn", "max_features": 200, "hidden_size": 8, "min_df": 1},
    "training": {"epochs": 3, "batch_size": 8, "early_stopping_patience": None, "checkpoint_every_steps": 0},
    "resources": {"gpu_memory_gb": 2},
}


def train_tiny_run(folder: Path, store, name: str = "tiny", hidden_size: int = 8) -> str:
    """Train and publish one tiny FFNN run on ``write_tiny_tabular``'s data (labels joy, anger; seconds); its URI."""
    from emotion_core.config import parse_run_config
    from emotion_core.pipeline import train_config

    write_tiny_tabular(folder / "train.csv", rows=120)
    raw = {
        "name": name,
        **TINY_FFNN,
        "model": {**TINY_FFNN["model"], "hidden_size": hidden_size},
        "data": {"dataset": "tabular", "id_column": "id", "path": str(folder / "train.csv")},
    }
    return train_config(parse_run_config(raw), store)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpu_workers_module():
    """``deployments/gpu_workers.py`` (a script, not a package) loaded as a module."""
    spec = importlib.util.spec_from_file_location("gpu_workers", REPO / "deployments" / "gpu_workers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pause_nightly_schedule(stack, seen: dict | None = None) -> None:
    """Pause ``train-all/nightly``'s schedule (Prefect deletes its auto-scheduled runs): a test session that spans
    the schedule's hour must not start a real nightly on the test workers (one did at 01:00 UTC, taking the
    orchestration slots and the cores). ``seen``: first wait for the scheduler's upcoming runs (up to 60 s) and
    keep them there (``runs``, and ``at``: when they were read) for the test of the schedule."""
    deployment = httpx.get(f"{stack.api_url}/deployments/name/train-all/nightly", timeout=30).json()
    if seen is not None:
        query = {
            "flow_runs": {"deployment_id": {"any_": [deployment["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}
        }
        runs: list = []
        deadline = time.monotonic() + 60
        while len(runs) < 2 and time.monotonic() < deadline:
            runs = httpx.post(f"{stack.api_url}/flow_runs/filter", json=query, timeout=30).json()
            if len(runs) < 2:
                time.sleep(1)
        seen.update(runs=runs, at=datetime.now(UTC), deployment=deployment)
    httpx.post(f"{stack.api_url}/deployments/{deployment['id']}/pause_deployment", timeout=30).raise_for_status()
