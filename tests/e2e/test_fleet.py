"""Issue 15 end to end: `train-all/nightly` on a fleet that shares nothing but the Prefect API and the bucket.

- The Prefect server runs on PostgreSQL (a throwaway cluster, ``postgres_url``).
- `emotion stack up --code-store` pushes the code to the bucket (moto S3 over HTTP); GoEmotions is pushed there
  once with `emotion data push`'s ``push_dataset`` and the configs name it by its sha256 (``data.store_ref``).
- Two gpu-pool workers run through ``tests/isolation.py``: a mount namespace where the checkout (but for the
  virtualenv, read-only), the data folder and the pytest folders are hidden, as uid 65534, from empty working
  directories with their own HOME and caches, and an audit hook that logs every file they open.
- The orchestration worker (the parent) starts from an empty folder too and pulls the code the same way.
The children pull code and data from the bucket, train, evaluate and explain; the parent gathers, compares and
publishes. Manifests name the code version and the worker; no worker opened a path in the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import httpx
import pytest
from helpers import free_port, gpu_workers_module, pause_nightly_schedule
from isolation import cleanup, isolated_command, isolation_kwargs, leaked, read_audit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolation harness needs root (mount namespace, setpriv)"),
]

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
SETS = REPO / "tests" / "data" / "sets"
PULL_DONE = "Deployment step 'pull_from_s3' completed successfully"
PUSHED_TOP_LEVEL = {"emotion_core", "tasks", "flows", "emotion_cli", "deployments", "pyproject.toml"}


def _post(stack, path: str, body: dict) -> list[dict]:
    response = httpx.post(f"{stack.api_url}{path}", json=body, timeout=60)
    response.raise_for_status()
    return response.json()


def _worker_env(stack, s3_endpoint: str, bucket: str) -> dict[str, str]:
    """All a worker machine is given: the API, the store and its credentials (no checkout, no data folder)."""
    return {
        "PREFECT_API_URL": stack.api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "EMOTION_STORE": f"s3://{bucket}/nightly",
        "EMOTION_S3_ENDPOINT_URL": s3_endpoint,
        **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
    }


@pytest.fixture(scope="module")
def fleet(postgres_url, s3_endpoint, data_dir, tmp_path_factory):
    """Server on PostgreSQL, code and GoEmotions in the bucket, a parent worker and two isolated gpu workers."""
    import flows  # noqa: F401
    from emotion_cli.stack import Stack, _stop_group
    from emotion_core.data.pushed import push_dataset
    from emotion_core.store import open_store
    from flows.dispatch import load_pools

    root = tmp_path_factory.mktemp("fleet")
    bucket = f"fleet-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    stack = Stack(
        port=free_port(),
        state_dir=root / "stack",
        database=postgres_url,
        extra_env={
            "PREFECT_HOME": str(root / "deployer-home"),
            "EMOTION_S3_ENDPOINT_URL": s3_endpoint,
            "EMOTION_STORE": f"s3://{bucket}/nightly",
        },
    )
    stack.code_store = f"s3://{bucket}/code"
    started, workers, commands = [], {}, []
    try:
        stack.start_server()
        stack.apply_pools()
        stack.deploy()  # the fleet file: pushes the code to s3://<bucket>/code/<code version>
        pause_nightly_schedule(stack)  # no real nightly on these workers if the test spans the schedule's hour
        pushed = push_dataset(data_dir / "goemotions", open_store(f"s3://{bucket}/nightly", endpoint_url=s3_endpoint))
        env = _worker_env(stack, s3_endpoint, bucket)

        parent_dir = root / "parent"
        for sub in ("work", "home", "tmp"):
            (parent_dir / sub).mkdir(parents=True)
        parent_env = {
            **env,
            "PATH": f"{VENV / 'bin'}:/usr/bin:/bin",
            "HOME": str(parent_dir / "home"),
            "TMPDIR": str(parent_dir / "tmp"),
            "PREFECT_HOME": str(parent_dir / "home" / "prefect"),
            "EMOTION_CACHE_DIR": str(parent_dir / "home" / "cache"),
        }
        argv = [str(VENV / "bin" / "prefect"), "worker", "start", "--pool", "orchestration", "--type", "process"]
        with open(root / "parent.log", "ab") as log:
            started.append(
                subprocess.Popen(
                    [*argv, "--name", "fleet-orchestration"],
                    cwd=parent_dir / "work",
                    env=parent_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

        queues = load_pools()["gpu"]["queues"]
        for argv, extra in gpu_workers_module().worker_commands("gpu", queues, [], cpu_workers=2, prefix="fleet"):
            name = extra["EMOTION_WORKER_NAME"]
            folder = root / name
            basetemp = tmp_path_factory.getbasetemp()
            kwargs = isolation_kwargs(folder, checkout=REPO, venv=VENV, data_dir=data_dir, basetemp=basetemp)
            command = isolated_command(argv, env={**env, **extra}, **kwargs)
            commands.append(command)
            with open(folder.with_suffix(".log"), "ab") as log:
                started.append(
                    subprocess.Popen(
                        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
                    )
                )
            workers[name] = kwargs
        stack.wait_for_workers({"orchestration": 1, "gpu": 2}, timeout_s=180)
        yield {"stack": stack, "bucket": bucket, "dataset": pushed, "workers": workers, "root": root}
    finally:
        for process in started:
            _stop_group(process.pid)
        for command in commands:
            cleanup(command)
        stack.down()


def test_nightly_on_a_fleet_that_shares_only_the_api_and_the_bucket(fleet, postgres_url, s3_endpoint):
    from emotion_cli.stack import trigger
    from emotion_core.provenance import code_version
    from emotion_core.runs import read_run
    from emotion_core.store import open_store

    stack, bucket = fleet["stack"], fleet["bucket"]
    overrides = {"data": {"store_ref": f"sha256:{fleet['dataset'].dataset_id}"}}
    started = time.monotonic()
    run = trigger(stack, "train-all/nightly", {"config_set": str(SETS / "tiny-pair.yaml"), "overrides": overrides}, 600)
    wall = time.monotonic() - started
    print(f"\ntrain-all/nightly on tiny-pair, fleet (PostgreSQL, code and data from S3, isolated workers): {wall:.1f}s")
    logs = {name: (fleet["root"] / f"{name}.log").read_text()[-3000:] for name in fleet["workers"]}
    assert run.state.is_completed(), (run.state.message, logs)

    children = _post(stack, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [str(run.id)]}}})
    assert len(children) == 2 and all(c["state_type"] == "COMPLETED" and c["work_pool_name"] == "gpu" for c in children)
    assert all(isinstance(c["parameters"]["config"], dict) for c in children)  # content, not a path
    # Parent and children pulled the code from the bucket before running it.
    for flow_run_id in [str(run.id)] + [c["id"] for c in children]:
        body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 50}
        assert PULL_DONE in [log["message"] for log in _post(stack, "/logs/filter", body)]

    # The deploy pushed the packages and deployments under the code version, nothing else (.venv, .git, tests, data).
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    folder = f"code/{code_version().removeprefix('sha256:')}/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
    pushed = {o["Key"].removeprefix(folder) for page in pages for o in page.get("Contents", [])}
    assert "flows/train_model.py" in pushed and {p.split("/")[0] for p in pushed} == PUSHED_TOP_LEVEL
    assert not [p for p in pushed if "__pycache__" in p or p.endswith(".pyc")]

    # Each run: this code version, trained by one of the isolated workers on the pushed data, analysed there.
    store = open_store(f"s3://{bucket}/nightly", endpoint_url=s3_endpoint)
    manifests = [read_run(store.run_folder(c["parameters"]["run_id"])).manifest for c in children]
    assert {m["code_version"] for m in manifests} == {code_version()}
    assert sorted(m["orchestration"]["worker"] for m in manifests) == sorted(fleet["workers"])
    assert all(fleet["dataset"].dataset_id in m["data"]["store_ref"] for m in manifests)
    for manifest in manifests:
        index = store.read_document(f"analysis/{manifest['run_id']}/analysis.json")
        assert index["context"]["worker"] == manifest["orchestration"]["worker"]
        assert {"calibration.json", "shap.json"} <= set(index["files"])
    reports = s3.list_objects_v2(Bucket=bucket, Prefix="nightly/reports/")
    assert any(o["Key"].endswith("/summary.json") for o in reports.get("Contents", []))
    # The server is PostgreSQL: the three flow runs are rows of its flow_run table.
    ids = [str(run.id)] + [c["id"] for c in children]
    assert sorted(state for _, state in flow_run_states(postgres_url, ids)) == ["COMPLETED"] * 3

    # The workers ran as uid 65534 and opened nothing in the checkout (but the virtualenv), yet ran pulled code.
    for name, kwargs in fleet["workers"].items():
        assert (kwargs["home"] / ".cache" / "emotion").stat().st_uid == 65534, name
        audit = read_audit(kwargs["audit_log"])
        pulled = [p for _, p in audit if p.endswith("flows/train_model.py")]
        assert pulled and not any(Path(p).is_relative_to(REPO) for p in pulled), (name, pulled[:3])
        assert leaked(**kwargs) == [], name


def flow_run_states(url: str, ids: list[str]) -> list[tuple[str, str]]:
    """(id, state type) of these flow runs, read from the server's PostgreSQL database directly."""
    import asyncio

    import asyncpg

    async def query():
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await connection.fetch(
                "SELECT id, state_type FROM flow_run WHERE id = ANY($1::uuid[])", [uuid.UUID(i) for i in ids]
            )
        finally:
            await connection.close()
        return [(str(r["id"]), str(r["state_type"])) for r in rows]

    return asyncio.run(query())
