"""Plain files (objects) in a store, beside its runs and documents: data to score and what is written next to it.

- Keys: relative POSIX paths outside ``runs/``, ``reports/`` and ``checkpoints/`` (the document rules), e.g.
  ``data/reviews.parquet``; checked before any use, since they come from users and deployment parameters.
- ``local_file``: a local path to read; a ``LocalStore`` file itself, an S3 object downloaded once into the
  cache (re-downloaded when its ETag changes).
- ``put_file``: publish a local file under a key in one step (local: temporary file + rename; S3: one upload,
  visible only once complete), so readers see the old object or the new one, never half of one.
- ``open_object``: a binary stream of an object, read as it arrives (a reader can stop after the bytes it expects).
- ``download_file``, ``delete_folder``: copies and clean-up of a job's own scratch objects.

Limits: ``LocalStore`` and ``S3Store`` only; objects are not listed in any manifest (no integrity record).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from emotion_core.errors import DataError, StoreError
from emotion_core.settings import cache_root
from emotion_core.store.base import ArtifactStore, check_document_key, confined
from emotion_core.store.local import LocalStore


def check_object_key(key: object, what: str) -> str:
    """``key`` if it is a plain relative key outside the store's reserved folders; ``StoreError`` naming ``what``."""
    try:
        return check_document_key(key) if isinstance(key, str) else check_document_key("")
    except StoreError:
        raise StoreError(
            f"{what} {key!r}: expected a relative key inside the store like 'data/<name>.parquet', "
            f"without '..', hidden parts or a leading runs/, reports/ or checkpoints/ folder"
        ) from None


def object_name(store: ArtifactStore, key: str) -> str:
    """How messages name an object: the store URI and the key."""
    return f"{store.uri.rstrip('/')}/{key}"


def _local_path(store: LocalStore, key: str) -> Path:
    return confined(store.root, key, f"store {store.uri}: key")


def _is_local(store: ArtifactStore) -> bool:
    if isinstance(store, LocalStore):
        return True
    from emotion_core.store.s3 import S3Store

    if isinstance(store, S3Store):
        return False
    raise StoreError(f"store {store.uri}: files in this kind of store are not supported")


def local_file(store: ArtifactStore, key: str) -> Path:
    """A local path holding the object ``key``; ``DataError`` naming it if there is none."""
    if _is_local(store):
        path = _local_path(store, key)
        if not path.is_file():
            raise DataError("not found in the store (or not a regular file)", file=object_name(store, key))
        return path
    etag = _head(store, key)
    target = confined(cache_root() / "objects" / store.bucket / (store.prefix or "_"), key, f"store {store.uri}: key")
    stamp = target.with_name(f".{target.name}.etag.json")
    if target.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("etag") == etag:
        return target
    download_file(store, key, target)
    stamp.write_text(json.dumps({"etag": etag}))
    return target


def _head(store, key: str) -> str:
    try:
        return store.client.head_object(Bucket=store.bucket, Key=store._key(key))["ETag"]
    except Exception as exc:
        raise _object_error(store, key, f"checking {key}", exc) from None


def _object_error(store, key: str, operation: str, exc: Exception) -> Exception:
    """``DataError`` naming the object when S3 says it does not exist, else the store's unreachable error."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
        return DataError("not found in the store", file=object_name(store, key))
    return store._fail(operation, exc)


def open_object(store: ArtifactStore, key: str):
    """A context manager giving a binary stream of the object ``key``; ``DataError`` naming it if there is none."""
    if _is_local(store):
        return local_file(store, key).open("rb")
    try:
        body = store.client.get_object(Bucket=store.bucket, Key=store._key(key))["Body"]
    except Exception as exc:
        raise _object_error(store, key, f"reading {key}", exc) from None
    return contextlib.closing(body)


def exists(store: ArtifactStore, key: str) -> bool:
    if _is_local(store):
        return _local_path(store, key).is_file()
    return store._exists(store._key(key))


def download_file(store: ArtifactStore, key: str, target: Path) -> Path:
    """Copy the object ``key`` to ``target`` (temporary file + rename: never half a file at ``target``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        if _is_local(store):
            shutil.copyfile(local_file(store, key), tmp)
        else:
            try:
                store.client.download_file(store.bucket, store._key(key), str(tmp))
            except Exception as exc:
                raise store._fail(f"downloading {key}", exc) from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def put_file(store: ArtifactStore, key: str, path: Path) -> str:
    """Publish the local file ``path`` as ``key`` in one step; return the object's URI."""
    if not _is_local(store):
        try:
            store.client.upload_file(str(path), store.bucket, store._key(key))  # multipart: visible once complete
        except Exception as exc:
            raise store._fail(f"uploading {key}", exc) from None
        return object_name(store, key)
    target = _local_path(store, key)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, target)
    except OSError as exc:
        raise StoreError(
            f"store {store.uri}: writing {key} failed ({exc.strerror or exc}); nothing was written"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target.as_uri()


def delete_folder(store: ArtifactStore, folder: str) -> None:
    """Remove every object under the key ``folder`` (best effort: scratch objects only)."""
    if _is_local(store):
        shutil.rmtree(_local_path(store, folder), ignore_errors=True)
        return
    store._remove(store._list_keys(store._key(folder) + "/", f"objects under {folder}"))
