"""Defaults that come from the environment (one place, so every entry point agrees).

- ``EMOTION_STORE``: artefact store URI or path; default ``.emotion/store`` under the working directory.
- ``EMOTION_DATA_DIR``: folder with ``goemotions/`` and ``semeval2018-ec/`` (read by ``emotion_core.data``).
- ``EMOTION_TRUSTED_REMOTE_CODE``: comma-separated hub ids (``org/model``) whose own Python code training
  may run (``model.trust_remote_code: true``); unset: none. Never applies to a local folder or a run.
"""

from __future__ import annotations

import os
from pathlib import Path


TRUSTED_REMOTE_CODE_ENV = "EMOTION_TRUSTED_REMOTE_CODE"


def default_store_uri() -> str:
    return os.environ.get("EMOTION_STORE") or str(Path.cwd() / ".emotion" / "store")


def trusted_remote_code() -> frozenset[str]:
    """Hub ids allowed to run their own model code in training (``$EMOTION_TRUSTED_REMOTE_CODE``)."""
    return frozenset(part.strip() for part in os.environ.get(TRUSTED_REMOTE_CODE_ENV, "").split(",") if part.strip())
