"""Issue 15 item 3: deployment dispatch needs a store every worker reaches, checked before any child exists.

On the session's real Prefect server: a ``train-model`` deployment on a pool of this test alone (no worker
ever picks its runs), and ``train-all`` with ``dispatch="deployment"`` run in this process. Had a child been
dispatched, ``wait_for_children`` (replaced to stop at once) would be reached and the API would list it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import httpx
import pytest

from emotion_core.errors import StoreError

pytestmark = pytest.mark.slow

TINY_SET = Path(__file__).resolve().parents[1] / "data" / "sets" / "tiny-pair.yaml"


class Dispatched(Exception):
    """Raised where train-all starts waiting for its children: they were dispatched."""


@pytest.fixture(scope="module")
def child_deployment(prefect_server):
    """``train-model/<unique>`` on a process pool of its own; yields its name. Its flow runs are deleted after."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    name = f"store-rule-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        flow_id = client.create_flow_from_name("train-model")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=name, work_pool_name=name, entrypoint="flows/train_model.py:train_model"
        )
    yield f"train-model/{name}", deployment_id
    with get_client(sync_client=True) as client:
        for run in child_runs(prefect_server, deployment_id):
            client.delete_flow_run(run["id"])
        client.delete_deployment(deployment_id)
        client.delete_work_pool(name)


def child_runs(stack, deployment_id) -> list[dict]:
    response = httpx.post(
        f"{stack.api_url}/flow_runs/filter", json={"deployments": {"id": {"any_": [str(deployment_id)]}}}, timeout=30
    )
    response.raise_for_status()
    return response.json()


@pytest.fixture
def stop_at_dispatch(monkeypatch):
    import flows.train_all

    def reached(*args, **kwargs):
        raise Dispatched("children were dispatched")

    monkeypatch.setattr(flows.train_all, "wait_for_children", reached)
    monkeypatch.delenv("EMOTION_SHARED_FILESYSTEM", raising=False)
    monkeypatch.delenv("EMOTION_S3_CREATE_BUCKET", raising=False)


def one_queue() -> dict:
    return {"gpu-any": {"min_gpu_memory_gb": 80, "gpus": 1}}  # every config of the set fits it


def test_local_store_with_deployment_dispatch_fails_before_any_child(
    prefect_server, child_deployment, stop_at_dispatch, tmp_path, monkeypatch
):
    from flows.train_all import train_all

    deployment, deployment_id = child_deployment
    for store in (str(tmp_path / "store"), f"file://{tmp_path / 'store'}"):
        with pytest.raises(
            StoreError,
            match=r"is a local folder, but deployment dispatch .* use an object store "
            r"\(--store s3://",
        ):
            train_all(
                config_set=str(TINY_SET),
                store=store,
                dispatch="deployment",
                child_deployment=deployment,
                queues=one_queue(),
            )
    assert child_runs(prefect_server, deployment_id) == []  # nothing dispatched
    assert not (tmp_path / "store").exists()  # nor written
    # Declared shared (the parameter, or the environment the embedded stack sets): dispatched as before.
    with pytest.raises(Dispatched):
        train_all(
            config_set=str(TINY_SET),
            store=str(tmp_path / "store"),
            dispatch="deployment",
            child_deployment=deployment,
            queues=one_queue(),
            shared_filesystem=True,
        )
    assert len(child_runs(prefect_server, deployment_id)) == 2
    monkeypatch.setenv("EMOTION_SHARED_FILESYSTEM", "1")
    with pytest.raises(Dispatched):
        train_all(
            config_set=str(TINY_SET),
            store=str(tmp_path / "store"),
            dispatch="deployment",
            child_deployment=deployment,
            queues=one_queue(),
        )


def test_missing_bucket_is_named_before_any_child(
    prefect_server, child_deployment, stop_at_dispatch, s3_bucket, s3_endpoint
):
    from flows.train_all import train_all

    deployment, deployment_id = child_deployment
    before = len(child_runs(prefect_server, deployment_id))
    missing = f"no-such-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StoreError, match=f"bucket '{missing}' does not exist; create it first"):
        train_all(
            config_set=str(TINY_SET),
            store=f"s3://{missing}/nightly",
            dispatch="deployment",
            child_deployment=deployment,
            queues=one_queue(),
        )
    assert len(child_runs(prefect_server, deployment_id)) == before
    # An existing bucket passes the rules: the children are dispatched.
    with pytest.raises(Dispatched):
        train_all(
            config_set=str(TINY_SET),
            store=f"s3://{s3_bucket}/nightly",
            dispatch="deployment",
            child_deployment=deployment,
            queues=one_queue(),
        )
    assert len(child_runs(prefect_server, deployment_id)) == before + 2


def test_missing_bucket_is_created_when_asked(s3_bucket, s3_endpoint, monkeypatch):
    from emotion_core.store import open_store

    name = f"made-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{name}/p")
    with pytest.raises(StoreError, match=f"bucket '{name}' does not exist"):
        store.ensure_bucket()
    store.ensure_bucket(create=True)
    buckets = [b["Name"] for b in boto3.client("s3", endpoint_url=s3_endpoint).list_buckets()["Buckets"]]
    assert name in buckets
    store.ensure_bucket()  # exists now: no error, nothing created twice


def test_the_embedded_stack_declares_one_shared_disk(tmp_path):
    from emotion_cli.stack import Stack

    assert Stack(state_dir=tmp_path).env()["EMOTION_SHARED_FILESYSTEM"] == "1"
