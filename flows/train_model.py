"""Flow ``train-model``: one config file (+ overrides) -> one published run."""

from __future__ import annotations

from typing import Any

from prefect import flow

from emotion_core.config import load_run_config
from emotion_core.settings import default_store_uri
from tasks.training import train_config


@flow(name="train-model", flow_run_name="train-model-{config}")
def train_model(config: str, store: str | None = None, overrides: dict[str, Any] | None = None) -> str:
    """Validate ``config`` (a YAML path) with ``overrides`` merged in, train it, return the run URI."""
    cfg = load_run_config(config, overrides)
    return train_config(cfg, store or default_store_uri())
