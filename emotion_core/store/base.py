"""What every artefact store promises (``ArtifactStore``), and the helpers the stores share.

- Runs: staged (``staging``), then ``publish``ed with ``manifest.json`` last; a run without a manifest is
  never listed or opened. Publish verifies every file, never deletes the caller's folder, is idempotent
  for an equal manifest and raises ``RunIdConflict`` for another run under the same id.
- Reads: ``run_folder`` gives a local folder checked against the manifest's sha256 (``integrity.verify_run``).
- Names: run ids and report names are ``RunId``s; every relative path read from a store goes through ``confined``.
- Reports (``publish_report``): the same rule, their ``index`` written last.
- Documents (small JSON, e.g. ``registry/<dataset-key>.json``): atomic writes, optionally conditional
  (``if_match``/``create_only``, else ``DocumentConflict``); keys under ``runs/`` or ``reports/`` are refused.
- Checkpoints: ``checkpoints/<run_id>/checkpoint-<step>/``, the ``checkpoint.json`` marker (sizes, sha256)
  last; readers see the previous complete checkpoint or the new one.

The full contract and why: docs/design.md, "Artefact store".
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Protocol

from emotion_core.errors import StoreError
from emotion_core.files import sha256_file

MANIFEST = "manifest.json"
CHECKPOINT_MARKER = "checkpoint.json"
# Top-level folders of runs, reports and checkpoints: never written through the document methods.
_RESERVED = ("runs", "reports", "checkpoints")


class DocumentConflict(StoreError):
    """A conditional ``write_document`` failed: the document changed (or appeared) since it was read."""


class RunIdConflict(StoreError):
    """A publish found a different run (another manifest) under the same run id; nothing was published."""


class ArtifactStore(Protocol):
    """Implemented by ``LocalStore`` and ``S3Store``."""

    @property
    def uri(self) -> str: ...

    def staging(self, name: str) -> Path: ...

    def publish(self, staging: Path, run_id: str) -> str: ...

    def discard(self, staging: Path) -> None: ...

    def list_runs(self) -> list[str]: ...

    def read_manifest(self, run_id: str) -> dict: ...

    def has_run(self, run_id: str) -> bool: ...

    def run_folder(self, run_id: str) -> Path: ...

    def publish_report(self, staging: Path, name: str) -> str: ...

    def read_document(self, key: str) -> dict | None: ...

    def read_document_versioned(self, key: str) -> tuple[dict | None, str | None]: ...

    def write_document(
        self, key: str, payload: dict, *, if_match: str | None = None, create_only: bool = False
    ) -> str: ...

    def list_documents(self, folder: str) -> list[str]: ...

    def put_checkpoint(self, run_id: str, step: int, folder: Path, meta: dict) -> str: ...

    def latest_checkpoint(self, run_id: str) -> dict | None: ...

    def fetch_checkpoint(self, run_id: str, step: int, target: Path) -> Path: ...

    def delete_checkpoints(self, run_id: str) -> None: ...


def check_document_key(key: str) -> str:
    """``key`` if it is a relative POSIX path outside ``runs/`` and ``reports/``; ``StoreError`` otherwise."""
    path = PurePosixPath(key) if isinstance(key, str) else None
    parts = path.parts if path is not None else ()
    if (
        not parts
        or path.is_absolute()
        or "\\" in key
        or key != path.as_posix()
        or any(part in ("..", ".") or part.startswith(".") for part in parts)
        or parts[0] in _RESERVED
    ):
        raise StoreError(
            f"document key {key!r}: expected a relative path like 'registry/<name>.json', "
            f"without '..', hidden parts or a leading {'/'.join(_RESERVED)} folder"
        )
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
        raise StoreError(
            f"document {where} is corrupt: expected a JSON object, got {type(payload).__name__}; fix or remove it"
        )
    return payload


def files_manifest_last(folder: Path, last: str = MANIFEST) -> list[Path]:
    """Every file under ``folder``, sorted, with ``last`` (if present) at the end."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != last)
    if (folder / last).is_file():
        files.append(folder / last)
    return files


