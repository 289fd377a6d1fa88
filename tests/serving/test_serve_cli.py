"""``emotion serve`` refuses what it cannot serve with one clear line (exit 2) before anything listens."""

from __future__ import annotations

import subprocess

from helpers import assert_refused
from serve_helpers import EMOTION, free_port


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EMOTION, "serve", *args, "--port", str(free_port())], capture_output=True, text=True, timeout=120
    )


def test_a_missing_run_is_refused(tmp_path):
    assert_refused(serve(str(tmp_path / "no-such-run")), "no-such-run")


def test_a_dataset_without_champion_is_refused(tmp_path):
    assert_refused(
        serve("champion:goemotions", "--store", str(tmp_path / "store")),
        "champion:goemotions: no champion of dataset 'goemotions'",
    )


def test_a_malformed_dataset_name_is_refused(tmp_path):
    assert_refused(serve("champion:../x", "--store", str(tmp_path / "store")), "expected a dataset name or key")
