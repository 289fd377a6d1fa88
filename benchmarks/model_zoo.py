"""The model families on one fixed budget: quality, trainable parameters, peak memory, speed.

    python benchmarks/model_zoo.py [--set deployments/sets/zoo-cpu.yaml] [--only NAME ...] [--out FILE]

Trains every config of the set (default ``zoo-cpu``: MiniLM full vs LoRA, SmolLM2-135M LoRA vs
QLoRA, SmolLM2 zero-shot, on the same seeded GoEmotions subset), **each in its own process**: peak
resident memory is a process high-water mark, so configs sharing a process would report the peak
of every run before them. Each child calls ``pipeline.train_config`` (what the ``train-config``
task calls) into a temporary local store and reads the manifest back. Reported per config:
validation and test macro-F1 (per-label thresholds tuned on validation), trainable and total
parameters and their ratio, the weights' stored size (``weights_mb``: what a 4-bit body saves),
peak RSS (CPU) or peak allocated GPU memory, training samples/s and
seconds, and wall time. Prints a table and writes JSON (default
``benchmarks/results/model_zoo-<device>.json``; rows of configs not run this time are kept, so
``--only NAME`` re-measures one). Not a test: run it on demand.

Limits: throughput is only comparable on a quiet machine (``uptime`` before timing: a second
process on two cores halves it); on a 200-row validation split macro-F1 moves by a few points
between seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys
from emotion_core.config import parse_run_config
from emotion_core.pipeline import train_config
from emotion_core.runs import read_run
from emotion_core.store import open_store
cfg = parse_run_config(json.loads(sys.argv[1]), sys.argv[2])
store = open_store(sys.argv[3])
uri = train_config(cfg, store)
print("MANIFEST " + json.dumps(read_run(uri).manifest))
"""


def run_one(entry, store: Path, log_dir: Path) -> dict:
    """Train one config in a fresh process; its manifest, or the error."""
    raw = entry.config.model_dump(mode="json")
    log = log_dir / f"{entry.config.name}.log"
    started = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(raw), str(entry.path), str(store)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
        )
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("MANIFEST ")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {
            "config": entry.config.name,
            "status": "failed",
            "error": " | ".join(tail),
            "process_wall_s": round(wall, 1),
        }
    return {
        "config": entry.config.name,
        "manifest": json.loads(lines[-1][len("MANIFEST ") :]),
        "process_wall_s": round(wall, 1),
    }


def row(result: dict) -> dict:
    if "manifest" not in result:
        return {"config": result["config"], "status": "failed", "error": result["error"]}
    m = result["manifest"]
    policy = m["threshold_policy"]
    summary = m["summary"]
    params = m["parameters"]
    adapter = (
        (m["config"]["model"].get("adapter") or {}).get("method") if m["family"] in ("encoder", "decoder") else None
    )
    return {
        "config": m["config_name"],
        "family": m["family"],
        "method": adapter or ("prompted" if m["family"] == "zero_shot" else "full"),
        "val_macro_f1": round(summary["validation"][policy]["macro_f1"], 4),
        "test_macro_f1": round(summary["test"][policy]["macro_f1"], 4) if "test" in summary else None,
        "val_macro_f1_at_0.5": round(summary["validation"]["fixed"]["macro_f1"], 4),
        "trainable": params["trainable"],
        "total": params["total"],
        "trainable_pct": round(100 * params["trainable"] / max(params["total"], 1), 3),
        "weights_mb": params.get("weights_mb"),
        "peak_rss_mb": m["memory"]["peak_rss_mb"],
        "peak_gpu_mb": m["memory"]["peak_gpu_allocated_mb"],
        "train_samples_per_s": m["timing"]["train_samples_per_second"],
        "train_s": m["timing"]["train_seconds"],
        "wall_s": m["timing"]["wall_seconds"],
        "train_rows": m["data"]["rows"]["train"],
        "device": m["device"].get("gpu_name") or "cpu",
        "status": "completed",
    }


def main() -> None:
    from emotion_core.config import load_config_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default=str(ROOT / "deployments/sets/zoo-cpu.yaml"))
    parser.add_argument("--only", nargs="*", help="config names to run (default: all)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    _, entries = load_config_set(args.set)
    if args.only:
        entries = [e for e in entries if e.config.name in set(args.only)]
    with tempfile.TemporaryDirectory(prefix="model-zoo-") as tmp:
        store, logs = Path(tmp) / "store", Path(tmp) / "logs"
        logs.mkdir()
        results = []
        for entry in entries:
            print(f"training {entry.config.name} ...", flush=True)
            results.append(run_one(entry, store, logs))
            print(json.dumps(row(results[-1])), flush=True)
    rows = [row(r) for r in results]
    load = [round(x, 2) for x in os.getloadavg()]
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu-{os.cpu_count()}cores"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"model_zoo-{device.replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    measured = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for r in rows:
        r.update(measured_at=measured, load_average_after=load)
    # Rows of configs not run this time stay (``--only`` reruns one config); order follows the set.
    kept = json.loads(out.read_text())["rows"] if out.is_file() else []
    fresh = {r["config"]: r for r in rows}
    order = [e.config.name for e in load_config_set(args.set)[1]]
    merged = {r["config"]: r for r in kept} | fresh
    rows = sorted(merged.values(), key=lambda r: order.index(r["config"]) if r["config"] in order else len(order))
    out.write_text(json.dumps({"set": args.set, "device": device, "rows": rows}, indent=2) + "\n")
    columns = [
        "config",
        "method",
        "val_macro_f1",
        "test_macro_f1",
        "val_macro_f1_at_0.5",
        "trainable",
        "trainable_pct",
        "weights_mb",
        "peak_rss_mb",
        "peak_gpu_mb",
        "train_samples_per_s",
        "train_s",
        "wall_s",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
