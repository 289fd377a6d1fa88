"""Fixtures of the security suite: a tiny train config (trains in about a second) and the ``emotion`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import write_tiny_tabular

REPO = Path(__file__).resolve().parents[2]
EMOTION = str(Path(sys.executable).with_name("emotion"))


def run_emotion(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The ``emotion`` console script in a subprocess, from the repository root."""
    return subprocess.run(
        [EMOTION, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})},
        timeout=600,
    )


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    """A tabular FFNN run config on 60 rows of its own CSV (no shared data sets)."""
    data = write_tiny_tabular(tmp_path / "tiny.csv")
    config = {
        "name": "tiny-sec",
        "data": {"dataset": "tabular", "path": str(data), "id_column": "id"},
        "model": {"family": "ffnn", "max_features": 200, "hidden_size": 8, "min_df": 1},
        "training": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None},
        "resources": {"gpu_memory_gb": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def cli_env(prefect_stack, tmp_path) -> dict[str, str]:
    """Environment of CLI calls that reach a flow: the session's Prefect server, a private cache."""
    return {"PREFECT_API_URL": prefect_stack.api_url, "EMOTION_CACHE_DIR": str(tmp_path / "cache")}


@pytest.fixture
def emotion():
    """``emotion(*args, env=...)``: run the CLI (see ``run_emotion``)."""
    return run_emotion
