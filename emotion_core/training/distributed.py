"""Training on several ranks (``resources.gpus`` > 1): the torchrun parent and the entry point of each rank.

    launch(cfg, store_uri, run_id, progress, context, env) -> (staging, run_id)   parent: torchrun, wait, result
    torchrun --nproc_per_node N -m emotion_core.training.distributed --config C --store S [--publish]   one rank

Features
- Every rank runs ``pipeline.train_run`` (rank helpers: ``training.ranks``); rank 0 alone stages, uploads
  checkpoints, reports progress and writes the run. ``launch`` returns rank 0's staging folder.
- A failed rank ends the run with ``RankFailed`` naming it (a rank that died on its own before ranks
  that only lost their peer); the job folder keeps the torchrun log and the ranks' errors.

Limits
- One node. FSDP needs CUDA and is not combined with QLoRA. An OOM ends a distributed run (no halving).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from emotion_core import pipeline
from emotion_core.config import load_run_config, parse_run_config
from emotion_core.errors import RANK_DIED, ConfigError, RankFailed
from emotion_core.files import atomic_write_text
from emotion_core.store import open_store
from emotion_core.training.ranks import (
    check,
    check_batch,
    check_strategy,
    init_process_group,
    initialized,
    is_main,
    world,
)

log = logging.getLogger(__name__)


# -- the parent: start torchrun, forward progress, read rank 0's result ---------------------------------------------


def _visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch(
    cfg,
    store_uri: str,
    run_id: str | None = None,
    progress: Callable[[dict], None] | None = None,
    context: dict | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Path, str]:
    """Train ``cfg`` on ``resources.gpus`` ranks (torchrun); returns rank 0's complete staging folder and the run id.

    ``progress`` gets rank 0's progress events; ``env`` is added to the ranks' environment (store credentials).
    Raises ``RankFailed`` naming the rank when one fails; the job folder (torchrun log, errors) is kept then.
    """
    gpus = cfg.resources.gpus
    _check_launchable(cfg)
    job = Path(tempfile.mkdtemp(prefix=f"emotion-ranks-{cfg.name[:40]}-"))
    (job / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")), encoding="utf-8")
    (job / "context.json").write_text(json.dumps(context or {}), encoding="utf-8")
    command = _torchrun_command(job, gpus, store_uri, run_id)
    log.info("config %s: starting %d ranks (%s): %s", cfg.name, gpus, cfg.resources.strategy, " ".join(command))
    started = time.perf_counter()
    returncode = _run_forwarding_events(command, job, progress, env)
    if returncode != 0:
        raise RankFailed(
            f"config '{cfg.name}': {failure(job, gpus)} (after {time.perf_counter() - started:.0f}s; "
            f"torchrun log and rank errors kept in {job})"
        )
    result = json.loads((job / "result.json").read_text(encoding="utf-8"))
    shutil.rmtree(job, ignore_errors=True)
    return Path(result["staging"]), result["run_id"]


def _check_launchable(cfg) -> None:
    """Batch, strategy and GPU count checks, before any process starts."""
    gpus = cfg.resources.gpus
    check_batch(cfg)
    check_strategy(cfg)
    visible = _visible_gpus()
    if visible and visible < gpus:
        raise ConfigError(
            f"config '{cfg.name}': resources.gpus={gpus} but this worker sees {visible} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})"
        )


def _torchrun_command(job: Path, gpus: int, store_uri: str, run_id: str | None) -> list[str]:
    """The torchrun command line that starts ``gpus`` ranks of this module's ``main`` on the job folder."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "--max_restarts=0",
        "-m",
        "emotion_core.training.distributed",
        "--config",
        str(job / "config.json"),
        "--store",
        store_uri,
        "--job",
        str(job),
    ] + (["--run-id", run_id] if run_id else [])


def _run_forwarding_events(
    command: list[str], job: Path, progress: Callable[[dict], None] | None, env: dict[str, str] | None
) -> int:
    """Run torchrun (output to ``torchrun.log``), forwarding rank 0's events; its exit code.

    On any exception (an interrupt, a failing ``progress``) torchrun is terminated before re-raising.
    """
    with open(job / "torchrun.log", "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            events = _EventTail(job / "events.jsonl", progress)
            while proc.poll() is None:
                events.forward()
                time.sleep(0.5)
            events.forward()
        except BaseException:
            proc.terminate()  # torchrun stops its ranks on SIGTERM
            proc.wait()
            raise
    return proc.returncode


class _EventTail:
    """Forwards the JSON lines rank 0 appends to ``events.jsonl`` to ``progress``."""

    def __init__(self, path: Path, progress: Callable[[dict], None] | None) -> None:
        self.path, self.progress, self.offset = path, progress, 0

    def forward(self) -> None:
        if self.progress is None or not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                self.progress(json.loads(line))
            except Exception as exc:  # noqa: BLE001 - progress never stops training
                log.warning("progress event not forwarded: %r", exc)


_FAILED_RANK = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)")
_PEER_LOST = (
    "gloo",
    "nccl",
    "connection closed",
    "connection reset",
    "broken pipe",
    "timed out",
    "DistBackendError",
    "DistNetworkError",
    "SIGTERM",
    "SystemExit",
)


