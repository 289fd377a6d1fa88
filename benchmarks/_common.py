"""Helpers shared by the training/explanation benchmarks (not a benchmark itself).

- ``machine()``: device, CPU model, torch threads, CUDA facts; ``versions()``: package versions.
- ``CpuWatch``: load average and how busy the machine's other processes were while a child ran
  (``/proc/stat`` busy time minus the child's own CPU time): on two shared cores that is the number
  that says whether a throughput can be trusted.
- ``run_child``: run ``python <script> --child <json>`` in a fresh process (own memory, own threads)
  and read back the one ``RESULT <json>`` line it prints.
- ``peak_rss_mb`` / ``reset_peak_rss``: the process's resident high-water mark (``VmHWM``), resettable
  through ``/proc/self/clear_refs`` so a training phase can be measured apart from model loading.
- ``markdown_table``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "tokenizers",
    "shap",
    "numba",
    "scikit-learn",
    "numpy",
    "polars",
    "gguf",
    "safetensors",
)


def offline_env(extra: dict | None = None) -> dict:
    """Environment for children: hub offline, no telemetry, the shared data folder when it exists."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    shared = ROOT.parent / "shared" / "data"
    if not env.get("EMOTION_DATA_DIR") and shared.is_dir():
        env["EMOTION_DATA_DIR"] = str(shared)  # as the Makefile and the tests do
    env.update(extra or {})
    return env


def thread_env(threads: int | None) -> dict:
    """Environment pinning a child's torch/OpenMP threads (empty: torch's default, one per core)."""
    if not threads:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    import torch

    from emotion_core.monitoring import cpu_model

    facts = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu_name=props.name,
            gpu_total_memory_mb=round(props.total_memory / 2**20),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    facts["device"] = facts.get("gpu_name") or f"cpu-{os.cpu_count()}cores"
    return facts


def device_slug() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "_")
    return f"cpu-{os.cpu_count()}cores"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _busy_seconds() -> float:
    """Seconds all CPUs spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """Load average before/after and the other processes' CPU use (in cores) over a child's run."""

    def __enter__(self) -> CpuWatch:
        self.load_before = load_average()
        self.busy0 = _busy_seconds()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.child0 = usage.ru_utime + usage.ru_stime
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        child = usage.ru_utime + usage.ru_stime - self.child0
        busy = _busy_seconds() - self.busy0
        self.facts = {
            "load_average_before": self.load_before,
            "load_average_after": load_average(),
            "process_wall_s": round(wall, 1),
            "child_cpu_cores": round(child / wall, 2),
            "other_processes_cpu_cores": round(max(busy - child, 0.0) / wall, 2),
        }


def run_child(script: Path, spec: dict, log: Path, env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``script --child <spec>`` in a fresh process; its ``RESULT`` dict plus the CPU facts, or the error."""
    with open(log, "w") as handle, CpuWatch() as watch:
        try:
            proc = subprocess.run(
                [sys.executable, str(script), "--child", json.dumps(spec)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=handle,
                text=True,
                env=offline_env(env),
                timeout=timeout,
            )
            stdout, code = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            stdout, code = (
                (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""),
                "timeout",
            )
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if code != 0 or not lines:
        tail = log.read_text(errors="replace").strip().splitlines()[-4:]
        return {"status": "failed", "returncode": code, "error": " | ".join(tail), **watch.facts}
    return {"status": "completed", **json.loads(lines[-1][len("RESULT ") :]), **watch.facts}


def emit(result: dict) -> None:
    """What a child prints last: one machine-readable line."""
    print("RESULT " + json.dumps(result), flush=True)


def _status_mb(field: str) -> float | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return round(int(match.group(1)) / 1024, 1) if match else None


def rss_mb() -> float | None:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """Resident high-water mark since the process started or since ``reset_peak_rss``."""
    value = _status_mb("VmHWM")
    if value is None:  # no /proc: the whole process's peak
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return value


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
