"""S3 store through boto3 against a real S3 endpoint over HTTP (moto_server on 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import threading
import time

import boto3
import pytest

from emotion_core.errors import StoreError
from emotion_core.store import open_store, resolve_run_folder
from emotion_core.store.s3 import S3Store

pytestmark = pytest.mark.slow


def stage_run(store, run_id: str) -> None:
    """Stage a small run with a manifest that inventories its files (as the pipeline writes it)."""
    from emotion_core.runs import file_inventory

    folder = store.staging(run_id)
    (folder / "model").mkdir()
    (folder / "model" / "weights.safetensors").write_bytes(b"\x00\x01" * 5000)
    (folder / "metrics.json").write_text('{"macro_f1": 0.5}')
    (folder / "manifest.json").write_text(json.dumps({"run_id": run_id, "files": file_inventory(folder)}))
    return folder


def count_puts(store: S3Store) -> list[str]:
    calls: list[str] = []
    store.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: calls.append(params["Key"])
    )
    return calls


def test_publish_list_read_and_idempotent_republish(s3_bucket, s3_endpoint):
    store = open_store(f"s3://{s3_bucket}/team/emotion")
    assert isinstance(store, S3Store) and store.uri == f"s3://{s3_bucket}/team/emotion"
    puts = count_puts(store)
    uri = store.publish(stage_run(store, "r1"), "r1")
    assert uri == f"s3://{s3_bucket}/team/emotion/runs/r1"
    assert puts[-1] == "team/emotion/runs/r1/manifest.json"  # the manifest is written last
    assert len(puts) == 3
    assert store.list_runs() == ["r1"]
    local = resolve_run_folder(uri)
    assert (local / "model" / "weights.safetensors").read_bytes() == b"\x00\x01" * 5000
    assert json.loads((local / "manifest.json").read_text())["run_id"] == "r1"
    # Publishing the same run again uploads nothing.
    before = len(puts)
    store.publish(stage_run(store, "r1"), "r1")
    assert len(puts) == before


def test_incomplete_and_corrupt_runs_are_never_read(s3_bucket, s3_endpoint):
    store = open_store(f"s3://{s3_bucket}")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    # A writer that died before the manifest: files without manifest.json.
    client.put_object(Bucket=s3_bucket, Key="runs/crashed/metrics.json", Body=b"{}")
    assert store.list_runs() == []
    with pytest.raises(StoreError, match="crashed: not found .* or incomplete"):
        store.run_folder("crashed")
    # A file changed after publishing no longer matches the manifest's sha256.
    store.publish(stage_run(store, "r2"), "r2")
    client.put_object(Bucket=s3_bucket, Key="runs/r2/metrics.json", Body=b'{"macro_f1": 0.99}')
    with pytest.raises(StoreError, match="metrics.json does not match the sha256"):
        store.run_folder("r2")
    assert not (store.cache / "runs" / "r2").exists()


def test_checkpoints_marker_last_latest_only_verified_and_deleted(s3_bucket, s3_endpoint, tmp_path):
    store = open_store(f"s3://{s3_bucket}/team")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    puts = count_puts(store)
    assert store.latest_checkpoint("r1") is None
    for step in (50, 100):
        folder = tmp_path / f"c{step}"
        (folder / "trainer").mkdir(parents=True)
        (folder / "trainer" / "optimizer.pt").write_bytes(bytes([step % 256]) * 3000)
        (folder / "best").mkdir()
        (folder / "best" / "model.safetensors").write_bytes(b"w" * 100)
        assert (
            store.put_checkpoint("r1", step, folder, {"step": step})
            == f"s3://{s3_bucket}/team/checkpoints/r1/checkpoint-{step}"
        )
    assert puts[-1] == "team/checkpoints/r1/checkpoint-100/checkpoint.json"  # the marker is written last
    listed = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="team/checkpoints/")["Contents"])
    assert listed == [
        "team/checkpoints/r1/checkpoint-100/best/model.safetensors",
        "team/checkpoints/r1/checkpoint-100/checkpoint.json",
        "team/checkpoints/r1/checkpoint-100/trainer/optimizer.pt",
    ]  # the older one is gone
    # A newer upload that died before its marker is invisible.
    client.put_object(Bucket=s3_bucket, Key="team/checkpoints/r1/checkpoint-150/trainer/optimizer.pt", Body=b"half")
    marker = store.latest_checkpoint("r1")
    assert marker["step"] == 100 and marker["meta"] == {"step": 100}
    target = store.fetch_checkpoint("r1", 100, tmp_path / "restored")
    assert (target / "trainer" / "optimizer.pt").read_bytes() == bytes([100]) * 3000
    client.put_object(Bucket=s3_bucket, Key="team/checkpoints/r1/checkpoint-100/best/model.safetensors", Body=b"x")
    with pytest.raises(StoreError, match="model.safetensors does not match its sha256"):
        store.fetch_checkpoint("r1", 100, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    store.delete_checkpoints("r1")
    assert store.latest_checkpoint("r1") is None
    assert client.list_objects_v2(Bucket=s3_bucket, Prefix="team/checkpoints/").get("KeyCount", 0) == 0


def test_unreachable_store_fails_clearly_and_publishes_nothing(tmp_path, s3_endpoint, monkeypatch):
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))
    closed = f"http://127.0.0.1:{_closed_port()}"
    store = S3Store("bucket", "p", endpoint_url=closed, attempts=2, connect_timeout=1)
    staging = stage_run(store, "r3")
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.publish(staging, "r3")
    message = str(info.value)
    assert "s3://bucket/p" in message and closed in message and "failed after up to 2 attempts" in message
    assert "testing" not in message  # credentials never appear in errors
    assert (staging / "manifest.json").is_file()  # the local copy survives for a later publish
    assert time.monotonic() - started < 60


def test_store_down_for_a_while_is_retried_until_it_is_back(s3_bucket, s3_endpoint, s3_gate, monkeypatch):
    """The endpoint refuses connections for ~2 s, then comes back: publish retries and completes."""
    opener = threading.Timer(2.0, s3_gate.open)
    opener.start()
    store = S3Store(s3_bucket, "flaky", endpoint_url=f"http://127.0.0.1:{s3_gate.port}", attempts=10, connect_timeout=1)
    staging = stage_run(store, "r4")
    assert store.publish(staging, "r4") == f"s3://{s3_bucket}/flaky/runs/r4"
    direct = S3Store(s3_bucket, "flaky", endpoint_url=s3_endpoint)
    assert direct.list_runs() == ["r4"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TINY = {
    "model": {"max_features": 5000, "hidden_size": 32},
    "training": {"epochs": 1},
    "data": {"max_train_samples": 1000, "max_validation_samples": 300, "max_test_samples": 300},
}


def test_pipeline_publishes_to_s3_and_predicts_from_the_uri(s3_bucket, data_dir, repo, tmp_path):
    import polars as pl

    from emotion_core import pipeline
    from emotion_core.config import load_run_config
    from emotion_core.predict import predict_file
    from emotion_core.runs import read_run

    store = open_store(f"s3://{s3_bucket}/nightly")
    cfg = load_run_config(repo / "deployments" / "configs" / "ffnn-tfidf.yaml", TINY)
    uri = pipeline.train_config(cfg, store)
    assert uri.startswith(f"s3://{s3_bucket}/nightly/runs/ffnn-tfidf-")
    run = read_run(uri)
    assert run.manifest["status"] == "completed" and run.config.name == "ffnn-tfidf"
    keys = [o["Key"] for o in store.client.list_objects_v2(Bucket=s3_bucket, Prefix="nightly/runs/")["Contents"]]
    assert {k.split("/runs/")[1].split("/", 1)[1] for k in keys} == set(run.manifest["files"]) | {"manifest.json"}
    out = predict_file(uri, data_dir / "goemotions" / "dev.tsv", tmp_path / "p.csv")
    assert pl.read_csv(out).height == 5426


def test_publish_failure_keeps_the_trained_run(data_dir, repo, tmp_path, monkeypatch):
    from emotion_core import pipeline
    from emotion_core.config import load_run_config

    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))
    store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{_closed_port()}", attempts=2, connect_timeout=1)
    cfg = load_run_config(repo / "deployments" / "configs" / "ffnn-tfidf.yaml", TINY)
    with pytest.raises(StoreError, match="The complete run is kept at") as info:
        pipeline.train_config(cfg, store)
    kept = info.value.args[0].split("kept at ")[1].split(";")[0]
    from pathlib import Path

    assert (Path(kept) / "manifest.json").is_file() and (Path(kept) / "model" / "model.safetensors").is_file()
    # Nothing is lost: the kept run is published later with the command the error names.
    import subprocess
    import sys

    assert f"emotion publish {kept} --store" in info.value.args[0]
    emotion = str(Path(sys.executable).with_name("emotion"))
    result = subprocess.run(
        [emotion, "publish", kept, "--store", str(tmp_path / "recovered")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    recovered = open_store(tmp_path / "recovered")
    assert len(recovered.list_runs()) == 1 and recovered.list_runs()[0].startswith("ffnn-tfidf-")
