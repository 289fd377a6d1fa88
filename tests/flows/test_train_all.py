"""train-all in-process (local dispatch) on a real Prefect server: children, failure, comparison, artifacts."""

from __future__ import annotations

import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.slow

TINY_DATA = {"max_train_samples": 1500, "max_validation_samples": 400, "max_test_samples": 300}


@pytest.fixture
def tiny_set(tmp_path, repo):
    configs = repo / "deployments" / "configs"
    spec = {
        "name": "tiny",
        "overrides": {"data": TINY_DATA},
        "configs": [
            {"path": str(configs / "ffnn-tfidf.yaml"),
             "overrides": {"model": {"max_features": 5000, "hidden_size": 32}, "training": {"epochs": 2}}},
            {"path": str(configs / "minilm.yaml"),
             "overrides": {"name": "broken-model", "model": {"model": "no-such-org/no-such-model"}}},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_failed_child_is_reported_and_fails_the_parent(prefect_server, data_dir, tiny_set, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from emotion_core.errors import RunFailed
    from emotion_core.store import open_store
    from flows.train_all import train_all

    store_path = tmp_path / "store"
    with pytest.raises(RunFailed) as info:
        train_all(config_set=str(tiny_set), store=str(store_path))
    message = str(info.value)
    assert "1 of 2 configs failed" in message and "broken-model" in message and "no-such-org/no-such-model" in message

    # The healthy child's run is complete and the comparison lists both configs.
    store = open_store(store_path)
    runs = store.list_runs()
    assert len(runs) == 1 and runs[0].startswith("ffnn-tfidf-")
    reports = list((store_path / "reports").glob("tiny-*/comparison.csv"))
    assert len(reports) == 1
    table = pl.read_csv(reports[0])
    assert dict(zip(table["config"], table["status"])) == {"ffnn-tfidf": "completed", "broken-model": "failed"}
    assert table.filter(pl.col("config") == "ffnn-tfidf")["val_macro_f1"][0] > 0.05
    markdown = reports[0].with_name("comparison.md").read_text()
    assert "| ffnn-tfidf | completed |" in markdown and "| broken-model | failed |" in markdown

    # The comparison is published as Prefect artifacts on the run.
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["comparison-tiny", "comparison-table-tiny"])))
    kinds = {a.key: a.type for a in artifacts}
    assert kinds == {"comparison-tiny": "markdown", "comparison-table-tiny": "table"}
    assert any("broken-model" in str(a.data) for a in artifacts)


def test_train_model_flow_publishes_to_s3_with_a_credentials_block(prefect_server, data_dir, repo, s3_bucket, s3_endpoint, monkeypatch):
    """Credentials and endpoint from a saved Prefect AwsCredentials block; the run lands in S3."""
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from emotion_core.runs import read_run
    from emotion_core.store import open_store
    from flows.train_model import train_model

    AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                   aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint)).save("emotion-s3-test", overwrite=True)
    monkeypatch.setenv("EMOTION_AWS_CREDENTIALS_BLOCK", "emotion-s3-test")
    monkeypatch.delenv("EMOTION_S3_ENDPOINT_URL")  # the endpoint can only come from the block
    uri = train_model(config=str(repo / "deployments" / "configs" / "ffnn-tfidf.yaml"), store=f"s3://{s3_bucket}/nightly",
                      overrides={"data": TINY_DATA, "model": {"max_features": 5000, "hidden_size": 32}, "training": {"epochs": 1}})
    assert uri.startswith(f"s3://{s3_bucket}/nightly/runs/ffnn-tfidf-")
    monkeypatch.setenv("EMOTION_S3_ENDPOINT_URL", s3_endpoint)
    run = read_run(uri)
    assert run.manifest["config"]["data"]["max_train_samples"] == 1500
    assert run.manifest["timing"]["epochs_completed"] == 1.0
    assert open_store(f"s3://{s3_bucket}/nightly").list_runs() == [run.run_id]
