"""Flow ``train-all``: every config of a set -> one run each -> evaluated, explained, compared, published.

Two ways to run the children, same outcome records:
- ``dispatch="deployment"`` (the ``train-all/nightly`` deployment): one ``train-model/gpu`` flow run
  per config, created at once on the gpu pool and placed on a work queue by the config's GPU count and memory
  need (``flows.dispatch``); the workers' concurrency decides how many train at the same time;
- ``dispatch="local"``: children run one after another in this process (a laptop, CI).
Then, in this flow: ``evaluate-run`` per run (test metrics with bootstrap CIs, PR/ROC-AUC, ECE,
temperature scaling, reliability diagram), ``explain-run`` per run (SHAP on a seeded test sample,
cached) and ``compare-runs`` (ensemble of the best runs, paired bootstrap against the best, the HTML
/ markdown / CSV report in the store, Prefect artifacts, W&B) with the champion/challenger decision
per dataset (``emotion_core.registry``: promoted only if clearly better; every decision recorded).
A child that fails is recorded as failed in the comparison and fails this flow at the end with a
message naming its config; the others are still compared. Cancelling this flow cancels its children.

Crashed children (deployment dispatch): a child whose flow-run process or worker was killed is
re-dispatched with the same ``run_id`` (``child_attempts`` flow runs at most, default 2), and
resumes from the last training checkpoint its run put in the artefact store
(``training.checkpoint_every_steps``). A child counts as crashed when Prefect reports it CRASHED
(its worker saw the process die) or, when the worker died too and the run stays RUNNING, when its
flow-run heartbeats (``prefect.flow-run.heartbeat`` events, every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds) stop for ``heartbeat_timeout_s`` (default ``2 x frequency + 30 s``): the parent then marks
it CRASHED itself. Details and limits in ``flows.dispatch``. The ``children-<set>`` table records
each child's ``attempts`` and its earlier flow runs. In-process ``dispatch="local"`` does not
re-dispatch (a crash there takes the parent down with it).

Store rules, checked before anything is dispatched: deployment dispatch needs a store every worker
reaches (``s3://``); a local folder is refused unless ``shared_filesystem`` (or ``$EMOTION_SHARED_FILESYSTEM``)
declares one disk for all. The bucket of an ``s3://`` store must exist (``$EMOTION_S3_CREATE_BUCKET=1``: created).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Literal

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_table_artifact

from emotion_core.config import deep_merge, load_config_set
from emotion_core.errors import RunFailed
from emotion_core.models import preflight
from emotion_core.settings import create_missing_bucket, default_store_uri, shared_filesystem as shared_disk_declared
from emotion_core.store import check_dispatch_store, is_local_store
from emotion_core.store.uris import check_uri
from flows.dispatch import (cancel_children_of, child_run_id, config_gpus, default_heartbeat_timeout_s,
                            queue_capacities, queue_for, start_children, wait_for_children)
from flows.train_model import train_model
from tasks.analysis import compare_runs, evaluate_run, explain_run
from tasks.storage import open_task_store
from tasks.artifacts import artifact_key


def check_store(store: str, dispatch: str, shared_filesystem: bool) -> None:
    """The store rules of the module docstring; raises ``StoreError`` before any training or dispatch."""
    if dispatch == "deployment":
        check_dispatch_store(store, shared_filesystem)
    if not is_local_store(store):
        open_task_store(store).ensure_bucket(create=create_missing_bucket())


def _cancel_children(flow, flow_run, state) -> None:
    cancel_children_of(flow_run.id)


@flow(name="train-all", on_cancellation=[_cancel_children], on_crashed=[_cancel_children])
def train_all(config_set: str = "deployments/sets/cpu-demo.yaml", store: str | None = None,
              dataset: str | None = None, overrides: dict[str, Any] | None = None,
              dispatch: Literal["local", "deployment"] = "local", child_deployment: str = "train-model/gpu",
              queues: dict[str, Any] | None = None, poll_interval_s: float = 2.0, child_attempts: int = 2,
              heartbeat_timeout_s: float | None = None, shared_filesystem: bool = False) -> dict:
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
    overrides = deep_merge(overrides or {}, {"data": {"dataset": dataset}} if dataset else {})
    spec, entries = load_config_set(config_set, overrides)  # every config validated before any training
    for entry in entries:  # architecture, bitsandbytes, GPU memory: before anything is dispatched
        preflight.check(entry.config, str(entry.path))
    queues = queues or queue_capacities("gpu")
    started = datetime.now(timezone.utc)
    parent_id = str(runtime.flow_run.id or os.getpid())
    planned = [{"config": e.config.name, "path": os.path.normpath(e.path), "overrides": e.overrides,
                "run_id": child_run_id(e.config.name, started, parent_id),
                "gpus": config_gpus(e.config),
                "queue": queue_for(e.config.name, e.config.resources.gpu_memory_gb, queues, config_gpus(e.config))}
               for e in entries]  # a config no queue holds fails here, before any child starts
    logger.info("config set %s: %d configs -> %s (%s dispatch)", spec.name, len(planned), store, dispatch)

    if dispatch == "deployment":
        children = start_children(child_deployment, [
            {**p, "parameters": {"config": p["path"], "store": store, "overrides": p["overrides"], "run_id": p["run_id"]}}
            for p in planned], tags=["train-all", spec.name])
        logger.info("dispatched %d runs of %s: %s", len(children), child_deployment,
                    ", ".join(f"{c.config}->{c.queue}" for c in children))
        timeout = default_heartbeat_timeout_s() if heartbeat_timeout_s is None else heartbeat_timeout_s or None
        logger.info("crashed children are re-dispatched (up to %d flow runs each); heartbeat check: %s", child_attempts,
                    f"a child without a heartbeat for {timeout:.0f}s counts as dead" if timeout else "off")
        wait_for_children(children, poll_interval_s, logger, deployment=child_deployment,
                          max_attempts=child_attempts, heartbeat_timeout_s=timeout)
        outcomes = [c.outcome() for c in children]
    else:
        outcomes = []
        for p in planned:
            state = train_model(config=p["path"], store=store, overrides=p["overrides"], run_id=p["run_id"],
                                return_state=True)
            if state.is_completed():
                outcomes.append({"config": p["config"], "run_id": p["run_id"], "state": "COMPLETED"})
            else:
                error = state.result(raise_on_failure=False)
                message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(state.message)
                outcomes.append({"config": p["config"], "run_id": p["run_id"], "state": state.type.value,
                                 "status": "failed", "error": message})
    for o in outcomes:
        if o.get("status") == "failed":
            logger.error("config %s failed: %s", o["config"], o["error"])

    create_table_artifact(key=f"children-{artifact_key(spec.name)}", table=outcomes,
                          description=f"train-all {spec.name}: one child run per config")
    report = spec.report
    report_name = f"{spec.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    report_dir = str(open_task_store(store).staging(report_name))
    entries = [evaluate_run(o["config"], o["run_id"], store, report_dir, report.bootstrap_samples, report.seed)
               for o in outcomes if o.get("status") != "failed"]
    for entry in entries:
        if entry["status"] == "completed":
            entry["explanation"] = explain_run(entry, store, report_dir)
    summary = compare_runs(spec.name, outcomes, entries, store, report_dir, report_name, report.bootstrap_samples,
                           report.seed, report.ensemble_top_k, report.champion.model_dump())
    failed = summary["failed"]
    if failed:
        names = "; ".join(f"{o['config']} ({o['error']})" for o in failed)
        raise RunFailed(f"{len(failed)} of {len(outcomes)} configs failed: {names}. Comparison: {summary['markdown']}")
    return summary
