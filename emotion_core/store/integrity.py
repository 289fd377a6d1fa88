"""Integrity of run folders (``verify_run``: sha256 of every listed file) and sweeping of stale staging folders.

- ``verify_run`` runs on every read of a run and before every publish: a valid manifest, every listed file a
  confined relative path whose size and sha256 match, and no file the manifest does not list.
- A verified folder is remembered for the process (keyed on size, mtime and inode of every file), so a
  second read costs one ``stat`` per file; any change re-verifies.
- ``sweep_staging``: removes staging folders without a manifest, older than ``$EMOTION_STAGING_MAX_AGE_HOURS``,
  whose owner process is gone.

Limits: hashing reads every byte (about 1-2 s per GB of weights).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path

from emotion_core.errors import StoreError
from emotion_core.files import sha256_file
from emotion_core.processes import pid_alive
from emotion_core.store.base import MANIFEST, RunId, confined, sha256_entries

log = logging.getLogger(__name__)

# folder -> the stat fingerprint it had when it last passed verification
_VERIFIED: dict[str, tuple] = {}
STAGING_MAX_AGE_ENV = "EMOTION_STAGING_MAX_AGE_HOURS"
_OWNER = re.compile(r"-p(\d+)-[0-9a-f]{8}$")


def _fingerprint(folder: Path) -> tuple:
    entries = []
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        entries.append((path.relative_to(folder).as_posix(), info.st_size, info.st_mtime_ns, info.st_ino, info.st_mode))
    return tuple(entries)


def read_manifest(folder: Path, where: str) -> dict:
    """The manifest of ``folder`` as a dict; ``StoreError`` naming ``where`` and the file if it is not one."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(
            f"{where}: cannot read {MANIFEST} ({path}: not a JSON object: {exc}); "
            f"the run folder is incomplete or damaged"
        ) from None
    if not isinstance(manifest, dict):
        raise StoreError(
            f"{where}: cannot read {MANIFEST} ({path}: not a JSON object but a "
            f"{type(manifest).__name__}); the run folder is incomplete or damaged"
        )
    return manifest


def listed_files(manifest: dict, folder: Path, where: str) -> dict[str, Path]:
    """``{entry: local path}`` of the manifest's ``files``, each confined to ``folder``."""
    return {rel: confined(folder, rel, where) for rel in sha256_entries(manifest, MANIFEST, where, default={})}


def verify_run(folder: Path, where: str) -> dict:
    """The manifest of a complete run folder after checking every file against it (see the module docstring)."""
    folder = Path(folder)
    manifest = read_manifest(folder, where)
    RunId.parse(manifest.get("run_id"), f"{where}: {MANIFEST} run_id")
    key = str(folder.resolve())
    fingerprint = _fingerprint(folder)
    if _VERIFIED.get(key) == fingerprint:
        return manifest
    files = manifest.get("files", {})
    for rel, path in listed_files(manifest, folder, where).items():
        if not path.is_file():
            raise StoreError(
                f"{where}: {rel} is listed in {MANIFEST} but missing; the run folder is incomplete or damaged"
            )
        size = files[rel].get("bytes")
        if (isinstance(size, int) and path.stat().st_size != size) or sha256_file(path) != files[rel]["sha256"]:
            raise StoreError(
                f"{where}: {rel} does not match the sha256 in its {MANIFEST} "
                f"(corrupt, truncated or tampered with); refusing to use the run"
            )
    unlisted = sorted(
        rel for rel, _, _, _, mode in fingerprint if rel != MANIFEST and rel not in files and not stat.S_ISDIR(mode)
    )
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (f" (+{len(unlisted) - 5} more)" if len(unlisted) > 5 else "")
        raise StoreError(
            f"{where}: files not listed in {MANIFEST}: {shown}; they were never verified, "
            f"so the run is refused (remove them or publish the run again)"
        )
    _VERIFIED[key] = fingerprint
    return manifest


def moved(old: Path, new: Path) -> None:
    """Carry a verified folder's record over a rename (inodes, sizes and mtimes do not change)."""
    fingerprint = _VERIFIED.pop(str(Path(old).resolve()), None)
    if fingerprint is not None:
        _VERIFIED[str(Path(new).resolve())] = fingerprint


def same_run(manifest: dict, other: dict) -> bool:
    """Whether two manifests describe the same run (same content: every field, every file's sha256)."""
    return manifest == other


def staging_name(name: str) -> str:
    """A unique staging folder name that records the owning process (so a sweep can spare live ones)."""
    import uuid

    return f"{name}-p{os.getpid()}-{uuid.uuid4().hex[:8]}"


def staging_max_age_s() -> float:
    """``$EMOTION_STAGING_MAX_AGE_HOURS`` (default 24) in seconds; an invalid value keeps the default."""
    try:
        hours = float(os.environ.get(STAGING_MAX_AGE_ENV) or 24)
    except ValueError:
        hours = 24.0
    return max(hours, 0.0) * 3600 if hours == hours else 24 * 3600.0


def sweep_staging(area: Path) -> list[Path]:
    """Remove stale folders under a staging area; return them.

    Stale: not changed for ``staging_max_age_s()``, and its owning process (recorded in the name) is not
    alive on this machine. A folder holding a ``manifest.json`` is a complete run kept after a failed
    publish (the error named it; ``emotion publish`` takes it): it is never swept. Costs one listing of
    the area (its direct children) per store opened.
    """
    if not area.is_dir():
        return []
    cutoff = time.time() - staging_max_age_s()
    swept = []
    try:
        children = list(area.iterdir())
    except OSError:
        return []
    for child in children:
        try:
            recent = child.stat().st_mtime > cutoff
            if not child.is_dir() or child.is_symlink() or recent or (child / MANIFEST).exists():
                continue
        except OSError:
            continue
        owner = _OWNER.search(child.name)
        if owner and pid_alive(int(owner.group(1))):
            continue
        shutil.rmtree(child, ignore_errors=True)
        swept.append(child)
    if swept:
        log.info("swept %d stale staging folder(s) under %s", len(swept), area)
    return swept
