"""Where a dataset's data comes from: ``data.path``, then ``$EMOTION_DATA_DIR/<folder>``, then the Hugging Face hub.

- Folders: ``goemotions``, ``semeval2018-ec``; hub ids in ``HUB``. A ``data.path`` that does not exist is an
  error, never replaced by another source.
- ``tried`` records why each local option did not apply, so a failed hub load says what to fix.

Limits: ``tabular`` has no default location: it needs ``data.path``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from emotion_core.config import DataConfig
from emotion_core.errors import DataError

ENV_VAR = "EMOTION_DATA_DIR"
FOLDERS = {"goemotions": "goemotions", "semeval2018-ec": "semeval2018-ec"}
"""Dataset -> folder name under ``$EMOTION_DATA_DIR``."""
HUB = {
    "goemotions": ("google-research-datasets/go_emotions", "simplified"),
    "semeval2018-ec": ("SemEvalWorkshop/sem_eval_2018_task_1", "subtask5.english"),
}
"""Dataset -> (hub id, config name) used when no local data is found."""


@dataclass(frozen=True)
class Location:
    path: Path | None
    """Local file or folder; None means the hub."""
    tried: str = ""
    """Why no local data was used (for the hub's error message)."""


def locate(cfg: DataConfig) -> Location:
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise DataError("data.path does not exist", file=str(path))
        return Location(path)
    if cfg.dataset not in FOLDERS:
        raise DataError(f"dataset {cfg.dataset!r} needs data.path (a CSV, TSV or Parquet file, or a folder with train.*)")
    folder = FOLDERS[cfg.dataset]
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        candidate = Path(env).expanduser() / folder
        if candidate.exists():
            return Location(candidate)
        return Location(None, tried=f"data.path is not set and ${ENV_VAR}/{folder} ({candidate}) does not exist")
    return Location(None, tried=f"data.path is not set and ${ENV_VAR} is not set")
