"""End to end: placement by GPU count through the real `train-all/nightly` deployment.

The session's Prefect server, the project's pools and deployments, the two default gpu-pool workers
(one-card stand-ins) and one more started as a 2-card worker (`gpu_workers.py --gpus-per-worker 2`
on CPU: it serves the 2-card queues only). Needs `resources.gpus` in the config schema.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from emotion_core.config import ResourcesConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        "gpus" not in ResourcesConfig.model_fields,
        reason="resources.gpus is not in the config schema yet (issue 13, items 1-3)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
SETS = REPO / "tests" / "data" / "sets"


@pytest.fixture(scope="module")
def two_card_stack(prefect_stack, s3_endpoint, data_dir, tmp_path_factory, workers_on_s3):
    """The e2e workers plus one CPU worker standing in for a 2-card worker; yields (stack, bucket)."""
    from emotion_cli.stack import _stop_group

    with workers_on_s3(prefect_stack, s3_endpoint, data_dir, tmp_path_factory.mktemp("cache"), "x2") as bucket:
        log = open(tmp_path_factory.mktemp("x2-worker") / "worker.log", "ab")
        worker = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "deployments" / "gpu_workers.py"),
                "--pool",
                "gpu",
                "--cpu-workers",
                "1",
                "--gpus-per-worker",
                "2",
                "--name-prefix",
                "x2",
            ],
            env=prefect_stack.env(),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            prefect_stack.wait_for_workers({"gpu": 3})
            yield prefect_stack, bucket
        finally:
            _stop_group(worker.pid)
            log.close()


def children_of(stack, parent_id: str) -> list[dict]:
    response = httpx.post(
        f"{stack.api_url}/flow_runs/filter",
        json={"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def test_a_two_gpu_config_reaches_a_two_card_worker(two_card_stack, s3_endpoint):
    from emotion_cli.stack import trigger
    from emotion_core.runs import read_run
    from emotion_core.store import open_store

    stack, bucket = two_card_stack
    run = trigger(stack, "train-all/nightly", {"config_set": str(SETS / "tiny-two-gpus.yaml")}, timeout_s=600)
    assert run.state.is_completed(), run.state.message
    (child,) = children_of(stack, str(run.id))
    assert child["state_type"] == "COMPLETED" and child["work_pool_name"] == "gpu"
    assert child["work_queue_name"] == "gpu-large-x2"
    assert child["job_variables"] == {"gpu_count": 2, "gpu_memory_mib_gt": "2047"}  # nvidia.com/gpu; 2 GiB cards
    store = open_store(f"s3://{bucket}/nightly", endpoint_url=s3_endpoint)
    manifest = read_run(store.run_folder(child["parameters"]["run_id"])).manifest
    # Trained by the 2-card worker, the only one serving gpu-large-x2 (the default ones serve 1-card queues).
    assert manifest["orchestration"]["worker"].startswith("x2-"), manifest["orchestration"]
    assert manifest["orchestration"]["work_queue"] == "gpu-large-x2"


def test_a_config_asking_for_more_cards_than_any_queue_fails_before_dispatch(two_card_stack):
    from emotion_cli.stack import trigger

    stack, _ = two_card_stack
    run = trigger(stack, "train-all/nightly", {"config_set": str(SETS / "too-many-gpus.yaml")}, timeout_s=300)
    assert run.state.is_failed()
    message = run.state.message or ""
    assert "config 'tiny-ffnn-x8': resources.gpus=8" in message and "fits no work queue" in message, message
    assert "gpu-large-x4 (4 x >= 40 GiB)" in message, message
    assert children_of(stack, str(run.id)) == []  # not even the config that fits was dispatched
