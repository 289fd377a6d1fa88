"""Defaults that come from the environment (one place, so every entry point agrees).

- ``EMOTION_STORE``: artefact store URI or path; default ``.emotion/store`` under the working directory.
- ``EMOTION_DATA_DIR``: folder with ``goemotions/`` and ``semeval2018-ec/`` (read by ``emotion_core.data``).
"""

from __future__ import annotations

import os
from pathlib import Path


def default_store_uri() -> str:
    return os.environ.get("EMOTION_STORE") or str(Path.cwd() / ".emotion" / "store")
