"""Shared by the ``emotion serve`` tests (imported as ``serve_helpers``).

``train_tiny_store``: two FFNN runs of the tiny tabular data (``helpers.write_tiny_tabular``), seconds each.
``ServeProcess``: ``emotion serve ...`` as a subprocess on a free 127.0.0.1 port,
started and waited for through ``GET /health``; its output is kept to show when a test fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from helpers import train_tiny_run

EMOTION = str(Path(sys.executable).with_name("emotion"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class TinyStore:
    root: Path
    runs: tuple[Path, Path]
    """Two complete runs of the same data and labels (joy, anger): a champion and its successor."""

    @property
    def run_ids(self) -> tuple[str, str]:
        return self.runs[0].name, self.runs[1].name


def train_tiny_store(folder: Path) -> TinyStore:
    from emotion_core.store import LocalStore

    store = LocalStore(folder / "store")
    runs = [
        Path(train_tiny_run(folder, store, name, hidden).removeprefix("file://"))
        for name, hidden in (("tiny-serve-a", 8), ("tiny-serve-b", 16))
    ]
    return TinyStore(folder / "store", tuple(runs))


class ServeProcess:
    """``emotion serve ARGS --port <free>`` on 127.0.0.1, ready once ``/health`` answers."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        command = [EMOTION, "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-6000:]

    def wait_ready(self, timeout: float = 120) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"emotion serve exited ({self.process.returncode}):\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"emotion serve did not answer /health in {timeout:.0f} s:\n{self.output()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
