"""End to end: the real `train-all/nightly` deployment on a real server, real workers, real S3.

One module-scoped stack on the session's Prefect server: the pools of deployments/pools/pools.yaml,
`prefect deploy --all --no-prompt` of the project's prefect.yaml, an orchestration worker and two
gpu-pool workers (CPU here), and the artefact store in a bucket of moto's S3 server over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import boto3
import httpx
import pytest

pytestmark = pytest.mark.slow

SETS = Path(__file__).resolve().parents[1] / "data" / "sets"


SCHEDULE_SEEN: dict = {}
"""The nightly schedule's upcoming runs, read before the fixture paused it (for the schedule's test)."""


@pytest.fixture(scope="module")
def nightly(prefect_stack, s3_endpoint, data_dir, tmp_path_factory, workers_on_s3):
    """Pools, deployments and workers on the session server; yields (stack, bucket)."""
    cache = tmp_path_factory.mktemp("cache")
    with workers_on_s3(prefect_stack, s3_endpoint, data_dir, cache, "e2e", schedule_seen=SCHEDULE_SEEN) as bucket:
        yield prefect_stack, bucket


def api(stack, path: str, body: dict | None = None):
    """POST to the server; a read that times out while two children load the 2 cores is tried again."""
    for attempt in range(3):
        try:
            response = httpx.post(f"{stack.api_url}{path}", json=body or {}, timeout=60)
            break
        except httpx.TransportError:
            if attempt == 2:
                raise
            time.sleep(5)
    response.raise_for_status()
    return response.json()


def children_of(stack, parent_id: str) -> list[dict]:
    return api(stack, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}})


def run_nightly(stack, config_set: Path, timeout_s: float = 600):
    from emotion_cli.stack import trigger

    return trigger(stack, "train-all/nightly", {"config_set": str(config_set)}, timeout_s=timeout_s)


def published(bucket: str, endpoint: str, run_id: str) -> bool:
    """Whether the run's manifest (written last: the run is complete) is in the bucket (one HEAD request)."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    try:
        s3.head_object(Bucket=bucket, Key=f"nightly/runs/{run_id}/manifest.json")
    except s3.exceptions.ClientError:
        return False
    return True


def test_nightly_trains_two_children_in_parallel_on_the_gpu_pool(nightly, s3_endpoint, repo):
    stack, bucket = nightly
    env = {**stack.env()}
    # The command users run, as they run it.
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("prefect")),
            "deployment",
            "run",
            "train-all/nightly",
            "--param",
            f"config_set={SETS / 'tiny-pair.yaml'}",
            "--watch",
            "--watch-timeout",
            "600",
        ],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=700,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Completed" in result.stdout
    parent = api(
        stack,
        "/flow_runs/filter",
        {
            "flow_runs": {
                "deployment_id": {
                    "any_": [httpx.get(f"{stack.api_url}/deployments/name/train-all/nightly").json()["id"]]
                },
                "state": {"type": {"any_": ["COMPLETED"]}},
            },
            "sort": "END_TIME_DESC",
            "limit": 1,
        },
    )[0]
    assert parent["work_pool_name"] == "orchestration"

    children = children_of(stack, parent["id"])
    assert sorted(c["name"] for c in children) == ["train-model-tiny-ffnn", "train-model-tiny-ffnn-b"]
    assert all(c["state_type"] == "COMPLETED" and c["work_pool_name"] == "gpu" for c in children)
    # In parallel: each started before the other ended.
    a, b = children
    assert a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"], children

    # Both runs are in the real S3 endpoint, complete (manifest), trained by two different workers.
    run_ids = {c["parameters"]["run_id"] for c in children}
    assert all(published(bucket, s3_endpoint, r) for r in run_ids), run_ids
    from emotion_core.runs import read_run
    from emotion_core.store import open_store

    store = open_store(f"s3://{bucket}/nightly", endpoint_url=s3_endpoint)
    manifests = [read_run(store.run_folder(r)).manifest for r in run_ids]
    workers = {m["orchestration"]["worker"] for m in manifests}
    assert len(workers) == 2 and all(w.startswith("gpu-") for w in workers), workers
    assert all(m["orchestration"]["work_pool"] == "gpu" for m in manifests)
    assert all(m["device_usage"]["samples"] >= 1 for m in manifests)
    # Each child evaluated and explained its own run on its worker and stored the results beside it (index last).
    for manifest in manifests:
        index = store.read_document(f"analysis/{manifest['run_id']}/analysis.json")
        assert index["context"]["worker"] == manifest["orchestration"]["worker"]
        assert {"calibration.json", "shap.json"} <= set(index["files"])
    # The children got their config's content (no path into this checkout) and ran the parent's code.
    assert all(isinstance(c["parameters"]["config"], dict) for c in children)
    assert {m["code_version"] for m in manifests} == {c["parameters"]["code_version"] for c in children}
    assert len({m["code_version"] for m in manifests}) == 1

    # The summary artifact is readable from the API and lists both configs.
    summary = api(
        stack,
        "/artifacts/filter",
        {"artifacts": {"key": {"any_": ["comparison-tiny-pair"]}, "flow_run_id": {"any_": [parent["id"]]}}},
    )
    assert (
        len(summary) == 1
        and "tiny-ffnn-b" in summary[0]["data"]
        and f"s3://{bucket}/nightly/reports/" in summary[0]["data"]
    )
    table = api(stack, "/artifacts/filter", {"artifacts": {"key": {"any_": ["comparison-table-tiny-pair"]}}})
    assert {row["config"] for row in _table_rows(table[0])} == {"tiny-ffnn", "tiny-ffnn-b", "ensemble-top2"}
    # The analysed report went to the bucket too: the HTML page, its plots and each model's calibration.
    report = summary[0]["data"].split(f"s3://{bucket}/")[1].split("/report.html")[0]
    listing = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket, Prefix=report)
    keys = {o["Key"] for o in listing["Contents"]}
    assert {
        f"{report}/report.html",
        f"{report}/summary.csv",
        f"{report}/models/tiny-ffnn/calibration.json",
        f"{report}/models/tiny-ffnn-b/shap.html",
    } <= keys
    summary_json = boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket=bucket, Key=f"{report}/summary.json")
    evaluated_in = {e["name"]: e.get("evaluated_in") for e in json.loads(summary_json["Body"].read())["entries"]}
    assert evaluated_in == {"tiny-ffnn": "child", "tiny-ffnn-b": "child", "ensemble-top2": None}  # only gathered
    # Each child published progress to a progress artifact.
    progress = api(
        stack, "/artifacts/filter", {"artifacts": {"key": {"any_": ["progress-tiny-ffnn", "progress-tiny-ffnn-b"]}}}
    )
    assert {p["key"] for p in progress} == {"progress-tiny-ffnn", "progress-tiny-ffnn-b"}
    assert all(float(p["data"]) == 100.0 for p in progress if p["flow_run_id"] in {c["id"] for c in children})


