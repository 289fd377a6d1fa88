"""Issue 11, classes 1, 3 and 9 (reading): run ids, report names and manifest entries never escape the store or
its cache, and every read of a run checks each file against the manifest's sha256."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import boto3
import pytest

from emotion_core.errors import StoreError
from emotion_core.runs import file_inventory
from emotion_core.store import open_store, resolve_run_folder

BAD_IDS = [
    "../../../x",
    "..",
    ".",
    "",
    ".hidden",
    "a/b",
    "a\\b",
    "a..b",
    "x" * 129,
    "a\0b",
    "a\nb",
    " a",
    "a b",
    "-flag",
    "é",
]


def write_run(folder: Path, run_id: str, files: dict[str, bytes] | None = None) -> Path:
    """A complete run folder: ``files`` and a manifest listing each one's size and sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, body in (files or {"thresholds.json": b'{"joy": 0.5}', "model/weights.bin": b"\1" * 64}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(body)
    (folder / "manifest.json").write_text(json.dumps({"run_id": run_id, "files": file_inventory(folder)}))
    return folder


def sentinel_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "sentinel.txt").write_text("the user's data\n")
    return path


# -- class 1: run ids and report names ------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_run_id_with_dotdot_is_refused_before_any_work(tmp_path, tiny_config, emotion, cli_env):
    store = tmp_path / "w1" / "w2" / "store"
    outside = sentinel_folder(tmp_path / "w1" / "x")  # store/runs/../../../x
    result = emotion("train", str(tiny_config), "--store", str(store), "--run-id", "../../../x", env=cli_env)
    assert (outside / "sentinel.txt").read_text() == "the user's data\n", "a folder outside the store was replaced"
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--run-id '../../../x': expected one plain name" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_publish_of_a_manifest_whose_run_id_climbs_out_is_refused(tmp_path, emotion):
    store = tmp_path / "deep" / "store"
    outside = sentinel_folder(tmp_path / "x")  # store/runs/../../x
    source = write_run(tmp_path / "evil-run", "../../x")
    result = emotion("publish", str(source), "--store", str(store))
    assert (outside / "sentinel.txt").read_text() == "the user's data\n"
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel.txt"]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "manifest.json run_id '../../x': expected one plain name" in result.stderr
    assert (source / "manifest.json").is_file() and "Traceback" not in result.stderr


def test_config_set_named_dotdot_is_refused(tmp_path, tiny_config, emotion):
    config_set = tmp_path / "set.yaml"  # its report would be published as reports/../../outside-<time>
    config_set.write_text(f"name: ../../outside\nconfigs: [{{path: {tiny_config.name}}}]\n")
    result = emotion("check-config", str(config_set))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "set.yaml" in result.stderr and "name" in result.stderr and "without '..'" in result.stderr


def test_report_and_staging_names_are_run_ids(tmp_path):
    store = open_store(tmp_path / "store")
    staged = store.staging("report-1")
    sentinel_folder(tmp_path / "x")
    with pytest.raises(StoreError, match=r"report name '\.\./\.\./x'"):
        store.publish_report(staged, "../../x")
    with pytest.raises(StoreError, match=r"staging name '\.\./\.\./x'"):
        store.staging("../../x")
    assert staged.is_dir() and (tmp_path / "x" / "sentinel.txt").is_file()


@pytest.mark.parametrize("bad", BAD_IDS, ids=[repr(b)[:20] for b in BAD_IDS])
def test_every_local_store_entry_point_refuses_a_bad_run_id(tmp_path, bad):
    from emotion_core.store import RunId

    store = open_store(tmp_path / "store")
    calls = {
        "run_folder": lambda: store.run_folder(bad),
        "publish": lambda: store.publish(tmp_path, bad),
        "has_run": lambda: store.has_run(bad),
        "latest_checkpoint": lambda: store.latest_checkpoint(bad),
        "put_checkpoint": lambda: store.put_checkpoint(bad, 1, tmp_path, {}),
        "fetch_checkpoint": lambda: store.fetch_checkpoint(bad, 1, tmp_path / "t"),
        "delete_checkpoints": lambda: store.delete_checkpoints(bad),
        "staging": lambda: store.staging(bad),
    }
    for call in calls.values():
        with pytest.raises(StoreError, match="expected one plain name"):
            call()
    assert RunId.parse("tiny-sec-20260101T000000Z-1a2b3c4d") == "tiny-sec-20260101T000000Z-1a2b3c4d"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == []


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "a/../../x", "a//b", "a\\..\\x", "", ".", "a/./b"])
def test_confined_refuses_paths_that_are_not_plain(tmp_path, relative):
    from emotion_core.store import confined

    with pytest.raises(StoreError, match="where: entry"):
        confined(tmp_path, relative, "where")


