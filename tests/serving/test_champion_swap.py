"""``emotion serve champion:<dataset>``: the registry's champion changes while clients send requests without
pause; the server loads the new run, swaps it in, and every request is answered (200) by the old or the new run.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serve_helpers import ServeProcess

pytestmark = pytest.mark.slow  # tiny training runs and a real server process


def promote(store_root, run_id: str, over: str | None) -> None:
    """Record a promotion of ``run_id`` in the store's registry, as the nightly champion/challenger step does."""
    import json

    from emotion_core.registry import Decision, Registry, dataset_key_of
    from emotion_core.store import LocalStore

    store = LocalStore(store_root)
    manifest = json.loads((store.run_folder(run_id) / "manifest.json").read_text())
    Registry(store).record(
        Decision(
            dataset_key=dataset_key_of(manifest),
            promoted=True,
            reason="test: promoted by hand",
            challenger_run_id=run_id,
            challenger_name=manifest["config_name"],
            challenger_macro_f1=0.9,
            champion_run_id=over,
            champion_name=None,
            champion_macro_f1=None if over is None else 0.5,
            margin=0.005,
            alpha=0.05,
            p_value=None,
            delta=None,
            test_rows=None,
        )
    )


class Clients:
    """Threads that send ``/predict`` back to back until stopped; every answer's status and run id is kept."""

    def __init__(self, url: str, n: int = 3) -> None:
        self.url, self.answers, self.errors = url, [], []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(i,), daemon=True) for i in range(n)]

    def _send(self, i: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopping.is_set():
                try:
                    response = client.post(f"{self.url}/predict", json={"texts": [f"happy mad day {i}", "calm"]})
                except httpx.HTTPError as exc:  # a dropped connection counts as a failed request
                    self.errors.append(repr(exc))
                    continue
                run_id = response.json().get("run_id") if response.status_code == 200 else None
                self.answers.append((i, response.status_code, run_id))

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)


def test_a_new_champion_is_swapped_in_without_dropping_a_request(tiny_store):
    first, second = tiny_store.run_ids
    promote(tiny_store.root, first, over=None)
    server = ServeProcess("champion:tabular", "--store", str(tiny_store.root), "--reload-every", "0.5").wait_ready()
    try:
        assert httpx.get(f"{server.url}/model", timeout=10).json()["run_id"] == first
        with Clients(server.url) as clients:
            time.sleep(2)  # requests on the first champion
            promote(tiny_store.root, second, over=first)
            deadline = time.monotonic() + 120
            while httpx.get(f"{server.url}/model", timeout=10).json()["run_id"] != second:
                assert time.monotonic() < deadline, f"no swap to {second} in 120 s:\n{server.output()}"
                time.sleep(0.2)
            time.sleep(2)  # requests on the new champion
        info = httpx.get(f"{server.url}/model", timeout=10).json()
        assert server.alive(), server.output()
    finally:
        server.stop()
    assert clients.errors == []
    assert {status for _, status, _ in clients.answers} == {200}, clients.answers
    assert info["champion"]["swaps"] == 1 and info["champion"]["last_check_error"] is None
    assert info["source"].startswith("champion:tabular-")
    for i in range(len(clients.threads)):  # each client sees the old run, then the new one, never back
        seen = [run_id for client, _, run_id in clients.answers if client == i]
        switch = seen.index(second)
        assert switch > 0 and set(seen[:switch]) == {first} and set(seen[switch:]) == {second}, seen