def failure(job: Path, size: int) -> str:
    """Which rank failed and why, from torchrun's failure summary and the ranks' own error files."""
    logfile = job / "torchrun.log"
    text = logfile.read_text(encoding="utf-8", errors="replace") if logfile.is_file() else ""
    exits = {int(m.group(1)): int(m.group(3)) for m in _FAILED_RANK.finditer(text)}
    errors = {}
    for path in job.glob("error-rank*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            errors[int(record["rank"])] = record
        except (OSError, ValueError, KeyError):
            continue
    died = sorted(r for r, code in exits.items() if r not in errors)
    if died:  # no Python error of its own: killed, crashed or exited hard; the others only lost their peer
        rank = died[0]
        code = exits[rank]
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"rank {rank} of {size} {RANK_DIED} ({how}: killed, out of host memory or a crash)"
    if errors:
        own = [
            e for e in errors.values() if not any(k.lower() in (e["type"] + e["message"]).lower() for k in _PEER_LOST)
        ]
        first = min(own or errors.values(), key=lambda e: e.get("time", 0.0))
        return f"rank {first['rank']} of {size} failed: {first['type']}: {first['message']}"
    if exits:
        rank = min(exits)
        return f"rank {rank} of {size} failed with exit code {exits[rank]}"
    return f"torchrun failed before any rank reported (last log lines: {' | '.join(text.splitlines()[-5:])})"


# -- one rank (what torchrun runs) ----------------------------------------------------------------------------------


def _sigterm(signum, frame):
    # torchrun stops the surviving ranks with SIGTERM: unwind, so rank 0 discards its staging folder.
    raise SystemExit(128 + signum)


def _write_error(job: Path | None, exc: BaseException) -> None:
    if job is None:
        return
    w = world()
    record = {
        "rank": w.rank,
        "local_rank": w.local_rank,
        "type": type(exc).__name__,
        "message": str(exc).splitlines()[0][:2000] if str(exc) else "",
        "time": time.time(),
    }
    atomic_write_text(job / f"error-rank{w.rank}.json", json.dumps(record))


def _append_event(path: Path):
    def report(event: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")

    return report


def run_rank(argv: list[str] | None = None) -> int:
    """One rank: join the group, ``pipeline.train_run`` (rank 0: result file, optionally publish); 0 on success."""
    parser = argparse.ArgumentParser(prog="python -m emotion_core.training.distributed")
    parser.add_argument("--config", required=True, help="run config: YAML, or JSON as written by launch()")
    parser.add_argument("--store", required=True, help="artefact store URI")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--job", default=None, help="folder for events, errors and the result (set by launch())")
    parser.add_argument("--publish", action="store_true", help="rank 0 publishes the run (when started by hand)")
    args = parser.parse_args(argv)
    job = Path(args.job) if args.job else None
    signal.signal(signal.SIGTERM, _sigterm)
    logging.basicConfig(level=logging.INFO, format=f"[rank {world().rank}] %(levelname)s %(name)s: %(message)s")
    try:
        if args.config.endswith(".json"):
            cfg = parse_run_config(json.loads(Path(args.config).read_text(encoding="utf-8")))
        else:
            cfg = load_run_config(args.config)
        check(cfg)
        backend = init_process_group() if world().size > 1 else None
        context = json.loads((job / "context.json").read_text(encoding="utf-8")) if job else {}
        progress = _append_event(job / "events.jsonl") if job and is_main() else None
        store = open_store(args.store)
        log.info("joined %d ranks (%s)", world().size, backend)
        staging, run_id = pipeline.train_run(cfg, store, run_id=args.run_id, progress=progress, context=context)
        if is_main():
            uri = pipeline.publish_run(store, staging, run_id) if args.publish else None
            if job:
                result = {"staging": str(staging), "run_id": run_id, "uri": uri}
                atomic_write_text(job / "result.json", json.dumps(result))
            log.info("run %s complete: %s", run_id, uri or staging)
    except BaseException as exc:
        _write_error(job, exc)
        raise
    finally:
        if initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_rank())
