"""Deployment dispatch for ``train-all``: one ``train-model`` flow run per config on the gpu pool.

Features:
- placement: a config's ``resources.gpu_memory_gb`` picks the smallest work queue whose cards are
  big enough (``queue_for``); a config no queue can hold fails before anything is dispatched;
- every child is created at once with ``run_deployment(timeout=0)`` (linked as a subflow, with an
  idempotency key so a retried parent re-attaches to its children instead of training twice),
  then all are polled until each reaches a final state; state changes are logged;
- the parent never loses a child: each outcome carries its final state and message;
- cancelling (or killing) the parent cancels the children still queued or running, both from the
  wait loop and from the flow's ``on_cancellation`` hook (Prefect does not do it for
  ``run_deployment`` children).
Limits: children's return values are not read (no shared result storage needed); the parent finds
each run in the artefact store by the ``run_id`` it assigned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable
from uuid import UUID

import yaml

from emotion_core.errors import ConfigError

POOLS_FILE = Path(__file__).resolve().parent.parent / "deployments" / "pools" / "pools.yaml"


def load_pools(path: str | Path = POOLS_FILE) -> dict[str, dict]:
    """The work-pool spec (``deployments/pools/pools.yaml``): pool name -> type, limit, queues."""
    try:
        pools = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the work-pool spec: {exc}") from None
    if not isinstance(pools, dict) or not all(isinstance(v, dict) for v in pools.values()):
        raise ConfigError(f"{path}: expected a mapping of pool name -> settings")
    return pools


def queue_capacities(pool: str = "gpu", path: str | Path = POOLS_FILE) -> dict[str, float]:
    """Queue -> smallest GPU memory (GiB) of the cards whose workers serve it."""
    queues = (load_pools(path).get(pool) or {}).get("queues") or {}
    capacities = {name: float(q["min_gpu_memory_gb"]) for name, q in queues.items() if "min_gpu_memory_gb" in q}
    if not capacities:
        raise ConfigError(f"{path}: pool '{pool}' has no queues with min_gpu_memory_gb")
    return capacities


def queue_for(config_name: str, gpu_memory_gb: float, queues: dict[str, float]) -> str:
    """The queue with the smallest cards that still hold ``gpu_memory_gb``."""
    fitting = sorted((capacity, name) for name, capacity in queues.items() if capacity >= gpu_memory_gb)
    if not fitting:
        largest = max(queues.values(), default=0)
        raise ConfigError(f"config '{config_name}': resources.gpu_memory_gb={gpu_memory_gb:g} exceeds every work queue "
                          f"(largest: {largest:g} GiB in {sorted(queues)})")
    return fitting[0][1]


def child_run_id(config_name: str, started: datetime, parent_id: str) -> str:
    """The run id a child publishes under: readable, sortable, unique per parent run."""
    return f"{config_name}-{started:%Y%m%dT%H%M%SZ}-{parent_id.replace('-', '')[:8]}"


@dataclass
class Child:
    config: str
    run_id: str
    queue: str
    flow_run_id: UUID
    created_s: float  # seconds the create call took (API round trip)
    state: str = "SCHEDULED"
    message: str = ""
    timings: dict[str, Any] = field(default_factory=dict)

    def outcome(self) -> dict:
        done = self.state == "COMPLETED"
        base = {"config": self.config, "run_id": self.run_id, "flow_run_id": str(self.flow_run_id),
                "queue": self.queue, "state": self.state, **self.timings}
        return base if done else {**base, "status": "failed", "error": f"child {self.state.lower()}: {self.message}"}


def start_children(deployment: str, specs: Iterable[dict], tags: list[str]) -> list[Child]:
    """Create one flow run of ``deployment`` per spec (``config``, ``run_id``, ``queue``, ``parameters``)."""
    from prefect.deployments import run_deployment

    children = []
    for spec in specs:
        started = time.perf_counter()
        run = run_deployment(deployment, parameters=spec["parameters"], timeout=0, as_subflow=True,
                             work_queue_name=spec["queue"], flow_run_name=f"train-model-{spec['config']}",
                             idempotency_key=spec["run_id"], tags=tags)
        children.append(Child(spec["config"], spec["run_id"], spec["queue"], run.id, time.perf_counter() - started))
    return children


def wait_for_children(children: list[Child], poll_interval_s: float, logger) -> None:
    """Poll until every child is final; on any interruption cancel the unfinished ones, then re-raise."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    by_id = {c.flow_run_id: c for c in children}
    try:
        with get_client(sync_client=True) as client:
            while True:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(by_id))),
                                             limit=len(by_id))
                for run in runs:
                    child = by_id[run.id]
                    state = run.state.type.value if run.state else "SCHEDULED"
                    if state != child.state:
                        logger.info("child %s (%s): %s -> %s%s", child.config, run.name, child.state, state,
                                    f" ({run.state.message})" if run.state and run.state.message and state != "RUNNING" else "")
                    child.state, child.message = state, (run.state.message or "") if run.state else ""
                    child.timings = {
                        "dispatch_s": _seconds(run.created, run.start_time),
                        "run_s": _seconds(run.start_time, run.end_time),
                    }
                if all(c.state in FINAL for c in children):
                    return
                time.sleep(poll_interval_s)
    except BaseException:
        logger.warning("train-all interrupted: cancelling its unfinished children")
        cancel_flow_runs([c.flow_run_id for c in children if c.state not in FINAL])
        raise


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def _seconds(start, end) -> float | None:
    return round((end - start).total_seconds(), 2) if start and end else None


def cancel_flow_runs(ids: list[UUID]) -> None:
    """Ask Prefect to cancel these flow runs (their workers stop them); final runs are left as they are."""
    from prefect import get_client
    from prefect.states import Cancelling

    if not ids:
        return
    with get_client(sync_client=True) as client:
        for flow_run_id in ids:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.type.value not in FINAL:
                client.set_flow_run_state(flow_run_id, Cancelling(message="parent train-all was cancelled"), force=True)


def cancel_children_of(parent_flow_run_id: UUID) -> None:
    """``on_cancellation`` / ``on_crashed`` hook body: cancel every unfinished child of a parent run."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_flow_run_id])))
    cancel_flow_runs([r.id for r in runs])
