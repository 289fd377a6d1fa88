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
- Documents (``read_document``/``write_document``/``list_documents``): small JSON objects under a
  key such as ``registry/goemotions-1a2b3c4d5e6f.json`` (the champion registry). Keys are relative
  POSIX paths; ``runs/`` and ``reports/`` are refused, so a document can never touch a run or a
  report. A write is atomic (readers see the old or the new document, never half of one) and can
  be conditional: ``if_match=<version>`` (compare-and-swap on the version ``read_document_versioned``
  returned) or ``create_only=True`` (only if the key does not exist yet). A failed condition raises
  ``DocumentConflict``, except when the stored document already equals the one written (a retried
  write is not a conflict). Versions are opaque strings (S3: the ETag; local: the sha256 of the file).
- Checkpoints (``put_checkpoint``/``latest_checkpoint``/``fetch_checkpoint``/``delete_checkpoints``):
  training checkpoints of a run that is not published yet, under
  ``checkpoints/<run_id>/checkpoint-<step>/``. ``put_checkpoint`` writes a folder's files, then the
  marker ``checkpoint.json`` (run id, step, the caller's ``meta``, each file's size and sha256) last;
  only after the marker is written are the run's other checkpoints deleted, so a reader always finds
  the previous complete checkpoint or the new one, never half of one. ``latest_checkpoint`` returns
  the marker of the newest complete checkpoint (one without a marker is invisible);
  ``fetch_checkpoint`` copies exactly the files its marker lists, checks each sha256 and only then
  exposes the target folder. Putting a step that is complete already changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path, PurePosixPath
from typing import Protocol

from emotion_core.errors import StoreError

MANIFEST = "manifest.json"
CHECKPOINT_MARKER = "checkpoint.json"
# Top-level folders of runs, reports and checkpoints: never written through the document methods.
_RESERVED = ("runs", "reports", "checkpoints")


class DocumentConflict(StoreError):
    """A conditional ``write_document`` failed: the document changed (or appeared) since it was read."""


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

    def read_document(self, key: str) -> dict | None: ...

    def read_document_versioned(self, key: str) -> tuple[dict | None, str | None]: ...

    def write_document(self, key: str, payload: dict, *, if_match: str | None = None,
                       create_only: bool = False) -> str: ...

    def list_documents(self, folder: str) -> list[str]: ...

    def put_checkpoint(self, run_id: str, step: int, folder: Path, meta: dict) -> str: ...

    def latest_checkpoint(self, run_id: str) -> dict | None: ...

    def fetch_checkpoint(self, run_id: str, step: int, target: Path) -> Path: ...

    def delete_checkpoints(self, run_id: str) -> None: ...


def check_document_key(key: str) -> str:
    """``key`` if it is a relative POSIX path outside ``runs/`` and ``reports/``; ``StoreError`` otherwise."""
    path = PurePosixPath(key) if isinstance(key, str) else None
    parts = path.parts if path is not None else ()
    if (not parts or path.is_absolute() or "\\" in key or key != path.as_posix()
            or any(part in ("..", ".") or part.startswith(".") for part in parts) or parts[0] in _RESERVED):
        raise StoreError(f"document key {key!r}: expected a relative path like 'registry/<name>.json', "
                         f"without '..', hidden parts or a leading {'/'.join(_RESERVED)} folder")
    return key


def dump_document(payload: dict) -> bytes:
    """The stored bytes of a document: indented JSON, strict (NaN/inf refused), newline-terminated."""
    if not isinstance(payload, dict):
        raise TypeError(f"a document is a JSON object (dict), got {type(payload).__name__}")
    return (json.dumps(payload, indent=2, allow_nan=False, default=float) + "\n").encode("utf-8")


def parse_document(body: bytes, where: str) -> dict:
    """The JSON object in ``body``; ``StoreError`` naming ``where`` (store and key) if it is not one."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"document {where} is corrupt: not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(payload, dict):
        raise StoreError(f"document {where} is corrupt: expected a JSON object, got {type(payload).__name__}; "
                         f"fix or remove it")
    return payload


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written temporary file beside the target
        raise


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


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is one plain path segment (no ``/``, ``\\``, ``..`` or leading dot); ``StoreError`` otherwise."""
    if (not isinstance(run_id, str) or not run_id or "/" in run_id or "\\" in run_id or run_id.startswith(".")
            or run_id != run_id.strip()):
        raise StoreError(f"run id {run_id!r}: expected one plain name (letters, digits, '-', '_', '.'; no '/')")
    return run_id


def checkpoint_folder_name(step: int) -> str:
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return f"checkpoint-{step}"


def checkpoint_step(name: str) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name; ``None`` for any other name."""
    prefix, sep, number = name.partition("-")
    return int(number) if prefix == "checkpoint" and sep and number.isdigit() else None


def checkpoint_marker(folder: Path, run_id: str, step: int, meta: dict) -> dict:
    """The marker of a checkpoint folder: what it is and every file in it (size, sha256)."""
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != CHECKPOINT_MARKER}
    return {"run_id": run_id, "step": step, "meta": meta, "files": files}
