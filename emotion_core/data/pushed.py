"""Datasets in the artefact store, content-addressed: ``emotion data push`` uploads, ``data.store_ref`` reads.

- Layout: ``<store>/datasets/sha256/<id>/files/<name>`` plus ``.../<id>/manifest.json``; the manifest lists each
  file's name, sha256 and size, and ``<id>`` is the sha256 of the manifest's canonical bytes, so one id names
  the whole dataset. The manifest is uploaded last: a dataset is in the store once its manifest is.
- ``push_dataset``: a file or a folder's top-level files; a dataset already in the store uploads nothing.
- ``fetch_dataset``: into ``cache_root()/datasets/sha256/<id>/``: the manifest must hash to ``<id>``, names must
  be plain file names, each download is bounded by the listed size and checked against the listed sha256, the
  whole folder appears by one rename; a cached copy is verified again before every use.
- References (``data.store_ref``): ``sha256:<id>`` (in the run's store) or ``<store>/datasets/sha256/<id>``.

Limits: a push does not re-check objects of a dataset already in the store (a reader's check catches them);
a folder's subfolders are refused, its hidden files skipped; the cache is never pruned.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emotion_core.errors import DataError, EmotionError, StoreError

FORMAT = "emotion-dataset/1"
PREFIX = "datasets/sha256"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
_HEX = r"[0-9a-f]{64}"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_REF = re.compile(rf"(?:(?P<store>.+)/{PREFIX}/|sha256:)(?P<id>{_HEX})")


class FileEntry(BaseModel):
    """One file of a pushed dataset."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    name: str = Field(pattern=rf"^{_NAME.pattern}$")
    """Plain file name (no folders, no leading dot): a name read from the store never leaves the dataset folder."""
    sha256: str = Field(pattern=rf"^{_HEX}$")
    """Hex sha256 of the file's bytes."""
    size: int = Field(ge=0)
    """Bytes; a download stops at this many."""


