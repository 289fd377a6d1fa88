"""The isolation harness (tests/isolation.py) really isolates: a process worker run through it is "another machine".

1. A Python run through the harness is not root, cannot read the checkout or list the data folder, cannot
   import the project through the editable install, and still imports torch and Prefect from the venv.
2. A real Prefect process worker started through it runs a flow whose code it pulls from S3 (moto over HTTP,
   ``prefect_aws`` push_to_s3 / pull_from_s3 steps); the flow writes its result into the bucket, and the audit
   log of the worker and its flow run names no path in the checkout (other than the venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import boto3
import pytest
from isolation import cleanup, isolated_command, leaked, read_audit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolation harness needs root (mount namespace, setpriv)"),
]

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
FLOW = '''\
import json
import os

import boto3
from prefect import flow, runtime


@flow
def isolated(bucket: str, endpoint: str) -> str:
    """Write where it ran (uid, cwd, home) into the bucket; return the object's key."""
    report = {"uid": os.getuid(), "cwd": os.getcwd(), "home": os.environ["HOME"], "file": __file__}
    key = f"results/{runtime.flow_run.id}.json"
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=bucket, Key=key, Body=json.dumps(report))
    return key
'''


@pytest.fixture
def isolation(tmp_path, tmp_path_factory, data_dir):
    """Keyword arguments of ``isolated_command`` for one test (without argv and env)."""
    # Beside the checkout (sibling checkouts, ../shared/data) and this user's pytest folders are hidden too; the
    # tmpfs over ``pytest-of-<user>`` (0700) also lets the unprivileged user reach its workdir bound back below it.
    basetemp = tmp_path_factory.getbasetemp()
    hide = [data_dir, basetemp.parent if basetemp.parent.name.startswith("pytest-of-") else basetemp]
    if REPO.parent != Path(REPO.anchor):
        hide.append(REPO.parent)
    kwargs = dict(
        checkout=REPO,
        venv=VENV,
        workdir=tmp_path / "work",
        home=tmp_path / "home",
        audit_log=tmp_path / "audit.log",
        hide=hide,
    )
    return kwargs


def test_isolated_python_sees_no_checkout(isolation):
    kwargs = isolation
    probe = textwrap.dedent(
        f"""
        import json, os
        out = {{"uid": os.getuid(), "cwd": os.getcwd()}}
        try:
            out["readme"] = open({str(REPO / "README.md")!r}).read()[:20]
        except OSError as e:
            out["readme"] = type(e).__name__
        try:
            out["data"] = os.listdir({os.environ["EMOTION_DATA_DIR"]!r})
        except OSError as e:
            out["data"] = type(e).__name__
        try:
            import emotion_core
            out["emotion_core"] = emotion_core.__file__
        except ImportError as e:
            out["emotion_core"] = type(e).__name__
        import prefect, torch
        out["libs"] = [prefect.__version__, torch.__version__]
        print(json.dumps(out))
        """
    )
    cmd = isolated_command([str(VENV / "bin" / "python"), "-c", probe], env={}, **kwargs)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        cleanup(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["uid"] != 0
    assert Path(out["cwd"]) == kwargs["workdir"].resolve()
    assert out["readme"] == "FileNotFoundError"
    assert out["data"] in ([], "FileNotFoundError")  # an empty tmpfs where the data folder (or its parent) was
    assert out["emotion_core"] == "ModuleNotFoundError"
    assert out["libs"][0].startswith("3.")
    # The audit log sees the attempts: the check of test 2 can fail.
    assert str(REPO / "README.md") in leaked(**kwargs)
    assert any(path.startswith(str(VENV)) for _, path in read_audit(kwargs["audit_log"]))


def test_isolated_worker_runs_flow_pulled_from_s3(isolation, prefect_stack, s3_endpoint, tmp_path, monkeypatch):
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect_aws.deployments.steps import push_to_s3

    from emotion_cli.stack import _stop_group, trigger

    kwargs = isolation
    bucket, pool, folder = f"iso-{uuid.uuid4().hex[:10]}", f"iso-{uuid.uuid4().hex[:8]}", "code/isolated"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    source = tmp_path / "flow-src"
    source.mkdir()
    (source / "iso_flow.py").write_text(FLOW)
    monkeypatch.chdir(source)  # push_to_s3 uploads the current folder
    push_to_s3(bucket, folder, client_parameters={"endpoint_url": s3_endpoint})

    pull = {"bucket": bucket, "folder": folder, "client_parameters": {"endpoint_url": s3_endpoint}}

    def create() -> None:
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            flow_id = client.create_flow_from_name("isolated")
            client.create_deployment(
                flow_id=flow_id,
                name="iso",
                work_pool_name=pool,
                entrypoint="iso_flow.py:isolated",
                pull_steps=[{"prefect_aws.deployments.steps.pull_from_s3": pull}],
            )

    prefect_stack.run_with_api(create)
    env = {
        "PREFECT_API_URL": prefect_stack.api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
        **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
    }
    argv = [str(VENV / "bin" / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", pool]
    cmd = isolated_command(argv, env=env, **kwargs)
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        worker = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)  # fmt: skip
    try:
        prefect_stack.wait_for_workers({pool: 1}, timeout_s=60)
        run = trigger(prefect_stack, "isolated/iso", {"bucket": bucket, "endpoint": s3_endpoint}, timeout_s=90)
    finally:
        _stop_group(worker.pid)
        cleanup(cmd)
    assert run.state.is_completed(), f"{run.state}; worker log:\n{log.read_text()[-4000:]}"

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="results/").get("Contents", [])]
    assert keys == [f"results/{run.id}.json"]
    report = json.loads(s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read())
    assert report["uid"] != 0
    assert Path(report["home"]) == kwargs["home"].resolve()
    pulled = Path(report["file"])  # the code came from the folder the flow run pulled, in the worker's own TMPDIR
    assert pulled.is_relative_to(kwargs["home"].resolve()) and not pulled.is_relative_to(REPO), pulled

    audit = read_audit(kwargs["audit_log"])
    assert any(path.endswith("iso_flow.py") for _, path in audit), "the flow run's process was not audited"
    assert leaked(**kwargs) == []
