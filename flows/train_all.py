"""Flow ``train-all``: every config of a set -> one run each -> a comparison table.

Children run one after another in this process (the ``local`` dispatch: a laptop or CI).
A child that fails is recorded as failed in the comparison and fails this flow at the end with a
message naming it; the other children still run and are compared.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger

from emotion_core.config import load_config_set
from emotion_core.errors import RunFailed
from emotion_core.settings import default_store_uri
from flows.train_model import train_model
from tasks.reporting import compare_runs


@flow(name="train-all")
def train_all(config_set: str = "deployments/sets/cpu-demo.yaml", store: str | None = None,
              overrides: dict[str, Any] | None = None) -> dict:
    """Train every config of ``config_set`` and publish the comparison; returns where it was written."""
    logger = get_run_logger()
    store = store or default_store_uri()
    spec, entries = load_config_set(config_set, overrides)  # every config validated before any training
    logger.info("config set %s: %d configs -> %s", spec.name, len(entries), store)
    outcomes = []
    for entry in entries:
        config_path = os.path.normpath(entry.path)  # also names the child run: train-model-deployments/configs/x.yaml
        state = train_model(config=config_path, store=store, overrides=entry.overrides, return_state=True)
        if state.is_completed():
            outcomes.append({"config": entry.config.name, "run_uri": state.result()})
        else:
            error = state.result(raise_on_failure=False)
            message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(state.message)
            logger.error("config %s failed: %s", entry.config.name, message)
            outcomes.append({"config": entry.config.name, "status": "failed", "error": message})
    summary = compare_runs(spec.name, outcomes, store)
    failed = [o for o in outcomes if o.get("status") == "failed"]
    if failed:
        names = "; ".join(f"{o['config']} ({o['error']})" for o in failed)
        raise RunFailed(f"{len(failed)} of {len(outcomes)} configs failed: {names}. Comparison: {summary['markdown']}")
    return summary
