"""Issue 15 item 5, end to end: `train-all/nightly` on a Prefect server backed by PostgreSQL.

A stack of its own (``Stack(database=...)`` on the throwaway cluster of ``postgres_url``), the same pools,
deployments and workers as tests/e2e/test_nightly.py (``workers_on_s3``), the store in moto's S3 bucket.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SETS = Path(__file__).resolve().parents[1] / "data" / "sets"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def pg_nightly(postgres_url, s3_endpoint, data_dir, tmp_path_factory, workers_on_s3):
    """Server on PostgreSQL + pools, deployments and workers; yields (stack, bucket)."""
    import flows  # noqa: F401
    from emotion_cli.stack import Stack

    state = tmp_path_factory.mktemp("pg-nightly")
    stack = Stack(
        port=_free_port(),
        state_dir=state,
        database=postgres_url,
        extra_env={"PREFECT_HOME": str(state / "home"), "PREFECT_WORKER_QUERY_SECONDS": "2"},
    )
    try:
        stack.start_server()
        with workers_on_s3(stack, s3_endpoint, data_dir, tmp_path_factory.mktemp("cache"), "pg") as bucket:
            yield stack, bucket
    finally:
        stack.down()


def test_nightly_on_a_postgresql_backed_server(pg_nightly, postgres_url):
    import httpx

    from emotion_cli.stack import trigger

    stack, bucket = pg_nightly
    started = time.monotonic()
    run = trigger(stack, "train-all/nightly", {"config_set": str(SETS / "tiny-pair.yaml")}, timeout_s=600)
    print(f"train-all/nightly on tiny-pair, server on PostgreSQL: {time.monotonic() - started:.1f} s wall")
    assert run.state.is_completed(), run.state.message
    children = httpx.post(
        f"{stack.api_url}/flow_runs/filter",
        timeout=30,
        json={"flow_runs": {"parent_flow_run_id": {"any_": [str(run.id)]}}},
    ).json()
    assert sorted(c["state_type"] for c in children) == ["COMPLETED", "COMPLETED"]
    assert all(c["work_pool_name"] == "gpu" for c in children)
    # The parent and its children are rows of PostgreSQL's flow_run table.
    assert (
        sorted(state for _, state in flow_run_states(postgres_url, [str(run.id)] + [c["id"] for c in children]))
        == ["COMPLETED"] * 3
    )


def flow_run_states(url: str, ids: list[str]) -> list[tuple[str, str]]:
    """(id, state type) of these flow runs, read from the server's PostgreSQL database directly."""
    import asyncio
    import uuid

    import asyncpg

    async def query():
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await connection.fetch(
                "SELECT id, state_type FROM flow_run WHERE id = ANY($1::uuid[])", [uuid.UUID(i) for i in ids]
            )
        finally:
            await connection.close()
        return [(str(row["id"]), str(row["state_type"])) for row in rows]

    return asyncio.run(query())
