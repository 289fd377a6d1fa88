"""Fault test: a gpu worker and its flow-run process are SIGKILLed mid-training on a real stack.

The session's real Prefect server, real process workers (one orchestration, two on the gpu pool),
`prefect deploy --all` of the project's prefect.yaml, and the artefact store in a bucket of moto's
S3 server over HTTP. After the child's first training checkpoint lands in the store, the worker
running it is killed with everything under it (a lost machine): nothing is left to report the
crash, the flow run stays RUNNING. The parent must notice the missing heartbeats, mark the child
crashed, re-dispatch it with the same run id to the other worker, and that run must resume from
the checkpoint and complete; then the parent completes. The second test kills only the flow-run
process: its worker reports it CRASHED and the parent re-dispatches it at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import httpx
import pytest

pytestmark = pytest.mark.slow

SETS = Path(__file__).resolve().parents[1] / "data" / "sets"
HEARTBEAT_S = 30  # Prefect's minimum flow-run heartbeat interval
TIMEOUT_S = 70  # silence after which the parent declares a child dead


@pytest.fixture(scope="module")
def crash_stack(prefect_stack, s3_endpoint, data_dir, tmp_path_factory, workers_on_s3):
    with workers_on_s3(
        prefect_stack,
        s3_endpoint,
        data_dir,
        tmp_path_factory.mktemp("cache"),
        "crash",
        {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)},
    ) as bucket:
        yield prefect_stack, bucket


def api(stack, path: str, body: dict | None = None):
    response = httpx.post(f"{stack.api_url}{path}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def flow_run(stack, flow_run_id: str) -> dict:
    return httpx.get(f"{stack.api_url}/flow_runs/{flow_run_id}", timeout=30).json()


def children_of(stack, parent_id: str) -> list[dict]:
    return api(
        stack,
        "/flow_runs/filter",
        {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}, "sort": "START_TIME_ASC"},
    )


def keys(s3, bucket: str, prefix: str) -> list[str]:
    return [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]


def kill_worker_running(pid: int) -> tuple[str, list[int]]:
    """SIGKILL the `prefect worker start` process above ``pid`` and every process under it; its name and the pids."""
    import psutil

    process = psutil.Process(pid)
    worker = next(p for p in [process, *process.parents()] if {"worker", "start"} <= set(p.cmdline()))
    cmdline = worker.cmdline()
    victims = [worker, *worker.children(recursive=True)]
    assert pid in {v.pid for v in victims}
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=15)
    return cmdline[cmdline.index("--name") + 1], [v.pid for v in victims]


def start_and_kill_after_first_checkpoint(stack, s3, bucket: str, kill) -> dict:
    """Trigger train-all on tiny-resume, wait for the child's first checkpoint in the store, ``kill(pid)`` it."""
    from prefect.deployments import run_deployment

    started = time.monotonic()
    parent = stack.run_with_api(
        run_deployment,
        "train-all/nightly",
        timeout=0,
        as_subflow=False,
        parameters={"config_set": str(SETS / "tiny-resume.yaml"), "heartbeat_timeout_s": TIMEOUT_S},
    )
    deadline = time.monotonic() + 300
    while True:
        children = children_of(stack, str(parent.id))
        child = children[0] if children else None
        if child and child["state_type"] == "RUNNING" and child.get("infrastructure_pid"):
            run_id = child["parameters"]["run_id"]
            if any(k.endswith("/checkpoint.json") for k in keys(s3, bucket, f"nightly/checkpoints/{run_id}/")):
                break
        assert time.monotonic() < deadline, children
        assert not child or child["state_type"] not in ("COMPLETED", "FAILED", "CRASHED"), child
        time.sleep(0.3)
    killed = kill(int(child["infrastructure_pid"]))
    killed_at = time.monotonic()
    assert not keys(s3, bucket, f"nightly/runs/{run_id}/"), "the run finished before the kill: make it train longer"
    markers = [k for k in keys(s3, bucket, f"nightly/checkpoints/{run_id}/") if k.endswith("/checkpoint.json")]
    # The newest checkpoint (keys sort as text: step 100 before step 50), the one a resumed run starts from.
    step = max(json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read())["step"] for k in markers)
    assert step > 0
    return {
        "parent": str(parent.id),
        "child": child,
        "run_id": run_id,
        "step": step,
        "killed": killed,
        "started": started,
        "killed_at": killed_at,
    }


