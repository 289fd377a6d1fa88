"""Defaults that come from the environment, in one place so every entry point agrees.

- ``EMOTION_STORE``: the artefact store; default ``.emotion/store`` under the working directory.
- ``EMOTION_DATA_DIR``: folder with ``goemotions/`` and ``semeval2018-ec/`` (read by ``emotion_core.data``).
- ``EMOTION_CACHE_DIR``: caches (S3 run copies, tokens, GGUF, SHAP); default ``~/.cache/emotion-pipeline``.
- ``EMOTION_TRUSTED_REMOTE_CODE``: hub ids (``org/model``, comma-separated) whose own code training may run.
- ``EMOTION_SHARED_FILESYSTEM=1``: every worker sees the parent's disk, so deployment dispatch may use a local store.
- ``EMOTION_S3_CREATE_BUCKET=1``: create a missing bucket of an ``s3://`` store.
- ``EMOTION_HF_TOKEN_SECRET``/``EMOTION_WANDB_API_KEY_SECRET``: names of the Prefect ``Secret`` blocks holding
  ``HF_TOKEN``/``WANDB_API_KEY`` (resolved in ``tasks.secrets``; never logged).
"""

from __future__ import annotations

import os
from pathlib import Path

TRUSTED_REMOTE_CODE_ENV = "EMOTION_TRUSTED_REMOTE_CODE"
SHARED_FILESYSTEM_ENV = "EMOTION_SHARED_FILESYSTEM"
CREATE_BUCKET_ENV = "EMOTION_S3_CREATE_BUCKET"
# Environment variable a secret is exported as -> the setting that names its Prefect Secret block.
SECRET_BLOCK_ENVS = {"HF_TOKEN": "EMOTION_HF_TOKEN_SECRET", "WANDB_API_KEY": "EMOTION_WANDB_API_KEY_SECRET"}


def default_store_uri() -> str:
    return os.environ.get("EMOTION_STORE") or str(Path.cwd() / ".emotion" / "store")


def trusted_remote_code() -> frozenset[str]:
    """Hub ids allowed to run their own model code in training (``$EMOTION_TRUSTED_REMOTE_CODE``)."""
    return frozenset(part.strip() for part in os.environ.get(TRUSTED_REMOTE_CODE_ENV, "").split(",") if part.strip())


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def shared_filesystem() -> bool:
    """``$EMOTION_SHARED_FILESYSTEM``: every worker reads and writes the parent's disk (one machine, NFS)."""
    return _flag(SHARED_FILESYSTEM_ENV)


def create_missing_bucket() -> bool:
    """``$EMOTION_S3_CREATE_BUCKET``: create the bucket of an ``s3://`` store if it does not exist."""
    return _flag(CREATE_BUCKET_ENV)


def secret_block_names() -> dict[str, str]:
    """Environment variable -> Prefect ``Secret`` block name, for the secrets whose setting is set."""
    names = {var: os.environ.get(setting, "").strip() for var, setting in SECRET_BLOCK_ENVS.items()}
    return {var: name for var, name in names.items() if name}


def cache_root() -> Path:
    """``$EMOTION_CACHE_DIR``, else ``~/.cache/emotion-pipeline``: S3 run copies, tokens, de-quantized GGUF, SHAP."""
    return Path(os.environ.get("EMOTION_CACHE_DIR") or Path.home() / ".cache" / "emotion-pipeline")
