"""Flow ``predict`` (deployment ``predict/batch``) on the session's real Prefect server."""

from __future__ import annotations

import pytest
from batch_helpers import promote, texts_frame, train_tiny_run

pytestmark = pytest.mark.slow


def test_the_flow_scores_a_file_in_the_store_with_the_champion(prefect_server, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from emotion_core.store import LocalStore
    from flows.predict_batch import predict_batch

    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))
    store = LocalStore(tmp_path / "store")
    run_id = train_tiny_run(tmp_path, store)
    promote(store, run_id)
    (store.root / "data").mkdir()
    texts_frame(1200).write_parquet(store.root / "data/reviews.parquet")

    result = predict_batch(
        input_key="data/reviews.parquet", run="champion:tabular", store=str(store.root), chunk_rows=500
    )
    assert result["run_id"] == run_id and (result["rows"], result["chunks"], result["computed"]) == (1200, 3, 3)
    assert result["output_key"] == "data/reviews.predictions.parquet"
    import polars as pl

    out = pl.read_parquet(store.root / "data/reviews.predictions.parquet")
    assert out.columns == ["id", "joy", "anger", "joy_prob", "anger_prob"] and out["id"][1199] == "t1199"
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["predict-data/reviews.parquet"]))
        )
    assert [r.state.type.value for r in runs] == ["COMPLETED"]


def test_the_local_stack_deploys_predict_batch_on_the_gpu_pool(prefect_server):
    from prefect.client.orchestration import get_client

    prefect_server.apply_pools()
    prefect_server.deploy()  # `prefect deploy --all` of prefect.yaml, as `emotion stack up`
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("predict/batch")
    assert deployment.work_pool_name == "gpu" and deployment.work_queue_name == "gpu-small"
    assert deployment.entrypoint == "flows/predict_batch.py:predict_batch"
    assert set(deployment.parameter_openapi_schema["required"]) == {"input_key", "run"}


def test_the_cli_on_fleet_creates_a_predict_batch_flow_run_with_its_parameters(prefect_server, tmp_path):
    """``emotion predict-batch --on-fleet`` (real CLI) schedules a run of the deployment and does not wait for it.

    The deployment is registered here without a worker when an earlier test did not deploy it: the flow run
    stays scheduled, and its parameters are what the worker would get."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment_id = client.read_deployment_by_name("predict/batch").id
        except ObjectNotFound:
            flow_id = client.create_flow_from_name("predict")
            deployment_id = client.create_deployment(flow_id=flow_id, name="batch")
    emotion = str(Path(sys.executable).with_name("emotion"))
    done = subprocess.run(
        [
            emotion,
            "predict-batch",
            "data/x.parquet",
            "--run",
            "champion:tabular",
            "--store",
            str(tmp_path / "s"),
            "--chunk-rows",
            "123",
            "--id-column",
            "ID",
            "--no-calibration",
            "--on-fleet",
            "--port",
            str(prefect_server.port),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=prefect_server.env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    flow_run_id = re.search(r"flow run ([0-9a-f-]{36}) of predict/batch", done.stdout).group(1)
    assert f"{prefect_server.ui_url}/runs/flow-run/{flow_run_id}" in done.stdout
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.deployment_id == deployment_id
    assert flow_run.parameters == {
        "input_key": "data/x.parquet",
        "run": "champion:tabular",
        "store": (tmp_path / "s").resolve().as_uri(),
        "chunk_rows": 123,
        "output_key": None,
        "calibration": False,
        "text_column": None,
        "id_column": "ID",
    }
