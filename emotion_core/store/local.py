"""Local-directory artefact store (the embedded default).

Contract (every store implementation keeps it)
- A run is written into a private staging folder, then published in one step. Inside the run the
  manifest (``manifest.json``) is written last, so a run folder without a manifest is incomplete
  and is never listed or read as a run.
- Publishing is atomic: a rename of the staging folder to ``runs/<run_id>`` on the same filesystem.
  Re-publishing a run id that is already complete is a no-op (idempotent).
- Reports go to ``reports/<name>/``, written file by file through a temporary name then renamed.

Layout: ``<root>/runs/<run_id>/``, ``<root>/reports/<name>/``, ``<root>/.staging/`` (scratch).

Limits: local paths and ``file://`` URIs only for now; object storage (S3) comes with orchestration.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

from emotion_core.errors import StoreError

MANIFEST = "manifest.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class LocalStore:
    """Runs and reports under one local folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store {self.root}: cannot create or open ({exc.strerror})") from None

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def run_uri(self, run_id: str) -> str:
        return (self.root / "runs" / run_id).as_uri()

    def staging(self, run_id: str) -> Path:
        """A fresh, private folder to write a run into before publishing it."""
        folder = self.root / ".staging" / f"{run_id}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def publish(self, staging: Path, run_id: str) -> str:
        """Move a complete staged run to ``runs/<run_id>``; return its URI."""
        if not (staging / MANIFEST).is_file():
            raise StoreError(f"run {run_id}: staging folder {staging} has no {MANIFEST}; refusing to publish an incomplete run")
        final = self.root / "runs" / run_id
        final.parent.mkdir(parents=True, exist_ok=True)
        if (final / MANIFEST).is_file():
            shutil.rmtree(staging)  # already published: idempotent
            return final.as_uri()
        if final.exists():
            shutil.rmtree(final)  # an incomplete leftover (no manifest) is never a run
        os.replace(staging, final)
        return final.as_uri()

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def list_runs(self) -> list[str]:
        """Ids of complete runs (those with a manifest), sorted."""
        runs = self.root / "runs"
        if not runs.is_dir():
            return []
        return sorted(p.name for p in runs.iterdir() if (p / MANIFEST).is_file())

    def run_folder(self, run_id: str) -> Path:
        folder = self.root / "runs" / run_id
        if not (folder / MANIFEST).is_file():
            raise StoreError(f"run {run_id}: not found in {self.uri} or incomplete (no {MANIFEST})")
        return folder

    def report_folder(self, name: str) -> Path:
        folder = self.root / "reports" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def open_store(uri: str | Path) -> LocalStore:
    """Open a store from a local path or ``file://`` URI."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme == "file" else text)
    raise StoreError(f"store '{text}': scheme '{parsed.scheme}' is not supported yet (use a local path or file:// URI)")


def resolve_run_folder(ref: str | Path) -> Path:
    """A complete run folder from a path or ``file://`` URI; raises ``StoreError`` if it is not a complete run."""
    text = str(ref)
    parsed = urlparse(text)
    if parsed.scheme not in ("", "file"):
        raise StoreError(f"run '{text}': scheme '{parsed.scheme}' is not supported yet (use a local path or file:// URI)")
    folder = Path(parsed.path if parsed.scheme == "file" else text).expanduser()
    if not folder.is_dir():
        raise StoreError(f"run '{text}': no such folder")
    if not (folder / MANIFEST).is_file():
        raise StoreError(f"run '{text}': incomplete run (no {MANIFEST}); it was never published")
    return folder
