"""Code on the workers: the fleet deployment file pushes the code to S3 and a worker folder pulls it; children get
config content and refuse to run other code than their parent."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from emotion_core.errors import CodeVersionMismatch, ConfigError
from emotion_core.provenance import code_version

REPO = Path(__file__).resolve().parents[2]
EMOTION = str(Path(sys.executable).with_name("emotion"))
PUSHED_TOP_LEVEL = {"emotion_core", "tasks", "flows", "emotion_cli", "deployments", "pyproject.toml"}


def test_the_fleet_file_has_the_root_deployments_with_s3_push_and_pull():
    root = yaml.safe_load((REPO / "prefect.yaml").read_text())
    fleet = yaml.safe_load((REPO / "deployments" / "fleet" / "prefect.yaml").read_text())
    assert fleet["deployments"] == root["deployments"]  # one set of deployments, two ways to ship the code
    assert list(fleet["push"][0]) == ["prefect_aws.deployments.steps.push_to_s3"]
    pull = fleet["pull"][0]["prefect_aws.deployments.steps.pull_from_s3"]
    assert pull["bucket"] == "{{ push-code.bucket }}" and pull["folder"] == "{{ push-code.folder }}"


@pytest.mark.parametrize("uri", ["file:///tmp/code", "s3://", "/tmp/code"])
def test_stack_up_refuses_a_code_store_that_is_not_s3_before_starting_anything(uri, tmp_path):
    from helpers import assert_refused

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    result = subprocess.run(
        [EMOTION, "stack", "up", "--port", "1", "--code-store", uri],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_refused(result, f"code store '{uri}': expected s3://bucket[/prefix]")
    assert "--code-store" in subprocess.run([EMOTION, "stack", "up", "--help"], capture_output=True, text=True).stdout


def test_a_config_mapping_is_validated_like_a_file_naming_the_field():
    from flows.train_model import resolve_config

    content = yaml.safe_load((REPO / "tests" / "data" / "sets" / "tiny-ffnn.yaml").read_text())
    assert resolve_config(content, {"training": {"epochs": 1}}).training.epochs == 1
    with pytest.raises(ConfigError, match=r"(?s)config 'tiny-ffnn' \(parameter 'config'\).*field 'training.epochs'"):
        resolve_config({**content, "training": {"epochs": -1}})


def test_runs_whose_manifest_names_other_code_are_failed_rows(tmp_path):
    """The parent's check: other code -> failed outcome naming the run and both versions; no field -> unknown, kept."""
    from emotion_core.records import ChildOutcome
    from flows.train_all import check_code_versions

    manifests = {"old-1": {"code_version": "sha256:old"}, "legacy-1": {}, "same-1": {"code_version": code_version()}}
    for run_id, manifest in manifests.items():
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        (tmp_path / "runs" / run_id / "manifest.json").write_text(json.dumps({"run_id": run_id, **manifest}))
    outcomes = [ChildOutcome(config=r.split("-")[0], run_id=r, state="COMPLETED") for r in manifests]
    outcomes.append(ChildOutcome("gone", "gone-1", "FAILED", "boom"))
    checked = check_code_versions(outcomes, str(tmp_path), code_version())
    assert [o.failed for o in checked] == [True, False, False, True]
    assert checked[0].error == (
        f"run old-1 was trained by code sha256:old, this train-all runs {code_version()}: not compared"
    )
    assert checked[3].error == "boom"


@pytest.mark.slow
def test_a_child_on_other_code_fails_before_training(prefect_server, tmp_path):
    from flows.train_model import train_model

    store = tmp_path / "store"
    config = REPO / "tests" / "data" / "sets" / "tiny-ffnn.yaml"
    state = train_model(config=str(config), store=str(store), code_version="sha256:parent", return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, CodeVersionMismatch)
    assert str(error).startswith(f"this worker runs code {code_version()}, its parent train-all runs sha256:parent")
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())  # nothing trained or published


@pytest.mark.slow
def test_fleet_deploy_pushes_the_code_and_an_empty_worker_folder_pulls_and_imports_it(
    prefect_server, s3_endpoint, tmp_path
):
    """`prefect deploy` of the fleet file (as `emotion stack up --code-store`) on the session's server, moto S3."""
    import boto3
    from prefect.client.orchestration import get_client

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"code-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    stack = dataclasses.replace(
        prefect_server,
        code_store=f"s3://{bucket}/emotion",
        extra_env={**prefect_server.extra_env, "EMOTION_S3_ENDPOINT_URL": s3_endpoint},
    )
    stack.apply_pools()
    try:
        assert stack.deploy() == f"s3://{bucket}/emotion/{code_version().removeprefix('sha256:')}/ (pushed now)"
        with get_client(sync_client=True) as client:
            pull_steps = client.read_deployment_by_name("train-model/gpu").pull_steps
    finally:
        prefect_server.deploy()  # the other tests' workers run this checkout (root prefect.yaml)
    folder = f"emotion/{code_version().removeprefix('sha256:')}"
    assert [list(step) for step in pull_steps] == [["prefect_aws.deployments.steps.pull_from_s3"]]
    assert pull_steps[0]["prefect_aws.deployments.steps.pull_from_s3"]["bucket"] == bucket
    assert pull_steps[0]["prefect_aws.deployments.steps.pull_from_s3"]["folder"] == folder

    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page["Contents"]]
    relative = {k.removeprefix(folder + "/") for k in keys}
    assert all(k.startswith(folder + "/") for k in keys)
    assert "flows/train_model.py" in relative and "deployments/sets/gpu.yaml" in relative
    assert {r.split("/")[0] for r in relative} == PUSHED_TOP_LEVEL  # no .venv, .emotion, .git, tests, docs, data
    assert not [r for r in relative if "__pycache__" in r or r.endswith(".pyc")]

    # A worker: an empty folder, the deployment's pull steps, then Prefect loads the entrypoint from there.
    # `python -I`: no PYTHONPATH, no cwd on sys.path: only Prefect's loader can make the pulled code win.
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    script = (
        "import asyncio, json, sys\n"
        "from prefect.deployments.steps.core import run_steps\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "asyncio.run(run_steps(json.loads(sys.argv[1])))\n"
        "flow = load_flow_from_entrypoint('flows/train_model.py:train_model')\n"
        "import emotion_core, tasks, flows\n"
        "from emotion_core.provenance import code_version\n"
        "print(json.dumps({'flow': flow.name, 'files': [m.__file__ for m in (emotion_core, tasks, flows)],"
        " 'code_version': code_version()}))\n"
    )
    env = {**os.environ, "EMOTION_S3_ENDPOINT_URL": s3_endpoint}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, json.dumps(pull_steps)],
        cwd=worker_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["flow"] == "train-model"
    assert loaded["files"] == [str(worker_dir / p / "__init__.py") for p in ("emotion_core", "tasks", "flows")]
    assert loaded["code_version"] == code_version()  # the parent's check passes on the pulled code
    assert (worker_dir / "flows" / "train_model.py").is_file()
    assert not any((worker_dir / name).exists() for name in (".venv", ".emotion", ".git", "tests", "docs"))
