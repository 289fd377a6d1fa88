"""Checks a run config must pass before any download or training: fail in seconds, not hours.

- the adapter method is supported on the model's architecture (``lora``/``qlora``: BERT, RoBERTa,
  DistilBERT, DeBERTa-v2, Llama, Gemma/Gemma2, Qwen2, Mistral; ``ia3``: the same);
- QLoRA needs bitsandbytes importable on this machine;
- the model fits the GPU memory the config declares (``resources.gpu_memory_gb``), estimated from
  its parameter count and the method (full fine-tune with AdamW ~16 bytes/parameter; LoRA/IA3 on a
  bf16 body ~2; QLoRA ~0.6; zero-shot inference ~2) plus 20 % and 1 GiB for activations.
Architecture and size come from the model id (a table of known ids, then name patterns such as
``Llama-3.2-1B`` -> llama, 1e9) or a local folder's ``config.json``; nothing is downloaded. An id
that says neither is let through here and checked when it loads.
Limits: an estimate, not a measurement; long sequences or big batches need more than it says.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from emotion_core.config import RunConfig
from emotion_core.errors import ConfigError

ADAPTER_ARCHITECTURES = ("bert", "roberta", "distilbert", "deberta-v2", "llama", "gemma", "gemma2", "qwen2", "mistral")
"""Architectures (``config.model_type``) with adapter target modules known to ``models.adapters``."""

# Name pattern -> model_type, most specific first.
_ARCH_PATTERNS = [
    (r"gemma-?2", "gemma2"),
    (r"gemma", "gemma"),
    (r"qwen2", "qwen2"),
    (r"mistral|mixtral", "mistral"),
    (r"smollm|llama", "llama"),
    (r"deberta-v[23]", "deberta-v2"),
    (r"distilbert", "distilbert"),
    (r"roberta", "roberta"),
    (r"minilm|bert", "bert"),
    (r"gpt-?neox|pythia", "gpt_neox"),
    (r"gpt2", "gpt2"),
    (r"\bt5\b|flan-t5", "t5"),
    (r"phi", "phi"),
    (r"falcon", "falcon"),
]
_KNOWN_PARAMS = {  # ids whose names do not say their size
    "minilm": 22.7e6,
    "smollm2": 135e6,
    "roberta-base": 125e6,
    "roberta-large": 355e6,
    "distilbert-base-uncased": 66e6,
    "distilroberta-base": 82e6,
    "microsoft/deberta-v3-base": 184e6,
    "microsoft/deberta-v3-large": 435e6,
    "bert-base-uncased": 110e6,
}
_BYTES_PER_PARAM = {"full": 16.0, "lora": 2.0, "ia3": 2.0, "qlora": 0.6, "zero_shot": 2.0, "ffnn": 16.0}


def _local_config(ref: str) -> dict | None:
    from emotion_core.models.resolve import bundled_folder

    folder = bundled_folder(ref) or (Path(ref).expanduser() if Path(ref).expanduser().is_dir() else None)
    if folder is not None and (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return None


def architecture(ref: str) -> str | None:
    """``config.model_type`` of a model reference, without downloading; None when unknown."""
    local = _local_config(ref)
    if local and local.get("model_type"):
        return local["model_type"]
    name = ref.lower()
    for pattern, model_type in _ARCH_PATTERNS:
        if re.search(pattern, name):
            return model_type
    return None


def parameter_count(ref: str) -> float | None:
    """Approximate parameter count from the known table or the name (``7B``, ``0.5B``, ``135M``)."""
    if ref in _KNOWN_PARAMS:
        return _KNOWN_PARAMS[ref]
    match = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", ref.lower().replace("_", "-").split("/")[-1])
    if match:
        return float(match.group(1)) * (1e9 if match.group(2) == "b" else 1e6)
    return None


def training_memory_gib(params: float, method: str) -> float:
    return params * _BYTES_PER_PARAM[method] * 1.2 / 1024**3 + 1.0


def check(cfg: RunConfig, source: str = "") -> None:
    """Raise ``ConfigError`` naming the config (and ``source``, e.g. its file) if it cannot run as asked."""
    where = f"{source}: " if source else ""
    model = cfg.model
    if not hasattr(model, "model"):  # trained from scratch (ffnn, linear): no pretrained weights to check
        return
    adapter = getattr(model, "adapter", None)
    method = adapter.method if adapter is not None else ("zero_shot" if model.family == "zero_shot" else "full")
    arch = architecture(model.model)
    if adapter is not None and arch is not None and arch not in ADAPTER_ARCHITECTURES:
        raise ConfigError(
            f"{where}config '{cfg.name}': field 'model.adapter': {adapter.method} is not supported on "
            f"architecture '{arch}' ({model.model}); supported: {', '.join(ADAPTER_ARCHITECTURES)}"
        )
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"{where}config '{cfg.name}': field 'model.adapter.method': qlora needs bitsandbytes, "
            "which is not installed here (pip install bitsandbytes) — or use lora"
        )
    params = parameter_count(model.model)
    if params is not None:
        need = training_memory_gib(params, method)
        if need > cfg.resources.gpu_memory_gb:
            raise ConfigError(
                f"{where}config '{cfg.name}': field 'resources.gpu_memory_gb': {model.model} (~{params / 1e9:.2g}B "
                f"parameters) needs ~{need:.0f} GiB to {'run' if method == 'zero_shot' else 'train'} with {method}, "
                f"more than the declared {cfg.resources.gpu_memory_gb:g} GiB; declare more, or use an adapter/qlora"
            )
