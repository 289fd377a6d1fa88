"""Datasets pushed to the store (``emotion data push``) and read back by ``data.store_ref``: real moto S3 over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from helpers import assert_refused, write_tiny_tabular
from pydantic import ValidationError

from emotion_core.config import DataConfig, parse_run_config
from emotion_core.data import load_data
from emotion_core.data.pushed import FORMAT, PREFIX, fetch_dataset, parse_ref, push_dataset
from emotion_core.errors import ConfigError, DataError
from emotion_core.store import open_store

REPO = Path(__file__).resolve().parents[2]
EMOTION = str(Path(sys.executable).with_name("emotion"))


def _client(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint)


def _keys(s3_endpoint, bucket: str) -> dict[str, str]:
    listed = _client(s3_endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in listed}


def _cache_entries(cache: Path) -> list[str]:
    root = cache / PREFIX
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def pushed_csv(s3_bucket, s3_endpoint, tmp_path):
    """A tiny CSV pushed to the bucket: (csv path, store, push result)."""
    csv = write_tiny_tabular(tmp_path / "reviews.csv", rows=60)
    store = open_store(f"s3://{s3_bucket}/team")
    return csv, store, push_dataset(csv, store)


def test_push_twice_uploads_once(pushed_csv, s3_bucket, s3_endpoint):
    csv, store, first = pushed_csv
    assert first.uploaded == ("reviews.csv",)
    assert first.uri == f"s3://{s3_bucket}/team/{PREFIX}/{first.dataset_id}"
    before = _keys(s3_endpoint, s3_bucket)
    base = f"team/{PREFIX}/{first.dataset_id}"
    assert set(before) == {f"{base}/manifest.json", f"{base}/files/reviews.csv"}
    manifest = _client(s3_endpoint).get_object(Bucket=s3_bucket, Key=f"{base}/manifest.json")["Body"].read()
    assert hashlib.sha256(manifest).hexdigest() == first.dataset_id  # the id names the manifest's bytes
    assert json.loads(manifest)["files"] == [
        {"name": "reviews.csv", "sha256": hashlib.sha256(csv.read_bytes()).hexdigest(), "size": csv.stat().st_size}
    ]

    second = push_dataset(csv, store)
    assert second.uploaded == () and second.dataset_id == first.dataset_id
    assert _keys(s3_endpoint, s3_bucket) == before  # same objects, same ETags: nothing written


def test_config_naming_pushed_data_loads_the_same_rows(pushed_csv, tmp_path):
    csv, store, pushed = pushed_csv
    local = load_data(DataConfig(dataset="tabular", id_column="id", path=str(csv)))
    by_id = load_data(DataConfig(dataset="tabular", id_column="id", store_ref=f"sha256:{pushed.dataset_id}"), store)
    by_uri = load_data(DataConfig(dataset="tabular", id_column="id", store_ref=pushed.uri))  # no run store needed
    assert by_id.table.equals(local.table) and by_uri.table.equals(local.table)
    assert by_id.data_hash == local.data_hash == by_uri.data_hash  # where the bytes came from is not hashed
    assert by_id.report.pushed == pushed.uri and local.report.pushed is None
    cached = Path(by_id.report.files["train"])
    assert cached.is_relative_to(tmp_path / "cache") and cached.read_bytes() == csv.read_bytes()


def test_tampered_object_is_refused_and_nothing_is_cached(pushed_csv, s3_bucket, s3_endpoint, tmp_path):
    csv, store, pushed = pushed_csv
    key = f"team/{PREFIX}/{pushed.dataset_id}/files/reviews.csv"
    _client(s3_endpoint).put_object(Bucket=s3_bucket, Key=key, Body=csv.read_bytes().replace(b"calm", b"glad"))
    with pytest.raises(DataError) as raised:
        load_data(DataConfig(dataset="tabular", id_column="id", store_ref=pushed.uri))
    message = str(raised.value)
    assert f"s3://{s3_bucket}/{key}" in message and "does not match" in message and "tampered" in message
    assert set(_cache_entries(tmp_path / "cache")) <= {".staging"}  # no dataset folder, no half-written file

    _client(s3_endpoint).put_object(Bucket=s3_bucket, Key=key, Body=csv.read_bytes() + b"r99,more,1,0\n")
    with pytest.raises(DataError, match="larger than the .* bytes its dataset manifest lists"):
        fetch_dataset(parse_ref(pushed.uri))

    _client(s3_endpoint).delete_object(Bucket=s3_bucket, Key=key)
    with pytest.raises(DataError, match=f"s3://{s3_bucket}/{key}: not found in the store"):
        fetch_dataset(parse_ref(pushed.uri))
    assert set(_cache_entries(tmp_path / "cache")) <= {".staging"}


def test_verified_cache_is_reused_and_a_damaged_one_replaced(pushed_csv, s3_bucket, s3_endpoint):
    csv, store, pushed = pushed_csv
    path, _ = fetch_dataset(parse_ref(pushed.uri))
    _client(s3_endpoint).delete_object(Bucket=s3_bucket, Key=f"team/{PREFIX}/{pushed.dataset_id}/files/reviews.csv")
    assert fetch_dataset(parse_ref(pushed.uri))[0] == path  # verified copy: the store is not read again
    path.write_bytes(b"id,text,joy\n")  # damaged in the cache: verified before use, fetched again (object is gone)
    with pytest.raises(DataError, match="not found in the store"):
        fetch_dataset(parse_ref(pushed.uri))


def _upload_manifest(s3_endpoint, bucket: str, manifest: dict) -> str:
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    dataset_id = hashlib.sha256(body).hexdigest()  # a correct id: the names are what must be refused
    _client(s3_endpoint).put_object(Bucket=bucket, Key=f"team/{PREFIX}/{dataset_id}/manifest.json", Body=body)
    return dataset_id


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", ".hidden", "a/b.csv", "..", ""])
def test_malicious_manifest_is_refused(s3_bucket, s3_endpoint, tmp_path, name):
    entry = {"name": name, "sha256": "0" * 64, "size": 3}
    dataset_id = _upload_manifest(s3_endpoint, s3_bucket, {"format": FORMAT, "files": [entry]})
    with pytest.raises(DataError, match=r"invalid dataset manifest \(files\.0\.name") as raised:
        fetch_dataset(parse_ref(f"s3://{s3_bucket}/team/{PREFIX}/{dataset_id}"))
    assert f"{dataset_id}/manifest.json" in str(raised.value)
    assert not (tmp_path / "x").exists() and set(_cache_entries(tmp_path / "cache")) <= {".staging"}


def test_manifest_that_does_not_hash_to_its_id_or_is_missing(s3_bucket, s3_endpoint):
    dataset_id = _upload_manifest(s3_endpoint, s3_bucket, {"format": FORMAT, "files": []})
    other = "f" * 64
    body = _client(s3_endpoint).get_object(Bucket=s3_bucket, Key=f"team/{PREFIX}/{dataset_id}/manifest.json")
    _client(s3_endpoint).put_object(
        Bucket=s3_bucket, Key=f"team/{PREFIX}/{other}/manifest.json", Body=body["Body"].read()
    )
    with pytest.raises(DataError, match="does not hash to its id"):
        fetch_dataset(parse_ref(f"s3://{s3_bucket}/team/{PREFIX}/{other}"))
    with pytest.raises(DataError, match=r"files: .*refused"):  # hashes right, but lists no file
        fetch_dataset(parse_ref(f"s3://{s3_bucket}/team/{PREFIX}/{dataset_id}"))
    missing = "e" * 64
    with pytest.raises(DataError, match=f"no dataset sha256:{missing} in the store s3://{s3_bucket}/team"):
        fetch_dataset(parse_ref(f"sha256:{missing}"), open_store(f"s3://{s3_bucket}/team"))


def test_store_ref_is_validated_in_the_config(tmp_path):
    good = "sha256:" + "a" * 64
    assert DataConfig(dataset="goemotions", store_ref=good).store_ref == good
    for bad in ("sha256:abc", "s3://b/p/datasets/sha256/xyz", "a" * 64):
        with pytest.raises(ValidationError, match="data.store_ref .*expected 'sha256:<64 hex digits>'"):
            DataConfig(dataset="goemotions", store_ref=bad)
    secret = {
        "name": "x",
        "model": {"family": "ffnn"},
        "data": {"store_ref": "s3://K:hunter2@b/datasets/sha256/" + good[7:]},
    }
    with pytest.raises(ConfigError, match="field 'data.store_ref'.*credentials in a URI are refused") as raised:
        parse_run_config(secret)
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ValidationError, match="data.path or data.store_ref, not both"):
        DataConfig(dataset="tabular", path=str(tmp_path), store_ref=good)


def _emotion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EMOTION, *args], capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=300)


def test_cli_data_push(s3_bucket, s3_endpoint, tmp_path):
    csv = write_tiny_tabular(tmp_path / "reviews.csv", rows=40)
    store = f"s3://{s3_bucket}/team"
    first = _emotion("data", "push", str(csv), "--store", store)
    assert first.returncode == 0, first.stderr
    manifests = [k for k in _keys(s3_endpoint, s3_bucket) if k.endswith("/manifest.json")]
    assert len(manifests) == 1
    body = _client(s3_endpoint).get_object(Bucket=s3_bucket, Key=manifests[0])["Body"].read()
    dataset_id = hashlib.sha256(body).hexdigest()
    assert f"uploaded to {store}/{PREFIX}/{dataset_id}" in first.stdout
    assert f"  dataset: tabular\n  store_ref: sha256:{dataset_id}\n" in first.stdout
    second = _emotion("data", "push", str(csv), "--store", store)
    assert second.returncode == 0 and "nothing uploaded" in second.stdout and f"sha256:{dataset_id}" in second.stdout

    assert_refused(
        _emotion("data", "push", "no-such-set", "--store", store), "unknown dataset 'no-such-set'", "goemotions"
    )
    assert_refused(
        _emotion("data", "push", str(csv), "--store", "s3://no-such-bucket-x1/team"), "bucket 'no-such-bucket-x1'"
    )


def test_cli_push_registered_dataset_to_a_local_store(tmp_path, goemotions_dir, monkeypatch):
    monkeypatch.setenv("EMOTION_DATA_DIR", str(goemotions_dir.parent))
    result = _emotion("data", "push", "goemotions", "--store", str(tmp_path / "store"))
    assert result.returncode == 0, result.stderr
    assert "pushed goemotions: 3 file(s)" in result.stdout and "  dataset: goemotions\n" in result.stdout
    dataset_id = result.stdout.split("store_ref: sha256:")[1][:64]
    files = tmp_path / "store" / PREFIX / dataset_id / "files"
    assert sorted(p.name for p in files.iterdir()) == sorted(p.name for p in goemotions_dir.iterdir())


@pytest.mark.slow
def test_run_on_pushed_data_records_the_reference(s3_bucket, tmp_path, monkeypatch):
    """A bare ``sha256:<id>`` is read from the run's store; the manifest names the full reference, and the
    parent's analysis reads the data from there (no ``$EMOTION_STORE``, a fresh cache)."""
    from helpers import TINY_FFNN

    from emotion_core.analysis import DataCache
    from emotion_core.config import parse_run_config
    from emotion_core.pipeline import train_config
    from emotion_core.runs import read_run

    monkeypatch.delenv("EMOTION_STORE", raising=False)
    csv = write_tiny_tabular(tmp_path / "train.csv", rows=120)
    store = open_store(f"s3://{s3_bucket}/team")
    pushed = push_dataset(csv, store)
    data = {"dataset": "tabular", "id_column": "id", "store_ref": f"sha256:{pushed.dataset_id}"}
    uri = train_config(parse_run_config({"name": "pushed", **TINY_FFNN, "data": data}), store)

    run = read_run(uri)
    assert run.manifest["data"]["store_ref"] == pushed.uri
    assert (
        run.manifest["data"]["hash"]
        == load_data(DataConfig(dataset="tabular", id_column="id", path=str(csv))).data_hash
    )
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "parent-cache"))
    assert DataCache().for_run(run).data_hash == run.manifest["data"]["hash"]
    assert (tmp_path / "parent-cache" / PREFIX / pushed.dataset_id / "files" / "train.csv").is_file()
