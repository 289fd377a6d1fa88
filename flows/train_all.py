"""Flow ``train-all``: every config of a set -> one run each -> evaluated, explained, compared, published.

Features
- ``dispatch="deployment"`` (the ``train-all/nightly`` deployment): one ``train-model/gpu`` flow run per
  config on the gpu pool, placed by GPU count and memory (``flows.dispatch``); crashed children are
  re-dispatched (``child_attempts``) and resume from their last checkpoint. ``dispatch="local"``: the
  children run one after another in this process (no re-dispatch).
- Each child evaluates, calibrates and explains (SHAP) its run where the model is and stores the results beside
  it (``emotion_core.run_analysis``); this flow gathers them (``gather-analysis``: validated, files checked
  against their sha256), and runs ``evaluate-run`` and ``explain-run`` itself only for a run without usable
  ones (an older run, a child whose evaluation failed: said in the log, ``evaluated_in`` of the entry).
  Then ``compare-runs`` (ensemble, paired tests, report in the store, artifacts, W&B, champion/challenger).
- A failed child is a failed row of the comparison and fails this flow at the end, naming its config.
  Cancelling this flow cancels its children. The ``children-<set>`` table records every outcome.
- Children get each config's validated content (not a path into this checkout) and this process's
  ``code_version``: a child on other code fails before training, and a run whose manifest names another
  code version is a failed row, not compared (a manifest without one counts as unknown and is compared).

Limits
- Store rules, checked before any dispatch: deployment dispatch needs a store every worker reaches
  (``s3://``, or a local folder with ``shared_filesystem``); an ``s3://`` bucket must exist
  (``$EMOTION_S3_CREATE_BUCKET=1``: created).
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_table_artifact

from emotion_core.config import ReportConfig, deep_merge, load_config_set
from emotion_core.errors import EmotionError, RunFailed
from emotion_core.models import preflight
from emotion_core.provenance import code_version
from emotion_core.records import ChildOutcome, ReportEntry
from emotion_core.run_analysis import AnalysisSettings
from emotion_core.settings import create_missing_bucket, default_store_uri
from emotion_core.settings import shared_filesystem as shared_disk_declared
from emotion_core.store import check_dispatch_store, is_local_store
from emotion_core.store.uris import check_uri
from flows.dispatch import (
    cancel_children_of,
    child_run_id,
    default_heartbeat_timeout_s,
    queue_capacities,
    queue_for,
    start_children,
    wait_for_children,
)
from flows.train_model import train_model
from tasks.analysis import compare_runs, evaluate_run, explain_run, gather_analysis
from tasks.artifacts import artifact_key
from tasks.storage import open_task_store


def check_store(store: str, dispatch: str, shared_filesystem: bool) -> None:
    """The store rules of the module docstring; raises ``StoreError`` before any training or dispatch."""
    if dispatch == "deployment":
        check_dispatch_store(store, shared_filesystem)
    if not is_local_store(store):
        open_task_store(store).ensure_bucket(create=create_missing_bucket())


def _cancel_children(flow, flow_run, state) -> None:
    cancel_children_of(flow_run.id)


@flow(name="train-all", on_cancellation=[_cancel_children], on_crashed=[_cancel_children])
def train_all(
    config_set: str = "deployments/sets/cpu-demo.yaml",
    store: str | None = None,
    dataset: str | None = None,
    overrides: dict[str, Any] | None = None,
    dispatch: Literal["local", "deployment"] = "local",
    child_deployment: str = "train-model/gpu",
    queues: dict[str, Any] | None = None,
    poll_interval_s: float = 2.0,
    child_attempts: int = 2,
    heartbeat_timeout_s: float | None = None,
    shared_filesystem: bool = False,
) -> dict:
    """Train every config of ``config_set`` and publish the comparison; returns where it was written.

    ``dataset`` replaces ``data.dataset`` in every config; ``overrides`` are merged into every config;
    ``queues``: the gpu pool's work queues -> ``{min_gpu_memory_gb, gpus}`` (their cards' smallest GPU
    memory in GiB, cards per worker; GiB alone: one card) (default: ``deployments/pools/pools.yaml``).
    Deployment dispatch only: ``child_attempts``: flow runs per config at most (a crashed one is
    re-dispatched and resumes; 1: never); ``heartbeat_timeout_s``: silence after which a RUNNING child
    counts as dead (default from ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``; 0: never); ``shared_filesystem``:
    the children may use a local store because every worker sees this disk (also ``$EMOTION_SHARED_FILESYSTEM=1``).
    """
    store = check_uri(store or default_store_uri(), "store")  # the CLI refuses it before the flow run exists
    check_store(store, dispatch, shared_filesystem or shared_disk_declared())
    logger = get_run_logger()
    spec, configs = load_checked_set(config_set, dataset, overrides)
    analysis = AnalysisSettings.of_report(spec.report).model_dump()  # each child evaluates its run with these
    planned = [{**p, "analysis": analysis} for p in plan_children(configs, queues or queue_capacities("gpu"))]
    logger.info("config set %s: %d configs -> %s (%s dispatch)", spec.name, len(planned), store, dispatch)
    if dispatch == "deployment":
        outcomes = run_on_deployment(
            planned, store, spec.name, child_deployment, poll_interval_s, child_attempts, heartbeat_timeout_s, logger
        )
    else:
        outcomes = run_in_process(planned, store)
    outcomes = check_code_versions(outcomes, store, code_version())
    record_children(spec.name, outcomes, logger)
    summary = compare(spec.name, spec.report, outcomes, store)
    fail_if_any_failed(summary, len(outcomes))
    return summary


def load_checked_set(config_set: str, dataset: str | None, overrides: dict[str, Any] | None):
    """The set spec and its configs, each validated and preflight-checked before anything is dispatched."""
    overrides = deep_merge(overrides or {}, {"data": {"dataset": dataset}} if dataset else {})
    spec, configs = load_config_set(config_set, overrides)
    for entry in configs:  # architecture, bitsandbytes, GPU memory
        preflight.check(entry.config, str(entry.path))
    return spec, configs


def plan_children(configs, queues: dict[str, Any]) -> list[dict]:
    """One child per config: its run id and queue (a config no queue holds fails here, before any child starts)."""
    started = datetime.now(UTC)
    parent_id = str(runtime.flow_run.id or os.getpid())
    return [
        {
            "config": e.config.name,
            "content": e.config.model_dump(mode="json"),  # overrides merged in, validated
            "run_id": child_run_id(e.config.name, started, parent_id),
            "gpus": e.config.resources.gpus,
            "gpu_memory_gb": e.config.resources.gpu_memory_gb,
            "queue": queue_for(e.config.name, e.config.resources.gpu_memory_gb, queues, e.config.resources.gpus),
        }
        for e in configs
    ]


def run_on_deployment(
    planned: list[dict],
    store: str,
    set_name: str,
    deployment: str,
    poll_interval_s: float,
    attempts: int,
    heartbeat_timeout_s: float | None,
    logger,
) -> list[ChildOutcome]:
    """Dispatch every child to ``deployment`` at once and wait for all of them, re-dispatching crashed ones."""
    version = code_version()
    children = start_children(
        deployment,
        [
            {
                **p,
                "parameters": {
                    "config": p["content"],
                    "store": store,
                    "run_id": p["run_id"],
                    "code_version": version,
                    "analysis": p["analysis"],
                },
            }
            for p in planned
        ],
        tags=["train-all", set_name],
    )
    logger.info(
        "dispatched %d runs of %s: %s", len(children), deployment, ", ".join(f"{c.config}->{c.queue}" for c in children)
    )
    timeout = default_heartbeat_timeout_s() if heartbeat_timeout_s is None else heartbeat_timeout_s or None
    logger.info(
        "crashed children are re-dispatched (up to %d flow runs each); heartbeat check: %s",
        attempts,
        f"a child without a heartbeat for {timeout:.0f}s counts as dead" if timeout else "off",
    )
    wait_for_children(
        children, poll_interval_s, logger, deployment=deployment, max_attempts=attempts, heartbeat_timeout_s=timeout
    )
    return [c.outcome() for c in children]


def run_in_process(planned: list[dict], store: str) -> list[ChildOutcome]:
    """Run the children one after another in this process."""
    outcomes = []
    for p in planned:
        state = train_model(
            config=p["content"],
            store=store,
            run_id=p["run_id"],
            code_version=code_version(),
            analysis=p["analysis"],
            return_state=True,
        )
        error = None
        if not state.is_completed():
            raised = state.result(raise_on_failure=False)
            error = f"{type(raised).__name__}: {raised}" if isinstance(raised, BaseException) else str(state.message)
        outcomes.append(ChildOutcome(config=p["config"], run_id=p["run_id"], state=state.type.value, error=error))
    return outcomes


def check_code_versions(outcomes: list[ChildOutcome], store: str, expected: str) -> list[ChildOutcome]:
    """The outcomes, each completed run whose manifest names another code version than ``expected`` turned into
    a failed one naming the run and both versions (an unreadable manifest is left to the evaluation to report)."""
    checked = []
    for o in outcomes:
        if not o.failed:
            try:
                found = open_task_store(store).read_manifest(o.run_id).get("code_version")
            except EmotionError:
                found = None
            if isinstance(found, str) and found != expected:
                o = replace(
                    o,
                    state="FAILED",
                    error=f"run {o.run_id} was trained by code {found}, this train-all runs {expected}: not compared",
                )
        checked.append(o)
    return checked


def record_children(set_name: str, outcomes: list[ChildOutcome], logger) -> None:
    """Log each failed child and publish the ``children-<set>`` table artifact."""
    for o in outcomes:
        if o.failed:
            logger.error("config %s failed: %s", o.config, o.error)
    create_table_artifact(
        key=f"children-{artifact_key(set_name)}",
        table=[o.to_dict() for o in outcomes],
        description=f"train-all {set_name}: one child run per config",
    )


def compare(set_name: str, report: ReportConfig, outcomes: list[ChildOutcome], store: str) -> dict:
    """Gather every run's evaluation and explanation, then compare them all and publish the report; the
    ``compare-runs`` result."""
    report_name = f"{set_name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    report_dir = str(open_task_store(store).staging(report_name))
    settings = AnalysisSettings.of_report(report).model_dump()
    entries = [gathered_or_evaluated(o, store, report_dir, settings) for o in outcomes if not o.failed]
    return compare_runs(
        set_name,
        [o.to_dict() for o in outcomes],
        [e.to_dict() for e in entries],
        store,
        report_dir,
        report_name,
        report.bootstrap_samples,
        report.seed,
        report.ensemble_top_k,
        report.champion.model_dump(),
        report.ensemble.model_dump(),
    )


def gathered_or_evaluated(outcome: ChildOutcome, store: str, report_dir: str, settings: dict) -> ReportEntry:
    """The run's entry as its child stored it; else evaluated and explained here (the task logs which and why)."""
    stored = gather_analysis(outcome.config, outcome.run_id, store, report_dir, settings)
    if stored is not None:
        return replace(ReportEntry.from_dict(stored), evaluated_in="child")
    evaluated = evaluate_run(
        outcome.config, outcome.run_id, store, report_dir, settings["bootstrap_samples"], settings["seed"]
    )
    entry = ReportEntry.from_dict(evaluated)
    if not entry.completed:
        return entry
    explanation = explain_run(entry.name, entry.run_id, store, report_dir)
    return replace(entry, explanation=explanation, evaluated_in="parent")


def fail_if_any_failed(summary: dict, configs: int) -> None:
    """``RunFailed`` naming every failed config (after the comparison is published)."""
    failed = summary["failed"]
    if failed:
        names = "; ".join(f"{o['config']} ({o['error']})" for o in failed)
        raise RunFailed(f"{len(failed)} of {configs} configs failed: {names}. Comparison: {summary['markdown']}")
