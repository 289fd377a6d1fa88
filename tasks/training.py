"""Tasks: train one validated config into a staged run, then publish it (retried on store outages).

Training is not retried here (a bad config or a diverging model fails the same way twice); the
publish step is, with growing delays, because an object store outage is usually transient. Both
run in the same process, so the staged run survives between publish attempts.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from emotion_core.config import RunConfig
from tasks.artifacts import artifact_key
from tasks.secrets import secrets_in_env
from tasks.storage import block_store_env, open_task_store

# emotion_core.pipeline (torch, transformers) is imported inside the tasks: the train-all parent
# imports this module too and only dispatches, so it starts in seconds, not ten.


def run_context() -> dict:
    """Where this run executes: flow run, deployment, work pool/queue, worker, host, visible GPUs."""
    from prefect import runtime

    context = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "worker": os.environ.get("EMOTION_WORKER_NAME"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    flow_run_id = runtime.flow_run.id
    if flow_run_id:
        context.update(
            flow_run_id=str(flow_run_id), flow_run_name=runtime.flow_run.name, deployment=runtime.deployment.name
        )
        try:
            from prefect import get_client

            with get_client(sync_client=True) as client:
                run = client.read_flow_run(flow_run_id)
            context.update(work_pool=run.work_pool_name, work_queue=run.work_queue_name)
        except Exception:  # monitoring must never fail a run
            pass
    return context


class ProgressReporter:
    """Progress events -> one log line each and a progress artifact (key ``progress-<config>``)."""

    def __init__(self, config_name: str) -> None:
        self.config_name = config_name
        self.artifact_id = None
        self.logger = get_run_logger()

    def __call__(self, event: dict) -> None:
        percent = round(100.0 * float(event.get("fraction") or 0.0), 1)
        line = describe_progress(self.config_name, event)
        self.logger.info(line)
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(
                percent, key=f"progress-{artifact_key(self.config_name)}", description=line
            )
        else:
            update_progress_artifact(self.artifact_id, percent, description=line)


def describe_progress(name: str, event: dict) -> str:
    parts = [f"{name}: {event.get('event')}", f"step {event.get('step')}/{event.get('max_steps')}"]
    if event.get("epoch") is not None:
        parts.append(f"epoch {float(event['epoch']):.2f}")
    if event.get("loss") is not None:
        parts.append(f"loss {float(event['loss']):.4f}")
    for key, value in (event.get("metrics") or {}).items():
        if isinstance(value, (int, float)) and "macro_f1" in key:
            parts.append(f"{key} {value:.4f}")
    if event.get("eta_s") is not None:
        parts.append(f"eta {float(event['eta_s']):.0f}s")
    device = event.get("device") or {}
    if device.get("kind") == "cuda":
        parts.append(
            f"{device.get('name')} util {device.get('utilization_percent')}% "
            f"mem {device.get('memory_used_gib')}/{device.get('memory_total_gib')} GiB "
            f"(peak alloc {device.get('peak_allocated_gib')} GiB)"
        )
    elif device:
        parts.append(f"cpu {device.get('process_cpu_percent')}% rss {device.get('rss_gib')} GiB")
    return " | ".join(parts)


@task(name="train-config", task_run_name="train-{cfg.name}")
def train_config(cfg: RunConfig, store_uri: str, run_id: str | None = None) -> tuple[str, str]:
    """Train ``cfg`` into a staged run of the store; returns ``(staging folder, run_id)``."""
    from emotion_core import pipeline, provenance

    logger = get_run_logger()
    context = run_context()
    logger.info(
        "training %s (%s: %s) on %s worker=%s pool=%s queue=%s; device: %s",
        cfg.name,
        cfg.model.family,
        getattr(cfg.model, "model", "-"),
        context["host"],
        context.get("worker"),
        context.get("work_pool"),
        context.get("work_queue"),
        provenance.device_facts(),
    )
    with secrets_in_env(logger) as secrets:  # HF_TOKEN / WANDB_API_KEY from Secret blocks, while training only
        if cfg.resources.gpus > 1:  # torchrun ranks (emotion_core.training.distributed); rank 0 stages the run
            from emotion_core.training import distributed

            staging, run_id = distributed.launch(
                cfg,
                store_uri,
                run_id,
                progress=ProgressReporter(cfg.name),
                context=context,
                env={**block_store_env(store_uri), **secrets},
            )
            return str(staging), run_id
        store = open_task_store(store_uri)
        staging, run_id = pipeline.train_run(
            cfg, store, run_id=run_id, progress=ProgressReporter(cfg.name), context=context
        )
    return str(staging), run_id


def _retry_unless_conflict(task, task_run, state) -> bool:
    """Retry a failed publish (a store outage), except a different run under the same id: it fails the same way."""
    from emotion_core.store import RunIdConflict

    error = state.data
    if not isinstance(error, BaseException):
        try:
            error = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - unknown error: retry as before
            return True
    return not isinstance(error, RunIdConflict)


@task(name="publish-run", task_run_name="publish-{run_id}", retry_condition_fn=_retry_unless_conflict)
def publish_run(staging: str, run_id: str, store_uri: str) -> str:
    """Publish a staged run (files first, manifest last); returns its URI."""
    from emotion_core import pipeline

    uri = pipeline.publish_run(open_task_store(store_uri), Path(staging), run_id)
    get_run_logger().info("published %s", uri)
    return uri
