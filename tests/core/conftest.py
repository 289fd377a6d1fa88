"""Fixtures for the data-layer tests: where the real data is, and tiny files built in ``tmp_path``.

The real datasets are read in place (``$EMOTION_DATA_DIR``, else ``<repo>/../shared/data``) and never
copied into the repository; tests that need them skip, saying where they looked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def real_data_dir() -> Path:
    env = os.environ.get("EMOTION_DATA_DIR", "").strip()
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def goemotions_dir() -> Path:
    folder = real_data_dir() / "goemotions"
    if not (folder / "train.tsv").is_file():
        pytest.skip(f"real GoEmotions data not found at {folder} (set EMOTION_DATA_DIR)")
    return folder


@pytest.fixture(scope="session")
def semeval_dir() -> Path:
    folder = real_data_dir() / "semeval2018-ec"
    if not (folder / "train.txt").is_file():
        pytest.skip(f"real SemEval-2018 E-c data not found at {folder} (set EMOTION_DATA_DIR)")
    return folder


@pytest.fixture
def write(tmp_path):
    """``write(name, content)`` -> path; ``str`` content is UTF-8 encoded, ``bytes`` written as-is."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    return _write


GO_LABELS = "joy\nanger\nneutral\n"


@pytest.fixture
def go_folder(write):
    """``go_folder(train_lines, dev_lines=None)`` -> a GoEmotions folder (labels: joy, anger, neutral)."""

    def _make(train: list[str], dev: list[str] | None = None, name: str = "go") -> Path:
        write(f"{name}/labels.txt", GO_LABELS)
        if dev is not None:
            write(f"{name}/dev.tsv", "".join(line + "\n" for line in dev))
        return write(f"{name}/train.tsv", "".join(line + "\n" for line in train)).parent

    return _make
