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
