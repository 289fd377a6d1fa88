"""The embedded default: a local Prefect server, its pools, workers and deployments, on this machine.

    emotion stack up      server (SQLite, 127.0.0.1) + pools + automations + orchestration and gpu worker(s) + deploy
    emotion stack up --database postgresql+asyncpg://user@host:5432/prefect   the same on PostgreSQL
    emotion stack up --code-store s3://bucket/code   deploy deployments/fleet/prefect.yaml: workers pull the code
    emotion demo          up, then `train-all/nightly` on cpu-demo, wait, print the summary and UI URL
    emotion stack down    stop everything `up` started

Features: processes run detached (they outlive the command, so the UI stays up after the demo),
each in its own process group with a pid file and a log in ``<state>/``; ``up`` reuses a healthy
server and running workers; paths in ``EMOTION_STORE`` / ``EMOTION_DATA_DIR`` are made absolute
so workers resolve them the same way; ``EMOTION_SHARED_FILESYSTEM=1`` (one disk: a local store is
allowed for deployment dispatch); telemetry is off. ``database``: the server's
``PREFECT_SERVER_DATABASE_CONNECTION_URL`` (given to the server process only, never printed unredacted);
default Prefect's SQLite under ``PREFECT_HOME``. ``up`` also writes the nightly run's automations
(``emotion_cli.automations``: failure notification through ``$EMOTION_NOTIFY_WEBHOOK_BLOCK``, dead parents).
Limits: one machine, one server per state folder; a healthy server already on the port is reused
whatever its database; the password of a database URL is visible to local users in the server's
environment (``/proc``): prefer a password file (``~/.pgpass``) or peer authentication.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from emotion_core.errors import EmotionError
from emotion_core.processes import pid_alive
from emotion_core.settings import SHARED_FILESYSTEM_ENV, default_store_uri
from emotion_core.store.uris import check_uri, redact_uri

PROJECT_DIR = Path(__file__).resolve().parent.parent
FLEET_PREFECT_FILE = PROJECT_DIR / "deployments" / "fleet" / "prefect.yaml"
"""The deployments with ``push_to_s3`` / ``pull_from_s3`` of the code (``Stack.code_store``)."""
DATABASE_ENV = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
logger = logging.getLogger(__name__)


class StackError(EmotionError):
    """The local stack could not start or stop (port taken, server not healthy, deploy failed)."""


@dataclass
class Stack:
    """Where the local stack lives and how it is shaped."""

    port: int = 4200
    """Port of the Prefect server (and UI) on 127.0.0.1."""
    state_dir: Path = field(default_factory=lambda: PROJECT_DIR / ".emotion" / "stack")
    """Pid files and logs of the processes the stack started."""
    cpu_workers: int = 1
    """gpu-pool workers to start when the machine has no GPU (one per GPU otherwise)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """Environment for the server, workers and deploy (e.g. S3 endpoint, credentials, store)."""
    database: str | None = None
    """SQLAlchemy URL of the server's database (``postgresql+asyncpg://...``); None: Prefect's SQLite."""
    code_store: str | None = None
    """``s3://bucket/prefix``: deploy ``FLEET_PREFECT_FILE``, the code pushed under ``prefix/<code version>``
    (workers pull it, no checkout needed); None: the root ``prefect.yaml`` (workers run this checkout)."""

    def __post_init__(self) -> None:
        if self.database:
            self.database = database_url(self.database)
        if self.code_store:
            code_store_env(self.code_store)  # a bad URI fails here, before anything starts

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env.pop(DATABASE_ENV, None)  # the server's alone (start_server): it may hold a password
        env.update(
            {
                "PREFECT_API_URL": self.api_url,
                "PREFECT_UI_API_URL": self.api_url,  # else the UI of a server on another port calls :4200
                "PREFECT_HOME": str(Path(env.get("PREFECT_HOME") or self.state_dir / "prefect").resolve()),
                "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_WORKER_QUERY_SECONDS": env.get("PREFECT_WORKER_QUERY_SECONDS", "5"),
                "EMOTION_PROJECT_DIR": str(PROJECT_DIR),
                "PYTHONUNBUFFERED": "1",
                SHARED_FILESYSTEM_ENV: "1",  # one machine: the workers write where the parent reads
            }
        )
        store = self.extra_env.get("EMOTION_STORE") or default_store_uri()
        env["EMOTION_STORE"] = store if "://" in store else str(Path(store).resolve())
        if env.get("EMOTION_DATA_DIR"):
            env["EMOTION_DATA_DIR"] = str(Path(env["EMOTION_DATA_DIR"]).resolve())
        return env

    # -- processes -------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        pid_file = self.state_dir / f"{name}.pid"
        pid = self._our_pid(name)
        if pid is not None:
            return pid
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / f"{name}.log", "ab")
        process = subprocess.Popen(
            argv,
            env=env or self.env(),
            cwd=PROJECT_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        # The start time identifies the process: a pid alone may name another process once ours has exited.
        record = {"pid": process.pid, "started": _start_time(process.pid), "port": self.port, "argv": argv}
        pid_file.write_text(json.dumps(record) + "\n")
        return process.pid

    def _our_pid(self, name: str) -> int | None:
        """The pid in ``<name>.pid`` if it is still the live process this stack (on this port) started, else None."""
        pid_file = self.state_dir / f"{name}.pid"
        try:
            text = pid_file.read_text()
        except OSError:
            return None
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, int):  # an older stack wrote the bare pid: only its command line can tell
            return record if pid_alive(record) and _legacy_match(record, name, self.port) else None
        if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
            return None
        pid = record["pid"]
        if record.get("port") != self.port or not pid_alive(pid):
            return None
        started = _start_time(pid)
        recorded = record.get("started")
        if started is None or not isinstance(recorded, (int, float)) or abs(started - recorded) > 0.05:
            return None
        return pid

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_server(self, timeout_s: float = 240) -> None:
        if self.healthy():
            return
        prefect = str(Path(sys.executable).with_name("prefect"))
        env = self.env()
        if self.database:  # the server's only: workers and flows never see the database (or its password)
            env[DATABASE_ENV] = self.database
        pid = self._start("server", [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)], env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if not pid_alive(pid):
                raise StackError(
                    f"the Prefect server exited at start (port {self.port} taken?); see {self.state_dir / 'server.log'}"
                )
            time.sleep(1)
        raise StackError(
            f"the Prefect server did not answer {self.api_url}/health within {timeout_s:.0f}s; "
            f"see {self.state_dir / 'server.log'}"
        )

    def run_with_api(self, fn, *args, **kwargs):
        """Call ``fn`` with this stack's API as Prefect's API (client calls from this process)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return fn(*args, **kwargs)

    def apply_pools(self) -> list[str]:
        from emotion_cli.pools import apply_pools

        return self.run_with_api(apply_pools)

    def deploy(self) -> str:
        """``prefect deploy --all`` of the root ``prefect.yaml``, or of the fleet file with ``code_store``;
        returns where the workers get the code from."""
        prefect = str(Path(sys.executable).with_name("prefect"))
        argv, env, source = [prefect, "--no-prompt", "deploy", "--all"], self.env(), f"this checkout ({PROJECT_DIR})"
        if self.code_store:
            argv += ["--prefect-file", str(FLEET_PREFECT_FILE)]
            env.update(code_store_env(self.code_store))
            source = f"s3://{env['EMOTION_CODE_BUCKET']}/{env['EMOTION_CODE_FOLDER']}/ (pushed now)"
        result = subprocess.run(argv, env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"prefect deploy --all failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return source

    def start_workers(self) -> None:
        prefect = str(Path(sys.executable).with_name("prefect"))
        self._start(
            "worker-orchestration",
            [
                prefect,
                "worker",
                "start",
                "--pool",
                "orchestration",
                "--type",
                "process",
                "--name",
                "orchestration-local",
                "--limit",
                "4",
            ],
        )
        self._start(
            "workers-gpu",
            [
                sys.executable,
                str(PROJECT_DIR / "deployments" / "gpu_workers.py"),
                "--pool",
                "gpu",
                "--cpu-workers",
                str(self.cpu_workers),
            ],
        )

    def wait_for_workers(self, pools: dict[str, int], timeout_s: float = 120) -> None:
        """Wait until each pool has at least the given number of online workers."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = {pool: len(self.online_workers(pool)) for pool in pools}
            if all(counts[p] >= n for p, n in pools.items()):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"workers did not come online within {timeout_s:.0f}s: {counts}; see {self.state_dir}/*.log"
                )
            time.sleep(1)

    def online_workers(self, pool: str) -> list[str]:
        response = httpx.post(f"{self.api_url}/work_pools/{pool}/workers/filter", json={}, timeout=10)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [w["name"] for w in response.json() if w.get("status") == "ONLINE"]

    def up(self) -> list[str]:
        """Start (or reuse) the server, pools, workers and deployments; returns what it did."""
        self.start_server()
        lines = [f"server database: {redact_uri(self.database) if self.database else 'SQLite (PREFECT_HOME)'}"]
        lines += self.apply_pools()
        source = self.deploy()
        self.start_workers()
        prefect_file = FLEET_PREFECT_FILE if self.code_store else PROJECT_DIR / "prefect.yaml"
        return lines + [
            f"deployments: train-all/nightly, train-model/gpu, predict/batch (from {prefect_file})",
            f"code on the workers: {source}",
            f"UI: {self.ui_url}",
        ]

    def down(self) -> list[str]:
        """Stop what ``up`` started: workers first (their runs end), then the server."""
        stopped = []
        for name in ("worker-orchestration", "workers-gpu", "server"):
            pid_file = self.state_dir / f"{name}.pid"
            if not pid_file.exists():
                continue
            pid = self._our_pid(name)
            if pid is not None:
                _stop_group(pid)
                stopped.append(f"{name} (pid {pid})")
            else:  # gone, or the pid now names another process (or a stack on another port): never signal it
                logger.warning(
                    "%s: %s does not name a process this stack started on port %d; left alone",
                    name,
                    pid_file,
                    self.port,
                )
            pid_file.unlink()
        return stopped


