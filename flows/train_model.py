"""Flow ``train-model``: one config (a YAML path, or its content from ``train-all``) + overrides -> one published run.

Deployed as ``train-model/gpu`` on the ``gpu`` work pool (one flow run per config, one per GPU);
``train-all`` calls it in-process (local dispatch) or through that deployment, passing the config's
validated content (a worker has no checkout to read a path from) and its own ``code_version``: a child
running other code fails before training (``CodeVersionMismatch``). With ``analysis`` the child then
evaluates, calibrates and explains (SHAP) the run where the model is and stores the results beside it
(``emotion_core.run_analysis``); a failure there is logged and the parent evaluates the run itself.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime

from emotion_core.config import RunConfig, deep_merge, load_run_config, parse_run_config
from emotion_core.errors import CodeVersionMismatch, ConfigError
from emotion_core.provenance import code_version as own_code_version
from emotion_core.records import ReportEntry
from emotion_core.run_analysis import AnalysisSettings
from emotion_core.settings import default_store_uri
from emotion_core.store import RunId
from emotion_core.store.uris import check_uri
from tasks.analysis import evaluate_run, explain_run, store_analysis
from tasks.training import publish_run, train_config


def resolve_config(config: str | dict[str, Any], overrides: dict[str, Any] | None = None) -> RunConfig:
    """A YAML path (CLI, local use) or a config mapping (from ``train-all``), ``overrides`` merged in, validated."""
    if isinstance(config, dict):
        name = config.get("name")
        return parse_run_config(deep_merge(config, overrides or {}), f"config '{name}' (parameter 'config')")
    if isinstance(config, str):
        return load_run_config(config, overrides)
    raise ConfigError(f"parameter 'config': expected a YAML path or a config mapping, got {type(config).__name__}")


def check_code_version(expected: str | None) -> None:
    """``CodeVersionMismatch`` naming both versions unless this process runs the code ``expected`` names."""
    if expected is None:
        return
    own = own_code_version()
    if own != expected:
        raise CodeVersionMismatch(
            f"this worker runs code {own}, its parent train-all runs {expected}: nothing was trained. "
            f"Redeploy (the workers pull the code of the last deploy) and run train-all again"
        )


def _flow_run_name() -> str:
    """``train-model-<config name>`` (the file's stem if the config does not validate: the run fails anyway)."""
    params = runtime.flow_run.parameters
    config = params["config"]
    try:
        name = resolve_config(config, params.get("overrides")).name
    except Exception:
        name = str(config.get("name")) if isinstance(config, dict) else Path(str(config)).stem
    return f"train-model-{name}"


@flow(name="train-model", flow_run_name=_flow_run_name)
def train_model(
    config: str | dict[str, Any],
    store: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    publish_retries: int = 3,
    code_version: str | None = None,
    analysis: dict[str, Any] | None = None,
) -> str:
    """Validate ``config`` (a YAML path or a config mapping) with ``overrides`` merged in, train it, publish it;
    returns the run URI.

    ``run_id``: set by ``train-all`` so it can find the run again; ``publish_retries``: attempts after
    the first to publish when the store is unreachable (delays 10 s, 20 s, 40 s, ...); ``code_version``:
    the parent's ``provenance.code_version()`` (unset: not checked); ``analysis``
    (``run_analysis.AnalysisSettings``: the set's bootstrap samples and seed; set by ``train-all``): evaluate,
    calibrate and explain the published run here and store the results beside it (None: not done).
    """
    check_code_version(code_version)  # first: other code must not even validate the config
    store = check_uri(store or default_store_uri(), "store")  # the CLI refuses it before the flow run exists
    if run_id is not None:
        run_id = RunId.parse(run_id, "run_id")  # before any work: it names folders in the store
    settings = AnalysisSettings.model_validate(analysis) if analysis is not None else None  # before training
    cfg = resolve_config(config, overrides)
    if run_id is not None:
        from emotion_core.pipeline import published_run_uri
        from tasks.storage import open_task_store

        existing = published_run_uri(open_task_store(store), run_id, cfg)
        if existing is not None:  # a re-dispatched child whose earlier attempt published before it crashed
            if settings is not None:  # it may have crashed before storing the analysis
                analyse_published_run(cfg.name, run_id, store, settings)
            return existing
    staging, run_id = train_config(cfg, store, run_id)
    publish = publish_run.with_options(
        retries=publish_retries, retry_delay_seconds=[10 * 2**i for i in range(max(publish_retries, 1))]
    )
    uri = publish(staging, run_id, store)
    if settings is not None:
        analyse_published_run(cfg.name, run_id, store, settings)
    return uri


def analyse_published_run(name: str, run_id: str, store: str, settings: AnalysisSettings) -> None:
    """Evaluate, calibrate and explain the run where its model is, then store the results beside it (never fatal:
    without them the parent evaluates the run itself)."""
    with tempfile.TemporaryDirectory(prefix="emotion-analysis-") as folder:
        evaluated = evaluate_run(name, run_id, store, folder, settings.bootstrap_samples, settings.seed)
        entry = ReportEntry.from_dict(evaluated)
        if not entry.completed:  # logged by the task; the parent tries again and reports the failure
            get_run_logger().warning("config %s: nothing stored, the parent will evaluate run %s", name, run_id)
            return
        entry = replace(entry, explanation=explain_run(name, run_id, store, folder))
        store_analysis(entry.to_dict(), store, folder, settings.model_dump())
