"""Flow tests run against the session's one real Prefect server (``prefect_stack`` in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_server(prefect_stack):
    return prefect_stack
