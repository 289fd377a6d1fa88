"""Facts about where a run happened, for its manifest: code version, package versions, git commit, device, peak memory.

Limits: CPU peak memory is the process's high-water mark (``ru_maxrss``): in a process that trains several
runs it is the peak so far; GPU peak memory is reset per run. ``code_version`` hashes the project's packages
as this process imports them (a worker's pulled code, not the checkout it was pushed from); torch is imported
only by the device and memory facts, so the train-all parent can hash its code without loading it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

CODE_PACKAGES = ("emotion_core", "tasks", "flows", "emotion_cli")
"""The project's Python packages: what ``code_version`` hashes (configs travel as content, not as code)."""

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


@functools.cache
def code_version() -> str:
    """``sha256:<hex>`` of ``CODE_PACKAGES`` where this process imports them from (``hash_packages``); cached."""
    return hash_packages({package: _package_dir(package) for package in CODE_PACKAGES})


def hash_packages(packages: dict[str, Path]) -> str:
    """``sha256:<hex>`` over the sorted ``package/relative/path`` names and bytes of every file of the package
    folders (name -> folder), ``__pycache__`` folders and ``*.pyc`` files skipped; needs no git."""
    files = sorted(
        (f"{name}/{path.relative_to(root).as_posix()}", path)
        for name, root in packages.items()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.relative_to(root).parts and path.suffix != ".pyc"
    )
    digest = hashlib.sha256()
    for relative, path in files:
        digest.update(relative.encode("utf-8") + b"\0" + path.read_bytes() + b"\0")
    return f"sha256:{digest.hexdigest()}"


def _package_dir(package: str) -> Path:
    """The folder ``package`` is (or would be) imported from: the pulled code when it comes first on ``sys.path``."""
    module = sys.modules.get(package)
    locations = getattr(module, "__path__", None) if module is not None else None
    if locations is None:
        spec = importlib.util.find_spec(package)
        locations = spec.submodule_search_locations if spec else None
    if not locations:
        raise RuntimeError(f"code_version: package {package!r} is not importable")
    return Path(list(locations)[0])


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
    import torch

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
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process and peak GPU memory allocated since the last reset, in MB."""
    import torch

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available()
        else None,
    }
