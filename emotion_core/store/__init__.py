"""Artefact stores: where runs and reports are published (the contract: ``base.ArtifactStore``).

- ``open_store(uri)``: a local path or ``file://`` URI -> ``LocalStore``; ``s3://bucket/prefix`` -> ``S3Store``.
- ``resolve_run_folder(ref)``: a local folder holding the complete, verified run a path or URI names.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from emotion_core.errors import StoreError
from emotion_core.store.base import MANIFEST, ArtifactStore, RunId, RunIdConflict, confined
from emotion_core.store.integrity import verify_run
from emotion_core.store.local import LocalStore
from emotion_core.store.uris import check_uri, redact_uri

__all__ = [
    "ArtifactStore",
    "LocalStore",
    "RunId",
    "RunIdConflict",
    "check_dispatch_store",
    "check_uri",
    "confined",
    "is_local_store",
    "open_store",
    "redact_uri",
    "resolve_run_folder",
    "verify_run",
]


def open_store(uri: str | Path, *, session=None, endpoint_url: str | None = None) -> ArtifactStore:
    """Open the store at ``uri``; ``session`` (a ``boto3.Session``) and ``endpoint_url`` apply to S3 only."""
    text = check_uri(str(uri), "store")  # credentials and file://<host> refused, before any use or message
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme == "file" else text)
    if parsed.scheme == "s3":
        from emotion_core.store.s3 import S3Store

        return S3Store(parsed.netloc, parsed.path, session=session, endpoint_url=endpoint_url)
    raise StoreError(
        f"store '{redact_uri(text)}': unsupported scheme '{parsed.scheme}' (use a local path, file:// or s3://)"
    )


def is_local_store(uri: str) -> bool:
    """A plain path or ``file://`` URI: a folder on this machine's disk."""
    return urlparse(check_uri(str(uri), "store")).scheme in ("", "file")


def check_dispatch_store(uri: str, shared_filesystem: bool) -> None:
    """Workers on other machines must reach the store: a local one is refused unless the disk is shared."""
    if is_local_store(uri) and not shared_filesystem:
        raise StoreError(
            f"store '{uri}' is a local folder, but deployment dispatch runs the children on gpu-pool "
            "workers that may be other machines and would write where this flow cannot read: use an "
            "object store (--store s3://<bucket>/<prefix>, or $EMOTION_STORE), or declare a shared "
            "filesystem (train-all parameter shared_filesystem=true or EMOTION_SHARED_FILESYSTEM=1)"
        )


def resolve_run_folder(ref: str | Path) -> Path:
    """A local folder with the complete run ``ref`` names; ``StoreError`` if it is missing or incomplete."""
    text = check_uri(str(ref), "run")
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        store_prefix, sep, run_id = parsed.path.rstrip("/").rpartition("/runs/")
        if not sep or not run_id or "/" in run_id:
            raise StoreError(f"run '{redact_uri(text)}': expected s3://<bucket>/[<prefix>/]runs/<run_id>")
        from emotion_core.store.s3 import S3Store

        return S3Store(parsed.netloc, store_prefix).run_folder(RunId.parse(run_id, f"run '{redact_uri(text)}': run id"))
    if parsed.scheme not in ("", "file"):
        raise StoreError(
            f"run '{redact_uri(text)}': unsupported scheme '{parsed.scheme}' (use a folder, file:// or s3://)"
        )
    folder = Path(parsed.path if parsed.scheme == "file" else text).expanduser()
    if not folder.is_dir():
        raise StoreError(f"run '{text}': no such folder")
    if not (folder / MANIFEST).is_file():
        raise StoreError(f"run '{text}': incomplete run (no {MANIFEST}); it was never published")
    verify_run(folder, f"run '{text}'")
    return folder
