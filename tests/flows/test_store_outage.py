"""The artefact store goes away while a run publishes: retried with backoff, then complete or nothing.

A TCP gate in front of moto's S3 server (``s3_gate``) refuses connections while closed (a store that is down);
the real ``train-model`` flow publishes through it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import boto3
import pytest

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[1] / "data" / "sets" / "tiny-ffnn.yaml"


def objects(endpoint: str, bucket: str) -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_store_down_for_a_while_then_back_the_run_completes(
    prefect_server, data_dir, s3_endpoint, s3_bucket, s3_gate, monkeypatch
):
    from flows.train_model import train_model

    monkeypatch.setenv("EMOTION_S3_ENDPOINT_URL", f"http://127.0.0.1:{s3_gate.port}")
    monkeypatch.setenv("EMOTION_S3_MAX_ATTEMPTS", "2")  # a short botocore retry: the task's retries do the rest
    # Closed now; opens ~12 s later, during the publish task's retry delays (10 s, 20 s).
    opener = threading.Timer(12.0, s3_gate.open)
    opener.start()
    started = time.monotonic()
    try:
        uri = train_model(
            config=str(TINY), store=f"s3://{s3_bucket}/outage", run_id="outage-then-back", publish_retries=2
        )
    finally:
        opener.cancel()
    assert uri == f"s3://{s3_bucket}/outage/runs/outage-then-back"
    assert time.monotonic() - started > 12  # it really waited for the store
    keys = objects(s3_endpoint, s3_bucket)
    assert "outage/runs/outage-then-back/manifest.json" in keys
    from emotion_core.runs import read_run
    from emotion_core.store import open_store

    monkeypatch.setenv("EMOTION_S3_ENDPOINT_URL", s3_endpoint)
    run = read_run(
        open_store(f"s3://{s3_bucket}/outage").run_folder("outage-then-back")
    )  # sha256 of every file checked
    assert run.manifest["status"] == "completed"


def test_store_that_stays_down_fails_clearly_with_nothing_published(
    prefect_server, data_dir, s3_endpoint, s3_bucket, s3_gate, monkeypatch
):
    from emotion_core.errors import StoreError
    from flows.train_model import train_model

    monkeypatch.setenv("EMOTION_S3_ENDPOINT_URL", f"http://127.0.0.1:{s3_gate.port}")  # never opened
    monkeypatch.setenv("EMOTION_S3_MAX_ATTEMPTS", "2")
    with pytest.raises(StoreError) as failure:
        train_model(config=str(TINY), store=f"s3://{s3_bucket}/down", run_id="store-stays-down", publish_retries=1)
    message = str(failure.value)
    assert f"s3://{s3_bucket}/down" in message and "emotion publish" in message
    kept = Path(message.split("The complete run is kept at ")[1].split(";")[0])
    assert (kept / "manifest.json").is_file()  # the trained run is not lost
    assert objects(s3_endpoint, s3_bucket) == []  # and nothing half-published
    assert "testing" not in message  # no credentials in errors