def _table_rows(artifact: dict) -> list[dict]:
    import json

    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


def test_the_schedule_created_upcoming_runs(nightly):
    stack, _ = nightly
    deployment = SCHEDULE_SEEN["deployment"]
    assert deployment["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert deployment["schedules"][0]["schedule"]["timezone"] == "Europe/Berlin"
    starts = sorted(datetime.fromisoformat(r["expected_start_time"]) for r in SCHEDULE_SEEN["runs"])
    assert len(starts) >= 2 and starts[0] > SCHEDULE_SEEN["at"]
    assert all(s.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")).hour == 2 for s in starts)
    # Paused by the fixture, so no real nightly starts on the test workers: no scheduled run is left.
    now = httpx.get(f"{stack.api_url}/deployments/{deployment['id']}", timeout=30).json()
    assert now["paused"] is True
    left = api(
        stack,
        "/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}},
    )
    assert left == []


def test_a_failing_child_fails_the_parent_by_name_and_the_rest_completes(nightly, s3_endpoint):
    stack, bucket = nightly
    run = run_nightly(stack, SETS / "tiny-with-bad-model.yaml")
    assert run.state.is_failed()
    assert "no-such-model" in run.state.message and "1 of 2 configs failed" in run.state.message
    children = {c["name"]: c for c in children_of(stack, str(run.id))}
    assert children["train-model-no-such-model"]["state_type"] == "FAILED"
    assert children["train-model-tiny-ffnn"]["state_type"] == "COMPLETED"
    good = children["train-model-tiny-ffnn"]["parameters"]["run_id"]
    bad = children["train-model-no-such-model"]["parameters"]["run_id"]
    assert published(bucket, s3_endpoint, good)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=f"nightly/runs/{bad}/").get("KeyCount", 0) == 0
    # The summary still comes out, with the failed config as a failed row.
    summary = api(
        stack,
        "/artifacts/filter",
        {"artifacts": {"key": {"any_": ["comparison-tiny-with-bad-model"]}, "flow_run_id": {"any_": [str(run.id)]}}},
    )
    assert len(summary) == 1
    assert (
        "failed" in summary[0]["data"] and "no-such-model" in summary[0]["data"] and "tiny-ffnn" in summary[0]["data"]
    )


def test_cancelling_the_parent_cancels_its_children(nightly):
    stack, _ = nightly
    from prefect.deployments import run_deployment

    parent = stack.run_with_api(
        run_deployment,
        "train-all/nightly",
        parameters={"config_set": str(SETS / "slow-pair.yaml")},
        timeout=0,
        as_subflow=False,
    )
    deadline = time.monotonic() + 240
    while True:  # both children training
        children = children_of(stack, str(parent.id))
        if len(children) == 2 and all(c["state_type"] == "RUNNING" for c in children):
            break
        assert time.monotonic() < deadline, children
        time.sleep(2)
    api(
        stack,
        f"/flow_runs/{parent.id}/set_state",
        {"state": {"type": "CANCELLING", "message": "test cancels"}, "force": True},
    )
    deadline = time.monotonic() + 180
    while True:
        children = children_of(stack, str(parent.id))
        if all(c["state_type"] == "CANCELLED" for c in children):
            break
        assert time.monotonic() < deadline, [(c["name"], c["state_type"], c["state_name"]) for c in children]
        time.sleep(2)
    final = httpx.get(f"{stack.api_url}/flow_runs/{parent.id}").json()
    assert final["state_type"] in ("CANCELLED", "CANCELLING")