def test_confined_refuses_a_symlink_out_of_the_folder(tmp_path):
    from emotion_core.store import confined

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(StoreError, match="leads outside"):
        confined(tmp_path / "root", "link/x", "where")
    assert confined(tmp_path / "root", "model/w.bin", "where") == tmp_path / "root" / "model" / "w.bin"


# -- class 3: manifest entries of an S3 run ---------------------------------------------------------------------------
@pytest.mark.slow
def test_s3_manifest_entry_with_dotdot_is_not_written_outside_the_cache(s3_bucket, s3_endpoint, tmp_path):
    import hashlib

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    body = b"planted by an attacker\n"
    entry = "../../../../../../x"  # from <cache>/s3/<bucket>/_/.downloads/<tmp>/ to the cache's parent
    manifest = {"run_id": "evil", "files": {entry: {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}}}
    client.put_object(Bucket=s3_bucket, Key=f"runs/evil/{entry}", Body=body)
    client.put_object(Bucket=s3_bucket, Key="runs/evil/manifest.json", Body=json.dumps(manifest).encode())
    with pytest.raises(StoreError, match=r"run evil in s3://.*: entry '(\.\./){6}x' is not a plain relative"):
        open_store(f"s3://{s3_bucket}").run_folder("evil")
    planted = [p for p in tmp_path.rglob("x") if p.is_file()]
    assert not planted, f"written outside the run's cache folder: {planted}"


# -- class 9: integrity on read ---------------------------------------------------------------------------------------
def test_tampered_local_run_is_refused_on_every_read(tmp_path):
    store = open_store(tmp_path / "store")
    store.publish(write_run(store.staging("r1"), "r1"), "r1")
    assert store.run_folder("r1").name == "r1"
    (tmp_path / "store" / "runs" / "r1" / "thresholds.json").write_bytes(b'{"joy": 0.0}')  # same size, other values
    with pytest.raises(StoreError, match="thresholds.json does not match the sha256"):
        store.run_folder("r1")
    with pytest.raises(StoreError, match="thresholds.json does not match the sha256"):
        resolve_run_folder(tmp_path / "store" / "runs" / "r1")


def test_missing_and_unlisted_files_are_refused(tmp_path):
    run = write_run(tmp_path / "run", "r1")
    (run / "model" / "weights.bin").unlink()
    with pytest.raises(StoreError, match="model/weights.bin is listed in manifest.json but missing"):
        resolve_run_folder(run)
    other = write_run(tmp_path / "other", "r2")
    (other / "model" / "modeling_evil.py").write_text("import os\n")
    with pytest.raises(StoreError, match="files not listed in manifest.json: model/modeling_evil.py"):
        resolve_run_folder(other)


@pytest.mark.slow
def test_tampered_s3_cached_copy_is_downloaded_again(s3_bucket, s3_endpoint):
    store = open_store(f"s3://{s3_bucket}")
    store.publish(write_run(store.staging("r1"), "r1"), "r1")
    cached = store.run_folder("r1") / "thresholds.json"
    cached.write_bytes(b'{"joy": 0.0}')
    assert (open_store(f"s3://{s3_bucket}").run_folder("r1") / "thresholds.json").read_bytes() == b'{"joy": 0.5}'


def test_stale_staging_leftovers_are_swept_when_a_store_opens(tmp_path, monkeypatch):
    area = tmp_path / "store" / ".staging"
    old = 48 * 3600
    dead = write_run(area / "r1-p999999999-0123abcd", "r1")  # a pid no process has
    (dead / "manifest.json").unlink()  # a writer that died before its manifest
    kept_run = write_run(area / "r2-p999999999-0123abcd", "r2")  # complete: kept after a failed publish
    for folder in (dead, kept_run):
        os.utime(folder, (time.time() - old, time.time() - old))
    fresh = area / "r3-p999999999-0123abcd"
    fresh.mkdir()
    open_store(tmp_path / "store")
    assert not dead.exists() and kept_run.is_dir() and fresh.is_dir()
    from emotion_core.store.integrity import sweep_staging

    live = area / f"r4-p{os.getpid()}-0123abcd"
    live.mkdir()
    os.utime(live, (time.time() - old, time.time() - old))
    monkeypatch.setenv("EMOTION_STAGING_MAX_AGE_HOURS", "0")
    assert sweep_staging(area) == [fresh]
    assert live.is_dir()