class DatasetManifest(BaseModel):
    """The listing whose canonical bytes' sha256 is the dataset id."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    format: str = Field(pattern=rf"^{re.escape(FORMAT)}$")
    """Layout version."""
    files: tuple[FileEntry, ...] = Field(min_length=1)
    """The dataset's files, sorted by name, names unique."""

    def canonical(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class StoreRef:
    """A parsed ``data.store_ref``."""

    dataset_id: str
    """Hex sha256 of the dataset's manifest."""
    store: str | None
    """Store URI or path; None: the run's store."""


@dataclass(frozen=True)
class Pushed:
    """What ``push_dataset`` did."""

    dataset_id: str
    uri: str
    """``<store>/datasets/sha256/<id>``: the full reference."""
    files: int
    size: int
    uploaded: tuple[str, ...]
    """Names of the files uploaded now (empty: the dataset was in the store already)."""


def parse_ref(ref: str) -> StoreRef:
    """``sha256:<id>`` or ``<store>/datasets/sha256/<id>``; ``ValueError`` otherwise (credentials refused)."""
    match = _REF.fullmatch(ref.strip().rstrip("/"))
    if match is None:
        raise ValueError(
            f"data.store_ref {ref!r}: expected 'sha256:<64 hex digits>' (a dataset in the run's store) or "
            f"'<store>/{PREFIX}/<64 hex digits>', as printed by `emotion data push`"
        )
    store = match.group("store")
    if store is not None:
        from emotion_core.errors import StoreError
        from emotion_core.store.uris import check_uri

        try:
            check_uri(store, "data.store_ref store")
        except StoreError as exc:
            raise ValueError(str(exc)) from None
    return StoreRef(match.group("id"), store)


def dataset_uri(store_uri: str, dataset_id: str) -> str:
    return f"{store_uri.rstrip('/')}/{PREFIX}/{dataset_id}"


# -- push ---------------------------------------------------------------------------------------


def dataset_files(source: Path) -> list[Path]:
    """The files a push uploads: ``source`` itself, or a folder's top-level regular, non-hidden files."""
    if source.is_file():
        files = [source]
    elif source.is_dir():
        children = sorted(p for p in source.iterdir() if not p.name.startswith("."))
        folders = [p.name for p in children if not p.is_file()]
        if folders:
            raise DataError(f"a pushed folder holds files only; found {', '.join(folders)}", file=str(source))
        files = children
    else:
        raise DataError("no such file or folder", file=str(source))
    if not files:
        raise DataError("no files to push", file=str(source))
    for path in files:
        if not _NAME.fullmatch(path.name):
            raise DataError("file names are letters, digits, '.', '_' and '-' only", file=str(path))
    return files


def _sha256_size(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def build_manifest(files: list[Path]) -> DatasetManifest:
    entries = []
    for path in files:
        sha, size = _sha256_size(path)
        entries.append(FileEntry(name=path.name, sha256=sha, size=size))
    return DatasetManifest(format=FORMAT, files=tuple(sorted(entries, key=lambda e: e.name)))


def push_dataset(source: Path, store) -> Pushed:
    """Upload the file or folder ``source`` to ``store`` once (files first, manifest last)."""
    from emotion_core.store import objects

    files = dataset_files(source)
    manifest = build_manifest(files)
    body = manifest.canonical()
    dataset_id = hashlib.sha256(body).hexdigest()
    base = f"{PREFIX}/{dataset_id}"
    size = sum(e.size for e in manifest.files)
    uri = dataset_uri(store.uri, dataset_id)
    if objects.exists(store, f"{base}/{MANIFEST}"):
        return Pushed(dataset_id, uri, len(files), size, ())
    for path in files:
        objects.put_file(store, f"{base}/files/{path.name}", path)
    with tempfile.TemporaryDirectory() as tmp:  # put_file publishes a file: the manifest's bytes go through one
        body_file = Path(tmp) / MANIFEST
        body_file.write_bytes(body)
        objects.put_file(store, f"{base}/{MANIFEST}", body_file)
    return Pushed(dataset_id, uri, len(files), size, tuple(p.name for p in files))


# -- fetch --------------------------------------------------------------------------------------


def _copy_bounded(stream, target: Path, limit: int, what: str) -> tuple[str, int]:
    """Copy ``stream`` to ``target``, hashing; stop with ``DataError`` past ``limit`` bytes."""
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as handle:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            size += len(chunk)
            if size > limit:
                raise DataError(f"larger than the {limit} bytes its dataset manifest lists; refused", file=what)
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest(), size


def _read_manifest(store, dataset_id: str) -> tuple[DatasetManifest, bytes]:
    from emotion_core.store import objects

    key = f"{PREFIX}/{dataset_id}/{MANIFEST}"
    what = objects.object_name(store, key)
    try:
        with objects.open_object(store, key) as stream:
            body = stream.read(MAX_MANIFEST_BYTES + 1)
    except DataError:
        raise DataError(
            f"no dataset sha256:{dataset_id} in the store {store.uri} (push it with `emotion data push`)",
            file=what,
        ) from None
    if len(body) > MAX_MANIFEST_BYTES or hashlib.sha256(body).hexdigest() != dataset_id:
        raise DataError(f"the dataset manifest does not hash to its id {dataset_id}: damaged or tampered", file=what)
    try:
        manifest = DatasetManifest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(f"invalid dataset manifest ({where}: {first['msg']}); refused", file=what) from None
    names = [e.name for e in manifest.files]
    if len(set(names)) != len(names):
        raise DataError("invalid dataset manifest (a file name is listed twice); refused", file=what)
    return manifest, body


def _verified(folder: Path, dataset_id: str) -> DatasetManifest | None:
    """The manifest of a cached dataset folder that hashes to ``dataset_id`` and whose files match it; else None."""
    try:
        body = (folder / MANIFEST).read_bytes()
        if hashlib.sha256(body).hexdigest() != dataset_id:
            return None
        manifest = DatasetManifest.model_validate_json(body)
        files_match = all(_sha256_size(folder / "files" / e.name) == (e.sha256, e.size) for e in manifest.files)
        return manifest if files_match else None
    except (OSError, ValidationError):
        return None


def _cause(store, exc: Exception) -> str:
    """``Type: first line`` of ``exc``, the endpoint redacted (botocore quotes it, credentials included)."""
    from emotion_core.store.uris import redact_uri

    cause = str(exc).splitlines()[0][:300] if str(exc) else ""
    endpoint = getattr(store, "endpoint_url", None)
    return f"{type(exc).__name__}: {cause.replace(endpoint, redact_uri(endpoint)) if endpoint else cause}"


def _download(store, dataset_id: str, staging: Path) -> None:
    from emotion_core.store import objects

    manifest, body = _read_manifest(store, dataset_id)
    (staging / "files").mkdir(parents=True)
    for entry in manifest.files:
        key = f"{PREFIX}/{dataset_id}/files/{entry.name}"
        what = objects.object_name(store, key)
        with objects.open_object(store, key) as stream:
            try:
                sha, size = _copy_bounded(stream, staging / "files" / entry.name, entry.size, what)
            except EmotionError:
                raise
            except Exception as exc:  # a connection lost mid-object, a full disk: named, not a traceback
                raise StoreError(f"{what}: download failed ({_cause(store, exc)}); nothing was cached") from None
        if (sha, size) != (entry.sha256, entry.size):
            raise DataError(
                f"sha256 {sha} ({size} bytes) does not match the dataset manifest's {entry.sha256} "
                f"({entry.size} bytes): damaged or tampered; nothing was cached",
                file=what,
            )
    (staging / MANIFEST).write_bytes(body)  # last: a folder with a manifest is complete


def fetch_dataset(ref: StoreRef, run_store=None) -> tuple[Path, str]:
    """A verified local copy of the pushed dataset: ``(path, full reference)``.

    ``path``: the file of a one-file dataset, else the folder of its files. ``run_store``: the store of a bare
    ``sha256:<id>`` reference (default ``$EMOTION_STORE``).
    """
    from emotion_core.settings import cache_root, default_store_uri
    from emotion_core.store import open_store

    store = open_store(ref.store) if ref.store else run_store or open_store(default_store_uri())
    root = cache_root() / PREFIX
    folder = root / ref.dataset_id
    manifest = _verified(folder, ref.dataset_id)
    if manifest is None:
        staging = root / ".staging" / f"{ref.dataset_id}.{uuid.uuid4().hex}"
        try:
            _download(store, ref.dataset_id, staging)
            if folder.exists():  # a damaged copy (or another process's): set aside, then replaced in one rename
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(staging, folder)
            except OSError:
                if _verified(folder, ref.dataset_id) is None:  # a concurrent reader's complete copy is as good
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        manifest = _verified(folder, ref.dataset_id)
        if manifest is None:
            raise DataError("the dataset changed in the cache while it was written; try again", file=str(folder))
    files = manifest.files
    path = folder / "files" / files[0].name if len(files) == 1 else folder / "files"
    return path, dataset_uri(store.uri, ref.dataset_id)
