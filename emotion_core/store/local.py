"""Local-directory artefact store (the embedded default), keeping ``base.ArtifactStore``'s contract.

- Layout: ``<root>/runs/<run_id>/``, ``reports/<name>/``, ``checkpoints/<run_id>/checkpoint-<step>/``,
  ``.staging/`` (scratch), ``<root>/<key>`` for documents (e.g. ``registry/``).
- Publish: a rename of the store's own staging folder (atomic); a folder from elsewhere is copied in first.
- Documents: temporary file + rename; a conditional write holds an ``flock`` on ``.<name>.lock``.
- Checkpoints: copied into a hidden folder, marker last, renamed into place.

Limits: compare-and-swap of documents holds across processes of one machine (and network filesystems that
honour ``flock``); without ``fcntl`` (Windows) it is not locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from emotion_core.errors import StoreError
from emotion_core.files import atomic_write_text, sha256_file
from emotion_core.store.base import (  # noqa: F401  (re-exported)
    CHECKPOINT_MARKER,
    MANIFEST,
    DocumentConflict,
    RunId,
    RunIdConflict,
    check_document_key,
    check_manifest_run_id,
    checkpoint_files,
    checkpoint_folder_name,
    checkpoint_marker,
    checkpoint_step,
    confined,
    dump_document,
    is_run_id,
    parse_document,
)
from emotion_core.store.integrity import moved, read_manifest, same_run, staging_name, sweep_staging, verify_run

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _reason(exc: OSError) -> str:
    """One line for a failed write; ``shutil.copytree`` collects a (source, target, reason) per file that failed."""
    errors = exc.args[0] if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) else None
    if errors:
        source, _, why = errors[0]
        more = f", and {len(errors) - 1} more file(s)" if len(errors) > 1 else ""
        return f"{why} while copying {source}{more}"
    return exc.strerror or str(exc)


class LocalStore:
    """Runs and reports under one local folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store {self.root}: cannot create or open ({exc.strerror})") from None
        sweep_staging(self.root / ".staging")  # leftovers of dead writers (never a kept complete run)

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def staging(self, name: str) -> Path:
        """A fresh, private folder to write a run or report into before publishing it."""
        folder = self.root / ".staging" / staging_name(RunId.parse(name, "staging name"))
        try:
            folder.mkdir(parents=True)
        except OSError as exc:  # a read-only store, a full disk, a store path that is not a folder
            raise StoreError(f"store {self.uri}: cannot write a staging folder ({exc.strerror or exc})") from None
        return folder

    def _own_staging(self, folder: Path) -> bool:
        return folder.resolve().parent == (self.root / ".staging").resolve()

    def publish(self, staging: Path, run_id: str) -> str:
        """Publish the complete run in ``staging`` as ``runs/<run_id>``; return its URI.

        The store's own staging folder is renamed into place; any other folder (the user's) is copied
        into the store's staging first and left untouched. The files are verified against the manifest
        before the final rename. Publishing the same run again changes nothing; a different run under
        an existing id raises ``RunIdConflict``. Publishing a store's own run into it is a no-op. A write
        that fails (full disk, read-only store) is a ``StoreError``: nothing is published.
        """
        try:
            return self._publish(staging, run_id)
        except OSError as exc:
            raise StoreError(
                f"store {self.uri}: publishing run {run_id} failed ({_reason(exc)}); nothing was published"
            ) from None

    def _publish(self, staging: Path, run_id: str) -> str:
        run_id = RunId.parse(run_id)
        staging = Path(staging)
        where = f"run {run_id} ({staging})"
        if not (staging / MANIFEST).is_file():
            raise StoreError(
                f"run {run_id}: staging folder {staging} has no {MANIFEST}; refusing to publish an incomplete run"
            )
        final = self.root / "runs" / run_id
        if final.exists() and staging.resolve() == final.resolve():
            verify_run(final, where)
            return final.as_uri()  # the store's own run: nothing to do, nothing deleted
        manifest = read_manifest(staging, where)
        check_manifest_run_id(manifest, run_id, where)
        if (final / MANIFEST).is_file():
            return self._already_published(final, manifest, staging, run_id)
        own = self._own_staging(staging)
        if not own:
            # The user's folder (maybe another filesystem): copy it into our staging area, so the
            # final step is one rename on this filesystem and the source stays as it was.
            copy = self.staging(run_id)
            try:
                shutil.copytree(staging, copy, dirs_exist_ok=True, symlinks=True)
            except OSError as exc:
                self.discard(copy)
                raise StoreError(
                    f"store {self.uri}: copying run {run_id} from {staging} failed ({_reason(exc)})"
                ) from None
            staging = copy
        try:
            verify_run(staging, where)  # what is renamed into place is exactly what the manifest lists
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and not (final / MANIFEST).is_file():
                shutil.rmtree(final)  # an incomplete leftover (no manifest) of the store itself is never a run
            os.replace(staging, final)
            moved(staging, final)
        except OSError as exc:
            if (final / MANIFEST).is_file():  # a concurrent publisher of the same id won the rename
                return self._already_published(final, manifest, staging if own else None, run_id)
            raise StoreError(f"store {self.uri}: publishing run {run_id} failed ({exc.strerror or exc})") from None
        finally:
            if not own and staging.exists():
                self.discard(staging)  # our copy, never the user's folder
        return final.as_uri()

    def _already_published(self, final: Path, manifest: dict, staging: Path | None, run_id: str) -> str:
        """Idempotent re-publish of the same run; ``RunIdConflict`` for a different run under the same id."""
        existing = read_manifest(final, f"run {run_id} in {self.uri}")
        if not same_run(existing, manifest):
            raise RunIdConflict(
                f"run id {run_id} exists in the store {self.uri} with different content; "
                f"the run was not published (choose another run id)"
            )
        if staging is not None and self._own_staging(staging):
            self.discard(staging)
        return final.as_uri()

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def list_runs(self) -> list[str]:
        """Ids of complete runs (those with a manifest and a valid id), sorted."""
        runs = self.root / "runs"
        if not runs.is_dir():
            return []
        return sorted(p.name for p in runs.iterdir() if is_run_id(p.name) and (p / MANIFEST).is_file())

    def read_manifest(self, run_id: str) -> dict:
        """The manifest of a published run, parsed but not verified (for listings; load runs with ``run_folder``)."""
        run_id = RunId.parse(run_id)
        path = self.root / "runs" / run_id / MANIFEST
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"run {run_id}: not found in {self.uri} or incomplete (no {MANIFEST})") from None
        return parse_document(body, f"runs/{run_id}/{MANIFEST} in {self.uri}")

    def has_run(self, run_id: str) -> bool:
        """Whether a complete run ``run_id`` is published (one ``stat``; nothing verified)."""
        return (self.root / "runs" / RunId.parse(run_id) / MANIFEST).is_file()

    def run_folder(self, run_id: str) -> Path:
        """The folder of a complete run, verified against its manifest (see ``integrity.verify_run``)."""
        run_id = RunId.parse(run_id)
        folder = self.root / "runs" / run_id
        if not (folder / MANIFEST).is_file():
            raise StoreError(f"run {run_id}: not found in {self.uri} or incomplete (no {MANIFEST})")
        verify_run(folder, f"run {run_id} in {self.uri}")
        return folder

    def publish_report(self, staging: Path, name: str) -> str:
        """Move a staged report folder to ``reports/<name>``; return its URI."""
        final = self.root / "reports" / RunId.parse(name, "report name")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final.as_uri()

    # -- documents ------------------------------------------------------------------------------
    def _document(self, key: str) -> Path:
        return confined(self.root, check_document_key(key), f"store {self.uri}: document key")

    @contextlib.contextmanager
    def _locked(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(path.with_name(f".{path.name}.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_document_versioned(self, key: str) -> tuple[dict | None, str | None]:
        """The document at ``key`` and its version (sha256 of the file); ``(None, None)`` if absent."""
        path = self._document(key)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise StoreError(f"store {self.uri}: reading document {key} failed ({exc.strerror})") from None
        return parse_document(body, f"{key} in {self.uri}"), hashlib.sha256(body).hexdigest()

    def read_document(self, key: str) -> dict | None:
        return self.read_document_versioned(key)[0]

    def write_document(self, key: str, payload: dict, *, if_match: str | None = None, create_only: bool = False) -> str:
        """Write ``payload`` at ``key`` atomically (optionally conditionally); return its new version."""
        path = self._document(key)
        body = dump_document(payload)
        version = hashlib.sha256(body).hexdigest()
        with self._locked(path):
            current = path.read_bytes() if path.is_file() else None
            if current != body:
                if create_only and current is not None:
                    raise DocumentConflict(f"store {self.uri}: document {key} exists already (create_only)")
                if if_match is not None and (current is None or hashlib.sha256(current).hexdigest() != if_match):
                    raise DocumentConflict(
                        f"store {self.uri}: document {key} changed since it was read (expected version {if_match})"
                    )
                atomic_write_text(path, body.decode("utf-8"))
        return version

    def list_documents(self, folder: str) -> list[str]:
        """Keys of the documents under ``folder`` (recursively), sorted."""
        base = self._document(folder.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts)
        )

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoints(self, run_id: str) -> Path:
        return self.root / "checkpoints" / RunId.parse(run_id)

    def put_checkpoint(self, run_id: str, step: int, folder: Path, meta: dict) -> str:
        """Copy ``folder`` in as the run's checkpoint at ``step`` (marker last, then a rename); drop older ones."""
        base = self._checkpoints(run_id)
        final = base / checkpoint_folder_name(step)
        if not (final / CHECKPOINT_MARKER).is_file():  # a complete checkpoint of this step is kept as it is
            tmp = base / f".{final.name}-{uuid.uuid4().hex[:8]}.tmp"
            try:
                base.mkdir(parents=True, exist_ok=True)
                shutil.copytree(folder, tmp)
                marker = checkpoint_marker(tmp, run_id, step, meta)
                atomic_write_text(tmp / CHECKPOINT_MARKER, json.dumps(marker, indent=2, default=float))
                if final.exists():
                    shutil.rmtree(final)  # a leftover without a marker is never a checkpoint
                os.replace(tmp, final)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StoreError(
                    f"store {self.uri}: writing checkpoint {final.name} of run {run_id} failed ({exc.strerror or exc})"
                ) from None
        for other in base.iterdir():
            if other != final and (checkpoint_step(other.name) is not None or other.name.endswith(".tmp")):
                shutil.rmtree(other, ignore_errors=True)
        return final.as_uri()

    def latest_checkpoint(self, run_id: str) -> dict | None:
        """The marker of the run's newest complete checkpoint, or ``None``."""
        base = self._checkpoints(run_id)
        steps = (
            sorted(
                (checkpoint_step(p.name), p)
                for p in base.iterdir()
                if checkpoint_step(p.name) is not None and (p / CHECKPOINT_MARKER).is_file()
            )
            if base.is_dir()
            else []
        )
        if not steps:
            return None
        marker_path = steps[-1][1] / CHECKPOINT_MARKER
        return parse_document(marker_path.read_bytes(), f"{marker_path}")

    def fetch_checkpoint(self, run_id: str, step: int, target: Path) -> Path:
        """Copy the complete checkpoint at ``step`` to ``target`` (a new folder), verified against its marker."""
        source = self._checkpoints(run_id) / checkpoint_folder_name(step)
        if not (source / CHECKPOINT_MARKER).is_file():
            raise StoreError(f"run {run_id}: no complete checkpoint at step {step} in {self.uri}")
        marker = parse_document((source / CHECKPOINT_MARKER).read_bytes(), f"{source / CHECKPOINT_MARKER}")
        target = Path(target)
        tmp = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            where = f"run {run_id}: checkpoint {source.name}"
            for rel, facts in checkpoint_files(marker, where).items():
                copy = confined(tmp, rel, where)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(confined(source, rel, where), copy)
                if sha256_file(copy) != facts["sha256"]:
                    raise StoreError(f"run {run_id}: checkpoint file {rel} does not match its sha256 (corrupt)")
            shutil.copy2(source / CHECKPOINT_MARKER, tmp / CHECKPOINT_MARKER)
            os.replace(tmp, target)
        except OSError as exc:
            raise StoreError(
                f"store {self.uri}: reading checkpoint {source.name} of run {run_id} failed ({exc.strerror or exc})"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def delete_checkpoints(self, run_id: str) -> None:
        shutil.rmtree(self._checkpoints(run_id), ignore_errors=True)
