"""Facts about where a run happened, for its manifest: package versions, git commit, device, peak memory.

Limits: CPU peak memory is the process's high-water mark (``ru_maxrss``): in a process that trains several
runs it is the peak so far; GPU peak memory is reset per run.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = (
    "emotion-pipeline",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "polars",
    "scikit-learn",
    "numpy",
    "bitsandbytes",
    "prefect",
    "tokenizers",
    "safetensors",
)


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> dict[str, str | bool | None]:
    """Commit of the project's checkout (None outside a git checkout) and whether it had local changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_facts() -> dict:
    facts = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        facts.update(
            {
                "gpu_name": props.name,
                "gpu_total_memory_mb": round(props.total_memory / 2**20),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        )
    return facts


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process and peak GPU memory allocated since the last reset, in MB."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available()
        else None,
    }
