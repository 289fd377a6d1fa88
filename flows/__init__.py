"""Prefect flows: ``train-model`` (one config) and ``train-all`` (a config set).

Importing this package first sets Prefect's environment defaults (the CLI and the tests rely on it)."""

import os
from pathlib import Path

# Before Prefect is imported anywhere: no telemetry, and the library's own log lines reach
# Prefect's run logs (the UI) as well as the console.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "emotion_core")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # library calls outside a flow (predict)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The in-process (ephemeral) Prefect server takes ~20 s to start cold, more on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Prefect creates its home folder without parents; a fresh checkout has no .emotion/ yet.
if os.environ.get("PREFECT_HOME"):
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