_DATABASE_SCHEMES = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def database_url(url: str) -> str:
    """``url`` as the async SQLAlchemy URL Prefect needs (``postgresql://`` -> ``postgresql+asyncpg://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _DATABASE_SCHEMES:
        raise StackError(
            f"--database '{redact_uri(url)}': expected postgresql+asyncpg://user@host:5432/database "
            "(or postgresql://..., sqlite+aiosqlite:///path)"
        )
    return f"{_DATABASE_SCHEMES[scheme.lower()]}://{rest}"


def _start_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), or None if it is gone."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


_LEGACY_MARKERS = {
    "server": ("server", "start"),
    "worker-orchestration": ("worker", "orchestration"),
    "workers-gpu": ("gpu_workers.py",),
}


def _legacy_match(pid: int, name: str, port: int) -> bool:
    """A bare-pid file of an older stack: the process must still run the command ``up`` started (and port)."""
    import psutil

    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    markers = _LEGACY_MARKERS.get(name, (name,)) + (("--port", str(port)) if name == "server" else ())
    return ("prefect" in cmdline or "gpu_workers.py" in cmdline) and all(m in cmdline for m in markers)


def _stop_group(pid: int, grace_s: float = 20) -> None:
    """SIGTERM the process group, again after a pause (Prefect workers need two), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.2)