_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
RUN_ID_MAX = 128


class RunId(str):
    """A run id (or report name): one plain path segment, safe as a folder name and an S3 key part.

    Letters, digits, ``-``, ``_`` and ``.``; no leading dot or dash, no ``..``, at most ``RUN_ID_MAX``
    characters. Every store read and write goes through ``RunId.parse``: ids come from users, configs
    and manifests a team shares, so they are untrusted.
    """

    @classmethod
    def parse(cls, text: object, where: str = "run id") -> RunId:
        """``text`` as a ``RunId``; ``StoreError`` naming ``where`` (the flag, file or field) otherwise."""
        if isinstance(text, RunId):
            return text
        if not isinstance(text, str) or len(text) > RUN_ID_MAX or not _RUN_ID.fullmatch(text) or ".." in text:
            shown = repr(text) if not isinstance(text, str) or len(text) <= 80 else repr(text[:80] + "...")
            raise StoreError(
                f"{where} {shown}: expected one plain name of 1-{RUN_ID_MAX} letters, digits, '-', '_' "
                f"or '.' (starting with a letter, digit or '_'; no '/', '\\', '..', spaces or control "
                f"characters)"
            )
        return cls(text)


def is_run_id(text: object) -> bool:
    """Whether ``text`` is a valid run id (for listings: names that are not are skipped, never opened)."""
    try:
        RunId.parse(text)
    except StoreError:
        return False
    return True


def check_manifest_run_id(manifest: dict, run_id: str, where: str) -> None:
    """The manifest must name the run id it is published under (a manifest's id is untrusted input)."""
    named = RunId.parse(manifest.get("run_id"), f"{where}: {MANIFEST} run_id")
    if named != run_id:
        raise StoreError(
            f"{where}: {MANIFEST} names run {named!r}, not {run_id!r}; refusing to publish it under another id"
        )


def sha256_entries(document: dict, name: str, where: str, default=None) -> dict[str, dict]:
    """The ``files`` of a manifest or checkpoint marker ``name`` (entry -> facts with a sha256); ``StoreError`` if
    malformed. ``default``: what a document without ``files`` lists (None: such a document is malformed)."""
    files = document.get("files", default) if isinstance(document, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(f, dict) and isinstance(f.get("sha256"), str) for f in files.values()
    ):
        raise StoreError(f"{where}: {name} 'files' must map each file to its sha256; it is damaged")
    return files


def checkpoint_files(marker: dict, where: str) -> dict[str, dict]:
    """The ``files`` of a checkpoint marker (entry -> facts with a sha256); ``StoreError`` if malformed."""
    return sha256_entries(marker, CHECKPOINT_MARKER, where)


def confined(root: Path, relative: object, where: str) -> Path:
    """``root / relative`` if ``relative`` is a plain relative POSIX path that stays under ``root``.

    Refuses absolute paths, ``..``, ``.``, empty parts, backslashes, control characters, and a path whose
    resolved location (symlinks followed) leaves ``root``: a name read from a store (manifest ``files``,
    checkpoint markers, document keys) must never become a path outside the folder it belongs to.
    """
    parts = relative.split("/") if isinstance(relative, str) else []
    if (
        not parts
        or relative.startswith("/")
        or "\\" in relative
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(c) < 32 or ord(c) == 127 for c in relative)
    ):
        raise StoreError(
            f"{where}: entry {relative!r} is not a plain relative path inside the folder "
            f"(absolute, '..', empty part or backslash); the store is damaged or tampered with"
        )
    path = root.joinpath(*parts)
    base = root.resolve()
    if not path.resolve().is_relative_to(base):
        raise StoreError(
            f"{where}: entry {relative!r} leads outside {root} (through a symlink); "
            f"the store is damaged or tampered with"
        )
    return path


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
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() != CHECKPOINT_MARKER
    }
    return {"run_id": run_id, "step": step, "meta": meta, "files": files}
