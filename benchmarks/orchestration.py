"""Orchestration overhead of `train-all/nightly`: trigger-to-completion against the children's own times.

    python benchmarks/orchestration.py [--set tests/data/sets/tiny-pair.yaml] [--workers 2] [--out FILE]

Starts a private local stack (Prefect server on a free port, the pools, an orchestration worker and
``--workers`` gpu-pool workers, a local artefact store, all in a temporary folder), runs the
deployment once to warm the workers' file caches, then once measured, and reports:
- trigger -> completion wall time, seen by the caller;
- per child: dispatch latency (flow run created -> running), run wall time (running -> final),
  the pipeline's own wall and training seconds (from the run's manifest);
- overhead = trigger-to-completion minus the longest child's pipeline wall time, and the same
  against the sum of the children's times (what a sequential run would cost);
- split into the analysis after the last child (gather-analysis, compare-runs: parent end minus the last
  child's end; each child evaluates and explains its own run before it ends) and the orchestration proper.
Prints a table and writes JSON. Not a test: run it on demand (it takes a few minutes here).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(stack, config_set: Path) -> dict:
    import httpx

    from emotion_cli.stack import trigger
    from emotion_core.runs import read_run
    from emotion_core.store import open_store

    started = time.perf_counter()
    parent = trigger(stack, "train-all/nightly", {"config_set": str(config_set)})
    trigger_to_completion = time.perf_counter() - started
    if not parent.state.is_completed():
        raise SystemExit(f"train-all/nightly ended {parent.state.name}: {parent.state.message}")
    children = httpx.post(
        f"{stack.api_url}/flow_runs/filter",
        json={"flow_runs": {"parent_flow_run_id": {"any_": [str(parent.id)]}}},
        timeout=30,
    ).json()
    store = open_store(stack.env()["EMOTION_STORE"])
    rows = []
    for child in children:
        created, start, end = (datetime.fromisoformat(child[k]) for k in ("created", "start_time", "end_time"))
        manifest = read_run(store.run_folder(child["parameters"]["run_id"])).manifest
        rows.append(
            {
                "child": child["name"],
                "state": child["state_type"],
                "dispatch_s": round((start - created).total_seconds(), 2),
                "run_wall_s": round((end - start).total_seconds(), 2),
                "pipeline_wall_s": manifest["timing"]["wall_seconds"],
                "train_s": manifest["timing"]["train_seconds"],
            }
        )
    longest = max(r["pipeline_wall_s"] for r in rows)
    # After the last child: gather-analysis and compare-runs (report, W&B) in the parent (SHAP ran in the children).
    parent_run = httpx.get(f"{stack.api_url}/flow_runs/{parent.id}", timeout=30).json()
    last_child_end = max(datetime.fromisoformat(c["end_time"]) for c in children)
    analysis = (datetime.fromisoformat(parent_run["end_time"]) - last_child_end).total_seconds()
    orchestration = trigger_to_completion - analysis - longest
    return {
        "parent_state": parent.state.type.value,
        "trigger_to_completion_s": round(trigger_to_completion, 2),
        "children": rows,
        "longest_child_pipeline_wall_s": longest,
        "longest_child_train_s": max(r["train_s"] for r in rows),
        "sum_children_pipeline_wall_s": round(sum(r["pipeline_wall_s"] for r in rows), 2),
        "overhead_over_longest_s": round(trigger_to_completion - longest, 2),
        "overhead_over_longest_percent": round(100 * (trigger_to_completion - longest) / longest, 1),
        "analysis_after_children_s": round(analysis, 2),
        "orchestration_overhead_s": round(orchestration, 2),
        "orchestration_overhead_percent": round(100 * orchestration / longest, 1),
        "mean_dispatch_s": round(sum(r["dispatch_s"] for r in rows) / len(rows), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="train-all orchestration overhead")
    parser.add_argument("--set", default=str(ROOT / "tests" / "data" / "sets" / "tiny-pair.yaml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "orchestration.json"))
    args = parser.parse_args()

    import os

    import flows  # noqa: F401
    from emotion_cli.stack import Stack

    shared = ROOT.parent / "shared" / "data"
    if not os.environ.get("EMOTION_DATA_DIR") and shared.is_dir():
        os.environ["EMOTION_DATA_DIR"] = str(shared)  # as the Makefile and the tests do

    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as tmp:
        stack = Stack(
            port=free_port(),
            state_dir=Path(tmp) / "stack",
            cpu_workers=args.workers,
            extra_env={
                "PREFECT_HOME": f"{tmp}/home",
                "EMOTION_STORE": f"{tmp}/store",
                "EMOTION_CACHE_DIR": f"{tmp}/cache",
                "PREFECT_WORKER_QUERY_SECONDS": "2",
            },
        )
        try:
            stack.up()
            stack.wait_for_workers({"orchestration": 1, "gpu": args.workers})
            measure(stack, Path(args.set))  # warm-up: file caches, first imports
            result = measure(stack, Path(args.set))
        finally:
            stack.down()
    result.update(
        config_set=args.set, workers=args.workers, measured_at=datetime.now(UTC).isoformat(), worker_poll_seconds=2
    )
    print(f"{'child':<28}{'dispatch s':>11}{'run wall s':>11}{'pipeline s':>11}{'train s':>9}")
    for r in result["children"]:
        print(f"{r['child']:<28}{r['dispatch_s']:>11}{r['run_wall_s']:>11}{r['pipeline_wall_s']:>11}{r['train_s']:>9}")
    print(
        f"trigger -> completion: {result['trigger_to_completion_s']} s; longest child (pipeline wall): "
        f"{result['longest_child_pipeline_wall_s']} s; sum of children: {result['sum_children_pipeline_wall_s']} s"
    )
    print(
        f"overhead over the longest child: {result['overhead_over_longest_s']} s "
        f"({result['overhead_over_longest_percent']} %); mean dispatch latency {result['mean_dispatch_s']} s"
    )
    print(
        "of which: analysis after the last child (evaluate, SHAP, report, W&B) "
        f"{result['analysis_after_children_s']} s; "
        f"orchestration {result['orchestration_overhead_s']} s ({result['orchestration_overhead_percent']} %)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"written: {args.out}")
    return 0 if result["parent_state"] == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