def code_store_env(code_store: str) -> dict[str, str]:
    """``EMOTION_CODE_BUCKET`` / ``EMOTION_CODE_FOLDER`` for ``FLEET_PREFECT_FILE`` from ``s3://bucket/prefix``: the
    folder is ``prefix/<code version hex>``, so a new deploy never overwrites (or leaves stale files in) the code
    that running flows pull."""
    from emotion_core.provenance import code_version

    scheme, sep, rest = check_uri(code_store, "code store").partition("://")
    bucket, _, prefix = rest.partition("/")
    if not sep or scheme.lower() != "s3" or not bucket:
        raise StackError(f"code store '{redact_uri(code_store)}': expected s3://bucket[/prefix]")
    folder = "/".join(p for p in (prefix.strip("/"), code_version().removeprefix("sha256:")) if p)
    return {"EMOTION_CODE_BUCKET": bucket, "EMOTION_CODE_FOLDER": folder}


def trigger(stack: Stack, deployment: str, parameters: dict, timeout_s: float | None = None):
    """Run ``deployment`` with ``parameters`` and wait for its final state; returns the flow run."""
    from prefect.deployments import run_deployment

    return stack.run_with_api(
        run_deployment, deployment, parameters=parameters, timeout=timeout_s, poll_interval=1, as_subflow=False
    )


def latest_artifact(stack: Stack, key: str, flow_run_id=None):
    """The newest artifact with ``key`` (of ``flow_run_id`` if given), or None."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    def read():
        with get_client(sync_client=True) as client:
            of_run = ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None
            wanted = ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=of_run)
            found = client.read_artifacts(artifact_filter=wanted, sort=ArtifactSort.CREATED_DESC, limit=1)
        return found[0] if found else None

    return stack.run_with_api(read)