def wait_final(stack, flow_run_id: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while (run := flow_run(stack, flow_run_id))["state_type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, children_of(stack, flow_run_id)
        time.sleep(2)
    return run


def test_a_killed_worker_child_is_detected_redispatched_and_resumes_from_its_checkpoint(crash_stack, s3_endpoint):
    stack, bucket = crash_stack
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    # The child trains; after its first checkpoint in the store its worker and everything under it are killed.
    kill = start_and_kill_after_first_checkpoint(stack, s3, bucket, kill_worker_running)
    child, run_id, checkpoint_step = kill["child"], kill["run_id"], kill["step"]
    killed_worker, pids = kill["killed"]
    time.sleep(5)
    assert flow_run(stack, child["id"])["state_type"] == "RUNNING"  # nobody is left to report the crash

    final = wait_final(stack, kill["parent"])
    attempts = children_of(stack, kill["parent"])
    assert final["state_type"] == "COMPLETED", (
        final["state"],
        [(c["name"], c["state_type"], c["state"]["message"]) for c in attempts],
    )

    # Two flow runs of the one config, same run id: the killed one marked crashed by the parent, the second completed.
    assert [c["name"] for c in attempts] == ["train-model-tiny-resume"] * 2
    first, second = attempts
    assert first["id"] == child["id"] and first["state_type"] == "CRASHED"
    assert "no heartbeat" in first["state"]["message"]
    assert second["state_type"] == "COMPLETED" and second["parameters"]["run_id"] == run_id
    done_after = time.monotonic() - kill["killed_at"]
    # It resumed from the checkpoint of the killed run (not from step 0), on the surviving worker.
    from emotion_core.runs import read_run
    from emotion_core.store import open_store

    store = open_store(f"s3://{bucket}/nightly", endpoint_url=s3_endpoint)
    manifest = read_run(store.run_folder(run_id)).manifest
    assert manifest["resumed_from_step"] == checkpoint_step
    assert manifest["timing"]["steps"] == 1000
    assert manifest["orchestration"]["flow_run_id"] == second["id"]
    assert manifest["orchestration"]["worker"] != killed_worker
    assert not keys(s3, bucket, f"nightly/checkpoints/{run_id}/")  # published: checkpoints deleted

    # The children table records the attempts.
    table = api(
        stack,
        "/artifacts/filter",
        {"artifacts": {"key": {"any_": ["children-tiny-resume"]}, "flow_run_id": {"any_": [kill["parent"]]}}},
    )
    rows = table[0]["data"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert rows[0]["attempts"] == 2 and rows[0]["state"] == "COMPLETED" and child["id"] in rows[0]["earlier_attempts"]
    print(
        f"\nkilled {killed_worker} (pids {pids}) after the checkpoint at step {checkpoint_step}, "
        f"{kill['killed_at'] - kill['started']:.0f}s after the trigger; parent done {done_after:.0f}s after the kill"
    )


def test_a_child_whose_process_is_killed_is_reported_crashed_and_redispatched_at_once(crash_stack, s3_endpoint):
    """Only the flow-run process dies; its worker reports CRASHED and the parent re-dispatches at once (no heartbeat
    wait)."""
    import psutil

    stack, bucket = crash_stack
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)

    def kill_process(pid: int) -> None:
        process = psutil.Process(pid)
        victims = [process, *process.children(recursive=True)]
        for victim in victims:
            victim.kill()
        psutil.wait_procs(victims, timeout=15)

    kill = start_and_kill_after_first_checkpoint(stack, s3, bucket, kill_process)
    final = wait_final(stack, kill["parent"])
    attempts = children_of(stack, kill["parent"])
    assert final["state_type"] == "COMPLETED", (
        final["state"],
        [(c["name"], c["state_type"], c["state"]["message"]) for c in attempts],
    )
    first, second = attempts
    assert first["state_type"] == "CRASHED" and "no heartbeat" not in (
        first["state"]["message"] or ""
    )  # the worker said so
    # Re-dispatched as soon as the worker reported it, well before a heartbeat timeout could have fired.
    from datetime import datetime

    crashed_at = datetime.fromisoformat(first["end_time"] or first["state"]["timestamp"])
    assert (datetime.fromisoformat(second["created"]) - crashed_at).total_seconds() < TIMEOUT_S / 2
    from emotion_core.runs import read_run
    from emotion_core.store import open_store

    store = open_store(f"s3://{bucket}/nightly", endpoint_url=s3_endpoint)
    assert read_run(store.run_folder(kill["run_id"])).manifest["resumed_from_step"] == kill["step"]
