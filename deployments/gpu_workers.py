"""Start one Prefect process worker per GPU (or per group of K GPUs) on this machine, one flow run at a time each.

    python deployments/gpu_workers.py [--api-url URL] [--pool gpu] [--gpus-per-worker K] [--cpu-workers N]
                                      [--name-prefix gpu]

On a fresh GPU machine ``deployments/setup_gpu_machine.sh`` installs the environment and runs this
script from ``<venv>/share/emotion-pipeline/`` (no checkout needed); docs/fleet.md.

- Cards from ``nvidia-smi``, grouped K by K in index order (leftovers named, no worker); each worker gets
  ``CUDA_VISIBLE_DEVICES``, ``--limit 1``, the name ``<prefix>-<host>-<first card>`` (``EMOTION_WORKER_NAME``)
  and ``EMOTION_WORKER_GPUS=K``.
- A worker serves every queue of the pool with ``gpus`` == K whose ``min_gpu_memory_gb`` its smallest card holds
  (``deployments/pools/pools.yaml``); without GPUs, ``--cpu-workers N`` stand in for K-card workers.
- Runs in the foreground; SIGINT/SIGTERM stop every worker (signalled twice: Prefect then escalates to SIGKILL).

Limits: one machine, one K per invocation. Needs the API: ``--api-url`` (checked at ``/health`` before any worker
starts: exit 2 otherwise) or ``PREFECT_API_URL`` (or a Prefect profile).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

POOLS_FILE = Path(__file__).resolve().parent / "pools" / "pools.yaml"


def detect_gpus() -> list[dict]:
    """``[{index, name, memory_gib}]`` from nvidia-smi; empty without an NVIDIA driver."""
    if not shutil.which("nvidia-smi"):
        return []
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    gpus = []
    for line in result.stdout.strip().splitlines() if result.returncode == 0 else []:
        index, name, memory_mib = (part.strip() for part in line.split(","))
        gpus.append({"index": int(index), "name": name, "memory_gib": float(memory_mib) / 1024})
    return gpus


def queue_gpus(queue: dict) -> int:
    """Cards per worker a queue is for (``gpus``, default 1)."""
    return int(queue.get("gpus", 1))


def queues_for_card(queues: dict[str, dict], memory_gib: float | None, cards: int = 1) -> list[str]:
    """Queues a worker with ``cards`` cards of at least ``memory_gib`` serves (``None``: CPU, any memory)."""
    return [
        name
        for name, q in queues.items()
        if queue_gpus(q) == cards and (memory_gib is None or float(q.get("min_gpu_memory_gb", 0)) <= memory_gib)
    ]


def card_groups(gpus: list[dict], per_worker: int) -> tuple[list[list[dict]], list[dict]]:
    """Consecutive groups of ``per_worker`` cards, and the cards left over."""
    whole = len(gpus) - len(gpus) % per_worker
    return [gpus[i : i + per_worker] for i in range(0, whole, per_worker)], gpus[whole:]


def worker_commands(
    pool: str, queues: dict[str, dict], gpus: list[dict], cpu_workers: int, prefix: str, gpus_per_worker: int = 1
) -> list[tuple[list[str], dict]]:
    """``(argv, extra env)`` per worker."""
    host = socket.gethostname().split(".")[0]
    prefect = str(Path(sys.executable).with_name("prefect"))
    groups, left_over = card_groups(gpus, gpus_per_worker)
    if left_over:
        print(
            f"GPUs {[g['index'] for g in left_over]} do not make a group of {gpus_per_worker}: no worker for them",
            file=sys.stderr,
        )
    slots = [
        ([g["index"] for g in group], min(g["memory_gib"] for g in group), " + ".join(g["name"] for g in group))
        for group in groups
    ]
    if not gpus:
        slots = [([i], None, "cpu") for i in range(cpu_workers)]
    commands = []
    for indices, memory, card in slots:
        served = queues_for_card(queues, memory, gpus_per_worker)
        if not served:
            size = "CPU" if memory is None else f"{memory:.0f} GiB"
            print(
                f"GPUs {indices} ({card}, {size}) as a {gpus_per_worker}-card worker match no queue of pool "
                f"'{pool}': no worker",
                file=sys.stderr,
            )
            continue
        name = f"{prefix}-{host}-{indices[0]}"
        argv = [prefect, "worker", "start", "--pool", pool, "--type", "process", "--name", name, "--limit", "1"]
        for queue in served:
            argv += ["--work-queue", queue]
        env = {"EMOTION_WORKER_NAME": name, "EMOTION_WORKER_DEVICE": card, "EMOTION_WORKER_GPUS": str(gpus_per_worker)}
        if memory is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in indices)
        commands.append((argv, env))
    # The workers share the cores: torch's default (every core per process) oversubscribes them and starves
    # the server and the other children. A value the user set wins.
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // max(len(commands), 1)))
    for _, env in commands:
        env["OMP_NUM_THREADS"] = threads
    return commands


def check_api(api_url: str, timeout_s: float = 10) -> str | None:
    """None if the Prefect API at ``api_url`` answers ``/health``, else why not."""
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    return None if response.status_code == 200 else f"HTTP {response.status_code}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", help="Prefect API of the fleet (http://host:4200/api); default $PREFECT_API_URL")
    parser.add_argument("--pool", default="gpu")
    parser.add_argument("--cpu-workers", type=int, default=1, help="workers to start when the machine has no GPU")
    parser.add_argument(
        "--gpus-per-worker",
        type=int,
        default=1,
        help="cards each worker owns (CUDA_VISIBLE_DEVICES); it serves the queues with that many gpus",
    )
    parser.add_argument("--name-prefix", default="gpu")
    parser.add_argument("--pools-file", default=str(POOLS_FILE))
    return parser


def start_workers(commands: list[tuple[list[str], dict]]) -> list[subprocess.Popen]:
    """Start each ``(argv, extra env)`` of ``worker_commands``, saying which device and queues it gets."""
    workers = []
    for command, env in commands:
        served = command[command.index("--work-queue") + 1 :: 2]
        print(
            f"starting {env['EMOTION_WORKER_NAME']} on {env['EMOTION_WORKER_DEVICE']} "
            f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '-')}) queues {served}",
            flush=True,
        )
        workers.append(subprocess.Popen(command, env={**os.environ, **env}))
    return workers


def supervise(workers: list[subprocess.Popen]) -> int:
    """Wait for the workers; SIGINT/SIGTERM stop them all (signalled again after 10 s). 0 if stopped or all ok."""
    stop_requested: list[float] = []

    def signal_workers() -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    def on_signal(signum, frame):  # noqa: ARG001
        if not stop_requested:
            stop_requested.append(time.monotonic())
            signal_workers()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    escalated = False
    while any(w.poll() is None for w in workers):
        time.sleep(0.5)
        if stop_requested and not escalated and time.monotonic() - stop_requested[0] > 10:
            signal_workers()  # a Prefect worker needs a second signal to stop (it escalates to SIGKILL)
            escalated = True
    return 0 if stop_requested or all(w.returncode == 0 for w in workers) else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.gpus_per_worker < 1:
        parser.error("--gpus-per-worker must be >= 1")

    if args.api_url:
        problem = check_api(args.api_url)
        if problem:
            print(f"--api-url {args.api_url}: the Prefect API does not answer ({problem})", file=sys.stderr)
            return 2
        os.environ["PREFECT_API_URL"] = args.api_url  # the workers' API
    pools = yaml.safe_load(Path(args.pools_file).read_text(encoding="utf-8")) or {}
    queues = (pools.get(args.pool) or {}).get("queues") or {}
    if not queues:
        print(f"{args.pools_file}: pool '{args.pool}' has no queues", file=sys.stderr)
        return 2
    gpus = detect_gpus()
    commands = worker_commands(args.pool, queues, gpus, args.cpu_workers, args.name_prefix, args.gpus_per_worker)
    return supervise(start_workers(commands))


if __name__ == "__main__":
    sys.exit(main())
