"""Where a dataset's data comes from: ``data.path`` or ``data.store_ref``, then ``$EMOTION_DATA_DIR/<folder>``, then
the Hugging Face hub.

- Folder and hub source: the dataset's ``registry.DatasetSpec``. A ``data.path`` that does not exist is an
  error, never replaced by another source.
- ``data.store_ref``: a pushed dataset, fetched into the cache and verified (``data.pushed``).
- ``tried`` records why each local option did not apply, so a failed hub load says what to fix.

Limits: a dataset without a folder (``tabular``) needs ``data.path``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from emotion_core.config import DataConfig
from emotion_core.data.registry import dataset_spec
from emotion_core.errors import DataError

ENV_VAR = "EMOTION_DATA_DIR"


@dataclass(frozen=True)
class Location:
    path: Path | None
    """Local file or folder; None means the hub."""
    tried: str = ""
    """Why no local data was used (for the hub's error message)."""
    pushed: str | None = None
    """The full reference (``<store>/datasets/sha256/<id>``) of a pushed dataset read from the cache."""


def locate(cfg: DataConfig, store=None) -> Location:
    """``store``: the run's store, where a bare ``data.store_ref`` (``sha256:<id>``) is found."""
    if cfg.store_ref:
        from emotion_core.data.pushed import fetch_dataset, parse_ref

        path, uri = fetch_dataset(parse_ref(cfg.store_ref), store)
        return Location(path, pushed=uri)
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise DataError("data.path does not exist", file=str(path))
        return Location(path)
    folder = dataset_spec(cfg.dataset).folder
    if folder is None:
        raise DataError(
            f"dataset {cfg.dataset!r} needs data.path (a CSV, TSV or Parquet file, or a folder with train.*)"
        )
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        candidate = Path(env).expanduser() / folder
        if candidate.exists():
            return Location(candidate)
        return Location(None, tried=f"data.path is not set and ${ENV_VAR}/{folder} ({candidate}) does not exist")
    return Location(None, tried=f"data.path is not set and ${ENV_VAR} is not set")
