"""Issue 15 item 5: the Prefect server on PostgreSQL (``Stack(database=...)``, ``emotion stack up --database``).

A throwaway PostgreSQL cluster (``postgres_url`` in tests/conftest.py) on 127.0.0.1; the server is started
the way ``emotion stack up`` starts it, answers /api/health, and a flow run lands in PostgreSQL's tables.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from helpers import free_port

pytestmark = pytest.mark.slow


def flow_runs_named(url: str, name: str) -> list[tuple[str, str]]:
    """(name, state type) of the flow runs called ``name`` in the server's PostgreSQL database."""
    import asyncpg

    async def query():
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await connection.fetch("SELECT name, state_type FROM flow_run WHERE name = $1", name)
        finally:
            await connection.close()
        return [(row["name"], str(row["state_type"])) for row in rows]

    return asyncio.run(query())


@pytest.fixture(scope="module")
def pg_stack(postgres_url, tmp_path_factory):
    """A Prefect server on the PostgreSQL cluster (its own port and state folder); yields (stack, cold start s)."""
    import flows  # noqa: F401
    from emotion_cli.stack import Stack

    state = tmp_path_factory.mktemp("pg-stack")
    stack = Stack(
        port=free_port(), state_dir=state, database=postgres_url, extra_env={"PREFECT_HOME": str(state / "home")}
    )
    started = time.monotonic()
    try:
        stack.start_server()
        yield stack, time.monotonic() - started
    finally:
        stack.down()


def test_server_on_postgresql_answers_and_stores_flow_runs_there(pg_stack, postgres_url):
    import httpx
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack, cold_start_s = pg_stack
    print(f"Prefect server on PostgreSQL: healthy after {cold_start_s:.1f} s (cold: empty database, migrations)")
    assert httpx.get(f"{stack.api_url}/health", timeout=10).json() is True
    name = f"pg-{uuid.uuid4().hex[:8]}"

    @flow(name="pg-probe", flow_run_name=name)
    def probe(x: int) -> int:
        return x * 2

    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        assert probe(21) == 42
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # its logs reach this server before the fixture stops it
    assert flow_runs_named(postgres_url, name) == [(name, "COMPLETED")]  # in PostgreSQL, not a SQLite file
    assert not list((stack.state_dir / "home").rglob("*.db"))  # and no SQLite database was created
    # The server alone got the database URL: workers and flows of the stack never see it.
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in stack.env()


def test_stack_up_prints_the_database_redacted_and_refuses_other_schemes():
    from emotion_cli.stack import Stack, database_url
    from emotion_core.errors import EmotionError

    assert database_url("postgresql://prefect:pw@db:5432/prefect") == "postgresql+asyncpg://prefect:pw@db:5432/prefect"
    with pytest.raises(EmotionError, match=r"--database 'mysql://\*\*\*@db/prefect': expected postgresql"):
        Stack(database="mysql://root:hunter2@db/prefect")
