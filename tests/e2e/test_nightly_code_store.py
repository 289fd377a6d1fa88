"""End to end: `train-all/nightly` deployed with the fleet file: parent and children pull the code from S3.

`emotion stack up --code-store` on the session server (moto S3 over HTTP): the deploy pushes the code, each flow
run pulls it into its worker's fresh temporary folder and runs from there; the manifests name the code version.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import httpx
import pytest

pytestmark = pytest.mark.slow

SETS = Path(__file__).resolve().parents[1] / "data" / "sets"
PULL_STEP = "prefect_aws.deployments.steps.pull_from_s3"


def _post(stack, path: str, body: dict) -> list[dict]:
    response = httpx.post(f"{stack.api_url}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_nightly_runs_on_code_pulled_from_the_code_store(prefect_stack, s3_endpoint, data_dir, tmp_path, workers_on_s3):
    from emotion_cli.stack import trigger
    from emotion_core.provenance import code_version
    from emotion_core.runs import read_run
    from emotion_core.store import open_store

    code_bucket = f"code-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=code_bucket)
    prefect_stack.code_store = f"s3://{code_bucket}/emotion"
    try:
        with workers_on_s3(prefect_stack, s3_endpoint, data_dir, tmp_path / "cache", "code") as bucket:
            run = trigger(prefect_stack, "train-all/nightly", {"config_set": str(SETS / "tiny-pair.yaml")}, 600)
            deployment = httpx.get(f"{prefect_stack.api_url}/deployments/name/train-model/gpu").json()
    finally:
        prefect_stack.code_store = None
        prefect_stack.deploy()  # the other tests' workers run this checkout (root prefect.yaml)
    assert run.state.is_completed(), run.state.message
    assert [list(step) for step in deployment["pull_steps"]] == [[PULL_STEP]]
    assert deployment["pull_steps"][0][PULL_STEP]["bucket"] == code_bucket

    children = _post(prefect_stack, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [str(run.id)]}}})
    assert len(children) == 2 and all(c["state_type"] == "COMPLETED" for c in children)
    assert all(isinstance(c["parameters"]["config"], dict) for c in children)
    # Parent and children ran the pull step, then the code it brought.
    for flow_run_id in [str(run.id)] + [c["id"] for c in children]:
        first_logs = _post(
            prefect_stack,
            "/logs/filter",
            {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 50},
        )
        messages = [log["message"] for log in first_logs]
        assert "Deployment step 'pull_from_s3' completed successfully" in messages, messages
    store = open_store(f"s3://{bucket}/nightly", endpoint_url=s3_endpoint)
    manifests = [read_run(store.run_folder(c["parameters"]["run_id"])).manifest for c in children]
    assert {m["code_version"] for m in manifests} == {code_version()}
