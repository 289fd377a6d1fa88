"""Start one Prefect process worker per GPU on this machine, each running one flow run at a time.

    python deployments/gpu_workers.py [--pool gpu] [--cpu-workers N] [--name-prefix gpu]

Features:
- GPUs come from ``nvidia-smi`` (index, name, memory); worker *i* gets ``CUDA_VISIBLE_DEVICES=i``,
  ``--limit 1`` and a name ``<prefix>-<host>-<i>`` (also exported as ``EMOTION_WORKER_NAME``, so each
  run's manifest and logs name the worker that trained it);
- a card with M GiB serves every queue of the pool whose ``min_gpu_memory_gb`` <= M
  (``deployments/pools/pools.yaml``): big cards drain small jobs too, small cards never get big ones;
- no GPU: ``--cpu-workers N`` workers (default 1) serve every queue (laptops, CI, the embedded demo);
- runs in the foreground and supervises: SIGINT/SIGTERM stop every worker (twice, because a Prefect
  worker escalates to SIGKILL on the second signal), and the script exits when its workers have.
Limits: one machine; multi-GPU runs per config are not supported (one GPU per run).
Needs ``PREFECT_API_URL`` in the environment (or a Prefect profile) like any worker.
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

import yaml

POOLS_FILE = Path(__file__).resolve().parent / "pools" / "pools.yaml"


def detect_gpus() -> list[dict]:
    """``[{index, name, memory_gib}]`` from nvidia-smi; empty without an NVIDIA driver."""
    if not shutil.which("nvidia-smi"):
        return []
    result = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                            capture_output=True, text=True, check=False)
    gpus = []
    for line in result.stdout.strip().splitlines() if result.returncode == 0 else []:
        index, name, memory_mib = (part.strip() for part in line.split(","))
        gpus.append({"index": int(index), "name": name, "memory_gib": float(memory_mib) / 1024})
    return gpus


def queues_for_card(queues: dict[str, dict], memory_gib: float | None) -> list[str]:
    """Queues a card serves (``None``: a CPU worker, which serves all of them)."""
    return [name for name, q in queues.items() if memory_gib is None or float(q.get("min_gpu_memory_gb", 0)) <= memory_gib]


def worker_commands(pool: str, queues: dict[str, dict], gpus: list[dict], cpu_workers: int, prefix: str) -> list[tuple[list[str], dict]]:
    """``(argv, extra env)`` per worker."""
    host = socket.gethostname().split(".")[0]
    prefect = str(Path(sys.executable).with_name("prefect"))
    slots = [(g["index"], g["memory_gib"], g["name"]) for g in gpus] or [(i, None, "cpu") for i in range(cpu_workers)]
    commands = []
    for index, memory, card in slots:
        served = queues_for_card(queues, memory)
        if not served:
            print(f"GPU {index} ({card}, {memory:.0f} GiB) is smaller than every queue of pool '{pool}': no worker", file=sys.stderr)
            continue
        name = f"{prefix}-{host}-{index}"
        argv = [prefect, "worker", "start", "--pool", pool, "--type", "process", "--name", name, "--limit", "1"]
        for queue in served:
            argv += ["--work-queue", queue]
        env = {"EMOTION_WORKER_NAME": name, "EMOTION_WORKER_DEVICE": card}
        if memory is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(index)
        commands.append((argv, env))
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="gpu")
    parser.add_argument("--cpu-workers", type=int, default=1, help="workers to start when the machine has no GPU")
    parser.add_argument("--name-prefix", default="gpu")
    parser.add_argument("--pools-file", default=str(POOLS_FILE))
    args = parser.parse_args(argv)

    queues = (yaml.safe_load(Path(args.pools_file).read_text(encoding="utf-8")).get(args.pool) or {}).get("queues") or {}
    if not queues:
        print(f"{args.pools_file}: pool '{args.pool}' has no queues", file=sys.stderr)
        return 2
    gpus = detect_gpus()
    commands = worker_commands(args.pool, queues, gpus, args.cpu_workers, args.name_prefix)
    workers = []
    for command, env in commands:
        print(f"starting {env['EMOTION_WORKER_NAME']} on {env['EMOTION_WORKER_DEVICE']} "
              f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '-')}) queues {command[command.index('--work-queue') + 1::2]}",
              flush=True)
        workers.append(subprocess.Popen(command, env={**os.environ, **env}))

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


if __name__ == "__main__":
    sys.exit(main())
