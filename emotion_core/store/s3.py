"""S3 artefact store on boto3 (AWS, MinIO, Ceph, moto: any S3 endpoint), keeping ``base.ArtifactStore``'s contract.

- Publish: files first, ``manifest.json`` last; a failed upload removes what it uploaded. Reads download
  the files the manifest lists into ``settings.cache_root()`` and check each sha256 before use.
- Documents: one ``put_object`` each; ``if_match``/``create_only`` are S3 conditional PUTs
  (``If-Match``/``If-None-Match: *``), a refused one is ``DocumentConflict``.
- Credentials: boto3's chain or a ``boto3.Session`` passed in; never logged. Endpoint: ``endpoint_url``,
  ``$EMOTION_S3_ENDPOINT_URL``, boto3's ``$AWS_ENDPOINT_URL_S3``/``$AWS_ENDPOINT_URL``, else AWS.
- Retries: botocore's ``standard`` mode (``attempts`` tries), then a ``StoreError`` naming store, operation, cause.

Limits: a server that ignores conditional headers makes document writes last-writer-wins; no server-side
locking (two writers of one run id upload the same content); cached runs are never pruned.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from emotion_core.errors import StoreError
from emotion_core.files import sha256_file
from emotion_core.settings import cache_root
from emotion_core.store.base import (
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
    files_manifest_last,
    is_run_id,
    parse_document,
)
from emotion_core.store.integrity import listed_files, moved, same_run, staging_name, sweep_staging, verify_run
from emotion_core.store.uris import redact_uri

log = logging.getLogger(__name__)


class S3Store:
    """Runs under ``s3://<bucket>/<prefix>/runs/<run_id>/``, reports under ``.../reports/<name>/``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        session=None,
        endpoint_url: str | None = None,
        attempts: int | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        import boto3
        from botocore.config import Config

        if not bucket:
            raise StoreError("S3 store: no bucket given (expected s3://<bucket>[/<prefix>])")
        if "@" in bucket:  # userinfo parsed as part of the bucket: never a cache path, never shown
            raise StoreError(f"S3 store '{redact_uri('s3://' + bucket)}': credentials in a URI are refused")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get("EMOTION_S3_ENDPOINT_URL") or None
        # Attempts per request (botocore's standard mode: exponential backoff with jitter, max 20 s).
        attempts = attempts or int(os.environ.get("EMOTION_S3_MAX_ATTEMPTS") or 8)
        self.attempts = attempts
        session = session or boto3.session.Session()
        config = Config(
            retries={"total_max_attempts": attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=60,
        )
        self.client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        self.cache = cache_root() / "s3" / bucket / (self.prefix or "_")
        for area in (".staging", ".downloads"):  # leftovers of dead writers/readers (never a kept complete run)
            sweep_staging(self.cache / area)

    # -- naming ---------------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def run_uri(self, run_id: str) -> str:
        return f"s3://{self.bucket}/{self._key('runs', RunId.parse(run_id))}"

    def _fail(self, operation: str, exc: Exception) -> StoreError:
        where = f" at {redact_uri(self.endpoint_url)}" if self.endpoint_url else ""
        cause = str(exc).splitlines()[0] if str(exc) else ""
        if self.endpoint_url:  # botocore quotes the endpoint, credentials included
            cause = cause.replace(self.endpoint_url, redact_uri(self.endpoint_url))
        return StoreError(
            f"store {self.uri}{where}: {operation} failed after up to {self.attempts} attempts "
            f"({type(exc).__name__}: {cause})"
        )

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail(f"checking {key}", exc) from None
        except Exception as exc:
            raise self._fail(f"checking {key}", exc) from None

    def ensure_bucket(self, create: bool = False) -> None:
        """The bucket exists (``head_bucket``), or is created when ``create``; else ``StoreError`` naming it."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise self._fail(f"checking bucket {self.bucket}", exc) from None
        except Exception as exc:
            raise self._fail(f"checking bucket {self.bucket}", exc) from None
        if not create:
            raise StoreError(
                f"store {self.uri}: bucket '{self.bucket}' does not exist; create it first (or set "
                f"EMOTION_S3_CREATE_BUCKET=1 to have it created)"
            )
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._fail(f"creating bucket {self.bucket}", exc) from None
        log.info("store %s: created bucket %s", self.uri, self.bucket)

    # -- writing --------------------------------------------------------------------------------
    def staging(self, name: str) -> Path:
        folder = self.cache / ".staging" / staging_name(RunId.parse(name, "staging name"))
        folder.mkdir(parents=True)
        return folder

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def _upload_folder(self, staging: Path, base_key: str, what: str) -> None:
        uploaded: list[str] = []
        try:
            for path in files_manifest_last(staging):
                key = f"{base_key}/{path.relative_to(staging).as_posix()}"
                self.client.upload_file(str(path), self.bucket, key)
                uploaded.append(key)
        except Exception as exc:
            error = self._fail(f"uploading {what}", exc)
            self._remove(uploaded)
            raise error from None

    def _remove(self, keys: list[str]) -> None:
        # Best effort: without a manifest the leftovers are invisible anyway.
        for start in range(0, len(keys), 1000):
            try:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]}
                )
            except Exception:  # noqa: BLE001 - the store is failing already; the original error is raised
                log.warning("could not remove %d partially uploaded objects under %s", len(keys), self.uri)
                return

    def _own_staging(self, folder: Path) -> bool:
        return folder.resolve().parent == (self.cache / ".staging").resolve()

    def publish(self, staging: Path, run_id: str) -> str:
        """Upload the complete, verified run in ``staging`` (manifest last); return its URI.

        The store's own staging folder is removed after a successful upload; any other folder (the
        user's) is left untouched. The same run again uploads nothing; a different run under an
        existing id raises ``RunIdConflict``.
        """
        run_id = RunId.parse(run_id)
        staging = Path(staging)
        where = f"run {run_id} ({staging})"
        if not (staging / MANIFEST).is_file():
            raise StoreError(
                f"run {run_id}: staging folder {staging} has no {MANIFEST}; refusing to publish an incomplete run"
            )
        manifest = verify_run(staging, where)  # never upload a truncated or tampered copy
        check_manifest_run_id(manifest, run_id, where)
        base = self._key("runs", run_id)
        if self._exists(f"{base}/{MANIFEST}"):
            existing = parse_document(
                self._get_object(f"{base}/{MANIFEST}", f"reading run {run_id}"), f"{base}/{MANIFEST} in {self.uri}"
            )
            if not same_run(existing, manifest):
                raise RunIdConflict(
                    f"run id {run_id} exists in the store {self.uri} with different content; "
                    f"the run was not published (choose another run id)"
                )
        else:
            self._upload_folder(staging, base, f"run {run_id}")
            log.info("published %s", self.run_uri(run_id))
        if self._own_staging(staging):
            self.discard(staging)
        return self.run_uri(run_id)

    def _get_object(self, key: str, operation: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise self._fail(operation, exc) from None

    def publish_report(self, staging: Path, name: str) -> str:
        base = self._key("reports", RunId.parse(name, "report name"))
        self._upload_folder(staging, base, f"report {name}")
        self.discard(staging)
        return f"s3://{self.bucket}/{base}"

    # -- reading --------------------------------------------------------------------------------
    def list_runs(self) -> list[str]:
        runs_prefix = self._key("runs") + "/"
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=runs_prefix):
                for item in page.get("Contents", []):
                    rest = item["Key"][len(runs_prefix) :]
                    run_id, _, name = rest.partition("/")
                    if name == MANIFEST and is_run_id(run_id):  # a key no id could have is never opened
                        found.append(run_id)
        except Exception as exc:
            raise self._fail("listing runs", exc) from None
        return sorted(found)

    def read_manifest(self, run_id: str) -> dict:
        """The manifest of a published run, parsed but not verified (for listings; load runs with ``run_folder``)."""
        key = f"{self._key('runs', RunId.parse(run_id))}/{MANIFEST}"
        return parse_document(self._get_object(key, f"reading run {run_id}"), f"{key} in {self.uri}")

    def has_run(self, run_id: str) -> bool:
        """Whether a complete run ``run_id`` is published (one HEAD request; nothing verified)."""
        return self._exists(f"{self._key('runs', RunId.parse(run_id))}/{MANIFEST}")

    def run_folder(self, run_id: str) -> Path:
        """A verified local copy of a complete run (downloaded once, then served from the cache).

        The cached copy is verified again on every read (``verify_run``: once per process while it is
        unchanged); a copy that fails is downloaded again.
        """
        run_id = RunId.parse(run_id)
        base = self._key("runs", run_id)
        where = f"run {run_id} in {self.uri}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"{base}/{MANIFEST}")["Body"].read()
        except Exception as exc:
            from botocore.exceptions import ClientError

            if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise StoreError(f"run {run_id}: not found in {self.uri} or incomplete (no {MANIFEST})") from None
            raise self._fail(f"reading run {run_id}", exc) from None
        local = self.cache / "runs" / run_id
        if (local / MANIFEST).is_file() and (local / MANIFEST).read_bytes() == body:
            try:
                verify_run(local, f"cached copy of {where}")
                return local
            except StoreError as exc:
                log.warning("%s; downloading it again", exc)
        manifest = parse_document(body, f"{base}/{MANIFEST} in {self.uri}")
        check_manifest_run_id(manifest, run_id, where)
        tmp = self.cache / ".downloads" / staging_name(run_id)
        try:
            for rel, target in listed_files(manifest, tmp, where).items():
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.client.download_file(self.bucket, f"{base}/{rel}", str(target))
                except Exception as exc:
                    raise self._fail(f"downloading {rel} of run {run_id}", exc) from None
            (tmp / MANIFEST).write_bytes(body)
            verify_run(tmp, where)  # every file's sha256, once, before the copy is exposed
            if local.exists():
                shutil.rmtree(local)
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, local)
            moved(tmp, local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local

    # -- documents ------------------------------------------------------------------------------
    def _get_document(self, key: str) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(check_document_key(key)))
            return answer["Body"].read(), answer.get("ETag")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise self._fail(f"reading document {key}", exc) from None
        except Exception as exc:
            raise self._fail(f"reading document {key}", exc) from None

    def read_document_versioned(self, key: str) -> tuple[dict | None, str | None]:
        """The document at ``key`` and its ETag; ``(None, None)`` if absent."""
        body, etag = self._get_document(key)
        if body is None:
            return None, None
        return parse_document(body, f"{key} in {self.uri}"), etag

    def read_document(self, key: str) -> dict | None:
        return self.read_document_versioned(key)[0]

    def write_document(self, key: str, payload: dict, *, if_match: str | None = None, create_only: bool = False) -> str:
        """Put ``payload`` at ``key`` (conditional PUT with ``if_match``/``create_only``); return the new ETag."""
        from botocore.exceptions import ClientError

        body = dump_document(payload)
        conditions = {"IfNoneMatch": "*"} if create_only else {"IfMatch": if_match} if if_match is not None else {}
        try:
            answer = self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(check_document_key(key)),
                Body=body,
                ContentType="application/json",
                **conditions,
            )
            return answer["ETag"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                raise self._fail(f"writing document {key}", exc) from None
        except Exception as exc:
            raise self._fail(f"writing document {key}", exc) from None
        current, etag = self._get_document(key)
        if current == body:  # our own earlier attempt, or an identical write: not a conflict
            return etag
        state = (
            "exists already (create_only)"
            if create_only
            else f"changed since it was read (expected version {if_match})"
        )
        raise DocumentConflict(f"store {self.uri}: document {key} {state}")

    def list_documents(self, folder: str) -> list[str]:
        """Keys of the documents under ``folder`` (recursively, relative to the store), sorted."""
        base = self._key(check_document_key(folder.rstrip("/"))) + "/"
        strip = len(self._key()) + 1 if self.prefix else 0
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                found.extend(item["Key"][strip:] for item in page.get("Contents", []))
        except Exception as exc:
            raise self._fail(f"listing documents under {folder}", exc) from None
        return sorted(found)

    # -- checkpoints ----------------------------------------------------------------------------
    def _list_keys(self, prefix: str, what: str) -> list[str]:
        try:
            return [
                item["Key"]
                for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
                for item in page.get("Contents", [])
            ]
        except Exception as exc:
            raise self._fail(f"listing {what}", exc) from None

    def put_checkpoint(self, run_id: str, step: int, folder: Path, meta: dict) -> str:
        """Upload ``folder`` as the run's checkpoint at ``step`` (marker last); then delete its older ones."""
        base = self._key("checkpoints", RunId.parse(run_id))
        prefix = f"{base}/{checkpoint_folder_name(step)}"
        what = f"checkpoint {step} of run {run_id}"
        if not self._exists(f"{prefix}/{CHECKPOINT_MARKER}"):
            marker = checkpoint_marker(folder, run_id, step, meta)
            self._upload_folder(folder, prefix, what)
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=f"{prefix}/{CHECKPOINT_MARKER}",
                    Body=json.dumps(marker, indent=2, default=float).encode("utf-8"),
                    ContentType="application/json",
                )
            except Exception as exc:
                error = self._fail(f"uploading {what}", exc)
                self._remove([f"{prefix}/{rel}" for rel in marker["files"]])
                raise error from None
        stale = [
            k for k in self._list_keys(f"{base}/", f"checkpoints of run {run_id}") if not k.startswith(f"{prefix}/")
        ]
        self._remove(stale)
        return f"s3://{self.bucket}/{prefix}"

    def latest_checkpoint(self, run_id: str) -> dict | None:
        """The marker of the run's newest complete checkpoint, or ``None``."""
        base = self._key("checkpoints", RunId.parse(run_id))
        steps = []
        for key in self._list_keys(f"{base}/", f"checkpoints of run {run_id}"):
            folder, _, name = key[len(base) + 1 :].partition("/")
            if name == CHECKPOINT_MARKER and checkpoint_step(folder) is not None:
                steps.append(checkpoint_step(folder))
        if not steps:
            return None
        key = f"{base}/{checkpoint_folder_name(max(steps))}/{CHECKPOINT_MARKER}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise self._fail(f"reading {key}", exc) from None
        return parse_document(body, f"{key} in {self.uri}")

    def fetch_checkpoint(self, run_id: str, step: int, target: Path) -> Path:
        """Download the complete checkpoint at ``step`` into ``target`` (a new folder), sha256-verified."""
        prefix = f"{self._key('checkpoints', RunId.parse(run_id))}/{checkpoint_folder_name(step)}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"{prefix}/{CHECKPOINT_MARKER}")["Body"].read()
        except Exception as exc:
            raise self._fail(f"reading checkpoint {step} of run {run_id}", exc) from None
        marker = parse_document(body, f"{prefix}/{CHECKPOINT_MARKER} in {self.uri}")
        target = Path(target)
        tmp = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            where = f"run {run_id}: checkpoint {step} in {self.uri}"
            for rel, facts in checkpoint_files(marker, where).items():
                copy = confined(tmp, rel, where)
                copy.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.client.download_file(self.bucket, f"{prefix}/{rel}", str(copy))
                except Exception as exc:
                    raise self._fail(f"downloading {rel} of checkpoint {step} of run {run_id}", exc) from None
                if sha256_file(copy) != facts["sha256"]:
                    raise StoreError(
                        f"run {run_id}: checkpoint file {rel} does not match its sha256 (corrupt or overwritten)"
                    )
            (tmp / CHECKPOINT_MARKER).write_bytes(body)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def delete_checkpoints(self, run_id: str) -> None:
        base = self._key("checkpoints", RunId.parse(run_id))
        self._remove(self._list_keys(f"{base}/", f"checkpoints of run {run_id}"))
