"""The ``train-model`` flow with ``resources.gpus: 2``: the train task starts 2 gloo ranks with torchrun, rank 0's
run is published once into a (moto) S3 store, and rank 0's progress reaches the flow's progress artifact."""

from __future__ import annotations

import pytest
import yaml

from emotion_core.runs import read_run
from emotion_core.store import open_store

pytestmark = pytest.mark.slow


def test_train_model_flow_trains_on_two_ranks_and_publishes_one_run(prefect_server, s3_bucket, tmp_path, monkeypatch):
    from flows.train_model import train_model

    monkeypatch.setenv("EMOTION_DDP_TIMEOUT_S", "60")
    rows = ["id,text,joy,anger"] + [
        f"r{i},{'happy lovely' if i % 2 else 'calm'} {'mad' if i % 3 == 0 else 'fine'} day,{i % 2},{int(i % 3 == 0)}"
        for i in range(80)
    ]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = {
        "name": "ddp-flow",
        "model": {"family": "ffnn", "max_features": 200, "hidden_size": 8, "min_df": 1},
        "data": {"dataset": "tabular", "path": str(tmp_path / "train.csv"), "id_column": "id"},
        "training": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None},
        "resources": {"gpu_memory_gb": 2, "gpus": 2},
    }
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    uri = train_model(config=str(tmp_path / "ddp.yaml"), store=f"s3://{s3_bucket}/ddp", run_id="ddp-flow-run")
    assert uri == f"s3://{s3_bucket}/ddp/runs/ddp-flow-run"
    store = open_store(f"s3://{s3_bucket}/ddp")
    assert store.list_runs() == ["ddp-flow-run"] and store.latest_checkpoint("ddp-flow-run") is None
    manifest = read_run(uri).manifest
    assert manifest["distributed"]["world_size"] == 2 and len(manifest["distributed"]["ranks"]) == 2
    assert manifest["batching"]["per_device_batch_size"] == 4
