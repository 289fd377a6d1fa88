"""Local-directory artefact store (the embedded default).

Keeps the contract of ``emotion_core.store.base``. Publishing is a rename of the staging folder to
``runs/<run_id>`` on the same filesystem: atomic. A leftover folder without a manifest under the
final name (a crashed writer of an older version) is replaced.

Layout: ``<root>/runs/<run_id>/``, ``<root>/reports/<name>/``, ``<root>/.staging/`` (scratch).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from emotion_core.errors import StoreError
from emotion_core.store.base import MANIFEST, atomic_write_text  # noqa: F401  (re-exported)


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

    def staging(self, name: str) -> Path:
        """A fresh, private folder to write a run or report into before publishing it."""
        folder = self.root / ".staging" / f"{name}-{uuid.uuid4().hex[:8]}"
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
        if staging.parent != self.root / ".staging":
            # A folder from elsewhere (maybe another filesystem): copy into our staging area first,
            # so the final step is still one rename on this filesystem.
            local = self.staging(run_id)
            shutil.copytree(staging, local, dirs_exist_ok=True)
            staging = local
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

    def publish_report(self, staging: Path, name: str) -> str:
        """Move a staged report folder to ``reports/<name>``; return its URI."""
        final = self.root / "reports" / name
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final.as_uri()
