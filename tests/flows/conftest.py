"""One Prefect test server (SQLite, 127.0.0.1) for the whole test session: a cold start is ~20 s."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    import flows  # noqa: F401  (Prefect environment defaults before Prefect is imported)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
