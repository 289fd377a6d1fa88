"""Task: train one validated config and publish its run."""

from __future__ import annotations

from prefect import get_run_logger, task

from emotion_core import pipeline
from emotion_core.config import RunConfig
from tasks.storage import open_task_store


@task(name="train-config", task_run_name="train-{cfg.name}")
def train_config(cfg: RunConfig, store_uri: str) -> str:
    """Train ``cfg`` and return the published run's URI."""
    logger = get_run_logger()
    logger.info("training %s (%s: %s) into %s", cfg.name, cfg.model.family, getattr(cfg.model, "model", "-"), store_uri)
    uri = pipeline.train_config(cfg, open_task_store(store_uri))
    logger.info("published %s", uri)
    return uri
