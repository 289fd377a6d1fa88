"""Test-session environment: offline hub, no telemetry, shared data located once.

The data sets are read from ``$EMOTION_DATA_DIR`` or ``../shared/data`` beside the checkout; tests
that need them skip with the reason when neither exists. They are never copied into the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Set before any test imports transformers/prefect: no hub calls (this workplace has no hub; real
# users do), no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("EMOTION_DATA_DIR", str((REPO.parent / "shared" / "data").resolve()))


def shared_data_dir() -> Path | None:
    folder = Path(os.environ["EMOTION_DATA_DIR"])
    return folder if (folder / "goemotions" / "train.tsv").is_file() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = shared_data_dir()
    if folder is None:
        pytest.skip(f"shared data not found at EMOTION_DATA_DIR={os.environ['EMOTION_DATA_DIR']}")
    return folder


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
