"""Issue 11, class 7 (and class 11's ``file://tmp/x``): a URI carrying credentials is refused with the URI
redacted, before any flow run, store or cache path sees it; the secret is never printed or stored.

The CLI calls run with ``PREFECT_API_URL`` on a closed 127.0.0.1 port: had ``train`` reached its flow,
it would fail on the connection, not with the redaction message.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EMOTION = str(Path(sys.executable).with_name("emotion"))
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"
CREDENTIAL_URIS = [
    (f"s3://AKIAEXAMPLE:{SECRET}@minio.example:9000/bucket", "s3://***@minio.example:9000/bucket"),
    (f"file://admin:{SECRET}@localhost/srv/store", "file://***@localhost/srv/store"),
    (f"https://token:{SECRET}@store.example/runs", "https://***@store.example/runs"),
]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def emotion(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "EMOTION_CACHE_DIR": str(tmp_path / "cache"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{closed_port()}/api",
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    return subprocess.run([EMOTION, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def assert_refused_redacted(result: subprocess.CompletedProcess, redacted: str, tmp_path: Path) -> None:
    where = f"--- stderr:\n{result.stderr[-3000:]}\n--- stdout:\n{result.stdout[-500:]}"
    assert result.returncode == 2, where
    assert redacted in result.stderr and "credentials in a URI are refused" in result.stderr, where
    assert SECRET not in result.stderr + result.stdout and SECRET.split("/")[0] not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout, where
    cached = [p for p in (tmp_path / "cache").rglob("*")] if (tmp_path / "cache").exists() else []
    assert not [p for p in cached if SECRET.split("/")[0] in str(p)], "the secret became a cache path"


@pytest.fixture
def run_folder(tmp_path) -> Path:
    (tmp_path / "done-run").mkdir()
    (tmp_path / "done-run" / "manifest.json").write_text('{"run_id": "done-run"}\n', encoding="utf-8")
    return tmp_path / "done-run"


@pytest.mark.parametrize("uri, redacted", CREDENTIAL_URIS, ids=["s3", "file", "https"])
def test_publish_store_with_credentials_is_refused_redacted(uri, redacted, run_folder, tmp_path):
    assert_refused_redacted(emotion("publish", str(run_folder), "--store", uri, tmp_path=tmp_path), redacted, tmp_path)


@pytest.mark.parametrize("uri, redacted", CREDENTIAL_URIS, ids=["s3", "file", "https"])
def test_predict_run_with_credentials_is_refused_redacted(uri, redacted, tmp_path):
    (tmp_path / "in.csv").write_text("id,text\na,happy\n", encoding="utf-8")
    result = emotion(
        "predict", f"{uri}/runs/r1", str(tmp_path / "in.csv"), "--out", str(tmp_path / "o.csv"), tmp_path=tmp_path
    )
    assert_refused_redacted(result, f"{redacted}/runs/r1", tmp_path)
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("command", ["train", "train-all"])
def test_train_store_with_credentials_is_refused_before_any_flow_run(command, tmp_path):
    config = REPO / "tests" / "data" / "bad" / "config" / "ok-ffnn.yaml"
    if command == "train-all":
        (tmp_path / "set.yaml").write_text(f"name: s\nconfigs:\n  - path: {config}\n", encoding="utf-8")
        config = tmp_path / "set.yaml"
    uri, redacted = CREDENTIAL_URIS[0]
    assert_refused_redacted(emotion(command, str(config), "--store", uri, tmp_path=tmp_path), redacted, tmp_path)


def test_emotion_store_variable_with_credentials_is_refused_too(tmp_path, monkeypatch):
    uri, redacted = CREDENTIAL_URIS[0]
    monkeypatch.setenv("EMOTION_STORE", uri)
    config = REPO / "tests" / "data" / "bad" / "config" / "ok-ffnn.yaml"
    assert_refused_redacted(emotion("train", str(config), tmp_path=tmp_path), redacted, tmp_path)


def test_the_flows_refuse_credentials_before_using_the_store(tmp_path):
    """Called directly (a deployment, a script), the flow bodies refuse before the store is opened."""
    from emotion_core.errors import StoreError
    from flows.train_all import train_all
    from flows.train_model import train_model

    uri, redacted = CREDENTIAL_URIS[0]
    config = str(REPO / "tests" / "data" / "bad" / "config" / "ok-ffnn.yaml")
    for call in (lambda: train_model.fn(config=config, store=uri), lambda: train_all.fn(config_set=config, store=uri)):
        with pytest.raises(StoreError) as info:
            call()
        assert redacted in str(info.value) and SECRET not in str(info.value)


def test_s3_errors_never_show_endpoint_credentials(tmp_path, monkeypatch):
    from emotion_core.errors import StoreError
    from emotion_core.store.s3 import S3Store

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = S3Store("bucket", endpoint_url=f"http://user:{SECRET}@127.0.0.1:{closed_port()}", attempts=1)
    with pytest.raises(StoreError) as info:
        store.list_runs()
    assert "http://***@127.0.0.1" in str(info.value) and SECRET not in str(info.value)
    with pytest.raises(StoreError, match=r"s3://\*\*\*@host"):
        S3Store(f"KEY:{SECRET}@host", "bucket")


def test_file_uri_with_a_host_is_refused_not_written_at_the_root(run_folder, tmp_path):
    uri = f"file://tmp{tmp_path}/store"  # read as host 'tmp', path '<tmp_path>/store'
    result = emotion("publish", str(run_folder), "--store", uri, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "expected file:///absolute/path" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "store").exists()


def test_redact_uri():
    from emotion_core.store.uris import redact_uri

    for uri, redacted in CREDENTIAL_URIS:
        assert redact_uri(uri) == redacted
    assert redact_uri("s3://bucket/prefix?X-Amz-Signature=abc") == "s3://bucket/prefix?***"
    assert redact_uri("/data/me@home/store") == "/data/me@home/store"  # a path is not a URI


def test_a_run_manifest_records_no_credentials(tmp_path, monkeypatch):
    """The environment (AWS keys) is never copied into a run: nothing in the run folder holds the secret."""
    from emotion_core.config import parse_run_config
    from emotion_core.pipeline import train_config
    from emotion_core.store import open_store

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    rows = ["text,joy"] + [f"{'happy' if i % 2 else 'calm'} day {i},{i % 2}" for i in range(30)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = parse_run_config(
        {
            "name": "no-secrets",
            "model": {"family": "ffnn", "max_features": 50, "hidden_size": 4, "min_df": 1},
            "training": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None},
            "data": {"dataset": "tabular", "path": str(tmp_path / "train.csv")},
        }
    )
    folder = Path(train_config(cfg, open_store(tmp_path / "store")).removeprefix("file://"))
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
