"""Fixtures of the ``emotion serve`` tests: tiny real FFNN runs (once per session) and the real CLI server."""

from __future__ import annotations

import pytest
from serve_helpers import ServeProcess, TinyStore, train_tiny_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> TinyStore:
    """Two complete tiny FFNN runs (labels joy, anger) in one local store."""
    return train_tiny_store(tmp_path_factory.mktemp("serve-store"))


@pytest.fixture(scope="module")
def served(tiny_store):
    """``emotion serve <run a>``: the real CLI server, shared by a module's tests."""
    server = ServeProcess(str(tiny_store.runs[0])).wait_ready()
    yield server
    server.stop()
