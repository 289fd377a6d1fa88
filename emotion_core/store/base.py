"""What every artefact store promises, and the helpers they share.

Contract
- A run is written into a local staging folder (``staging(run_id)``), then ``publish``ed in one
  step. The manifest (``manifest.json``) is always the last object written: a run without a manifest
  is incomplete, is never listed by ``list_runs`` and is never opened by ``run_folder``.
- Re-publishing a run id that is already complete changes nothing (idempotent).
- A failed publish leaves no manifest behind, so readers never see half a run.
- Reports (``publish_report``) follow the same rule with their own ``index`` file written last.
- ``run_folder(run_id)`` returns a local folder holding the complete run (for remote stores: a
  verified download in a local cache).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Protocol

MANIFEST = "manifest.json"


class ArtifactStore(Protocol):
    """Implemented by ``LocalStore`` and ``S3Store``."""

    @property
    def uri(self) -> str: ...

    def staging(self, name: str) -> Path: ...

    def publish(self, staging: Path, run_id: str) -> str: ...

    def discard(self, staging: Path) -> None: ...

    def list_runs(self) -> list[str]: ...

    def run_folder(self, run_id: str) -> Path: ...

    def publish_report(self, staging: Path, name: str) -> str: ...


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_manifest_last(folder: Path, last: str = MANIFEST) -> list[Path]:
    """Every file under ``folder``, sorted, with ``last`` (if present) at the end."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != last)
    if (folder / last).is_file():
        files.append(folder / last)
    return files
