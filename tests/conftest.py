"""Test-session environment: offline hub, no telemetry, shared data located once.

The data sets are read from ``$EMOTION_DATA_DIR`` or ``../shared/data`` beside the checkout; tests
that need them skip with the reason when neither exists. They are never copied into the repo.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Set before any test imports transformers/prefect: no hub calls (this workplace has no hub; real
# users do), no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("EMOTION_DATA_DIR", str((REPO.parent / "shared" / "data").resolve()))
# W&B: offline, and its files in a folder of this session (never the home folder or the checkout).
os.environ["WANDB_MODE"] = "offline"
os.environ.pop("WANDB_API_KEY", None)
_WANDB_ROOT = tempfile.mkdtemp(prefix="emotion-tests-wandb-")
for _name, _sub in (
    ("WANDB_DIR", ""),
    ("WANDB_CACHE_DIR", "cache"),
    ("WANDB_DATA_DIR", "data"),
    ("WANDB_CONFIG_DIR", "config"),
):
    os.environ[_name] = os.path.join(_WANDB_ROOT, _sub)


def shared_data_dir() -> Path | None:
    folder = Path(os.environ["EMOTION_DATA_DIR"])
    return folder if (folder / "goemotions" / "train.tsv").is_file() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = shared_data_dir()
    if folder is None:
        pytest.skip(f"shared data not found at EMOTION_DATA_DIR={os.environ['EMOTION_DATA_DIR']}")
    return folder


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TcpGate:
    """Forwards 127.0.0.1:port to a target while open; while closed nothing listens (connection refused)."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target_port = free_port(), target_port
        self.server: socket.socket | None = None

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def s3_gate(s3_endpoint):
    """A closed TCP gate in front of the session's S3 server: ``open()`` it to let traffic through."""
    gate = TcpGate(int(s3_endpoint.rsplit(":", 1)[1]))
    yield gate
    gate.close()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API over HTTP on 127.0.0.1 (moto's standalone server), one per test session.

    Sets fake credentials in the environment (boto3 reads them) and yields the endpoint URL.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"moto_server did not start on {endpoint}")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, tmp_path):
    """A fresh bucket on the session's S3 endpoint; the store URIs of tests point at it."""
    import uuid

    import boto3

    monkeypatch.setenv("EMOTION_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory):
    """One real Prefect server (``prefect server start``, SQLite, 127.0.0.1) for the whole session.

    In-process flows of the tests and the end-to-end workers all talk to it; its state (database,
    pid files, logs) lives in a temporary folder. Workers and deployments are added by the
    end-to-end fixtures that need them.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows  # noqa: F401  (Prefect environment defaults before Prefect is imported)
    from emotion_cli.stack import Stack

    state = tmp_path_factory.mktemp("prefect-stack")
    stack = Stack(
        port=free_port(),
        state_dir=state,
        extra_env={
            "PREFECT_HOME": str(state / "home"),
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "5",
        },
    )
    stack.start_server()
    # This process only: subprocesses get the stack's API through ``stack.env()`` when they need it
    # (the CLI tests check the in-process ephemeral server of a fresh checkout).
    try:
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            yield stack
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # the last run logs reach the server before it stops
    finally:
        stack.down()


def _pg_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (``initdb``, ``pg_ctl``), newest version first."""
    import shutil

    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    found = sorted(versions, key=lambda p: int(p.parent.parent.name), reverse=True)
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster under a temporary folder, on 127.0.0.1 only; yields a ``postgresql+asyncpg`` URL.

    ``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user (``runuser``).
    Its folder is a ``mkdtemp`` of its own, not pytest's: another pytest run makes ``/tmp/pytest-of-<user>``
    private again (0700), and ``pg_ctl stop`` could no longer reach the cluster. Trust authentication on
    127.0.0.1 and a socket inside the folder: nothing outside the test session uses it.
    """
    import shutil
    import signal
    import subprocess
    import time

    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install -y postgresql; `make test` does it)")
    root = Path(tempfile.mkdtemp(prefix="emotion-tests-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        for folder in (root, sockets):
            shutil.chown(folder, "postgres")
    port = free_port()
    log = root / "server.log"
    try:
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "prefect",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=root,
        )
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-k {sockets} -h 127.0.0.1 -p {port} -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            cwd=root,
        )
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not accept connections on 127.0.0.1:{port}; see {log}")
            time.sleep(0.2)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    finally:
        stopped = (
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                cwd=root,
            ).returncode
            == 0
        )
        if not stopped and (data / "postmaster.pid").is_file():  # our own cluster's postmaster: fast shutdown
            try:
                os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
                time.sleep(2)
            except (ValueError, IndexError, OSError):
                pass
        shutil.rmtree(root, ignore_errors=True)
