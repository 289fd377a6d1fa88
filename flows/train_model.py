"""Flow ``train-model``: one config file (+ overrides) -> one published run.

Deployed as ``train-model/gpu`` on the ``gpu`` work pool (one flow run per config, one per GPU);
``train-all`` calls it in-process (local dispatch) or through that deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, runtime

from emotion_core.config import load_run_config
from emotion_core.settings import default_store_uri
from emotion_core.store import RunId
from emotion_core.store.uris import check_uri
from tasks.training import publish_run, train_config


def _flow_run_name() -> str:
    """``train-model-<config name>`` (the file's stem if the config does not validate: the run fails anyway)."""
    params = runtime.flow_run.parameters
    try:
        name = load_run_config(params["config"], params.get("overrides")).name
    except Exception:
        name = Path(params["config"]).stem
    return f"train-model-{name}"


@flow(name="train-model", flow_run_name=_flow_run_name)
def train_model(
    config: str,
    store: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    publish_retries: int = 3,
) -> str:
    """Validate ``config`` (a YAML path) with ``overrides`` merged in, train it, publish it; returns the run URI.

    ``run_id``: set by ``train-all`` so it can find the run again; ``publish_retries``: attempts after
    the first to publish when the store is unreachable (delays 10 s, 20 s, 40 s, ...).
    """
    store = check_uri(store or default_store_uri(), "store")  # the CLI refuses it before the flow run exists
    if run_id is not None:
        run_id = RunId.parse(run_id, "run_id")  # before any work: it names folders in the store
    cfg = load_run_config(config, overrides)
    if run_id is not None:
        from emotion_core.pipeline import published_run_uri
        from tasks.storage import open_task_store

        existing = published_run_uri(open_task_store(store), run_id, cfg)
        if existing is not None:  # a re-dispatched child whose earlier attempt published before it crashed
            return existing
    staging, run_id = train_config(cfg, store, run_id)
    publish = publish_run.with_options(
        retries=publish_retries, retry_delay_seconds=[10 * 2**i for i in range(max(publish_retries, 1))]
    )
    return publish(staging, run_id, store)
