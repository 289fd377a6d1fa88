"""Deployment dispatch for ``train-all``: one ``train-model`` flow run per config on the gpu pool.

Features
- Placement (``queue_for``): the queue whose workers own exactly ``resources.gpus`` cards, the smallest
  that holds ``resources.gpu_memory_gb``; a config no queue holds fails before anything is dispatched.
- ``start_children``: every child created at once (``run_deployment(timeout=0)``, a subflow, with an
  idempotency key: a retried parent re-attaches instead of training twice); ``wait_for_children`` polls
  them to a final state, logging state changes.
- Crashed children (CRASHED, a rank died, or RUNNING/PENDING without a ``prefect.flow-run.heartbeat`` for
  ``heartbeat_timeout_s``, default ``2 x PREFECT_FLOWS_HEARTBEAT_FREQUENCY + 30 s``) are re-dispatched with
  the same ``run_id`` and resume from their last checkpoint, up to ``max_attempts`` flow runs.
- Cancelling or killing the parent cancels its unfinished children.

Limits
- FAILED children are not retried. Children's return values are not read: the parent finds each run
  in the store by its ``run_id``. A child wrongly presumed dead trains twice under one run id.
- Detection runs in the parent: while the parent is down, dead children are not re-dispatched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

from emotion_core.config import load_yaml
from emotion_core.errors import RANK_DIED, ConfigError
from emotion_core.records import ChildOutcome

POOLS_FILE = Path(__file__).resolve().parent.parent / "deployments" / "pools" / "pools.yaml"


def load_pools(path: str | Path = POOLS_FILE) -> dict[str, dict]:
    """The work-pool spec (``deployments/pools/pools.yaml``): pool name -> type, limit, queues."""
    try:
        pools = load_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the work-pool spec: {exc}") from None
    if not isinstance(pools, dict) or not all(isinstance(v, dict) for v in pools.values()):
        raise ConfigError(f"{path}: expected a mapping of pool name -> settings")
    return pools


def _queue_shape(name: str, value: Any) -> tuple[float, int]:
    """``(min_gpu_memory_gb, gpus)`` of a queue given as GiB (one card) or ``{min_gpu_memory_gb, gpus}``."""
    spec = value if isinstance(value, dict) else {"min_gpu_memory_gb": value}
    memory, gpus = spec.get("min_gpu_memory_gb"), spec.get("gpus", 1)
    # bool is an int subclass: `gpus: true` is a typo, not one card.
    if isinstance(memory, bool) or not isinstance(memory, (int, float)) or not memory > 0:
        raise ConfigError(f"work queue '{name}': min_gpu_memory_gb must be a positive number of GiB, got {memory!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"work queue '{name}': gpus must be a whole number of cards >= 1, got {gpus!r}")
    return float(memory), gpus


def queue_capacities(pool: str = "gpu", path: str | Path = POOLS_FILE) -> dict[str, dict]:
    """Queue -> ``{min_gpu_memory_gb, gpus}``: the smallest cards of its workers, and how many each worker owns."""
    queues = (load_pools(path).get(pool) or {}).get("queues") or {}
    capacities = {}
    for name, q in queues.items():
        if isinstance(q, dict) and "min_gpu_memory_gb" in q:
            memory, gpus = _queue_shape(name, q)
            capacities[name] = {"min_gpu_memory_gb": memory, "gpus": gpus}
    if not capacities:
        raise ConfigError(f"{path}: pool '{pool}' has no queues with min_gpu_memory_gb")
    return capacities


def describe_queues(queues: dict[str, Any]) -> str:
    """``gpu-large (1 x >= 40 GiB), ...``: what a pool offers, for error messages."""
    shapes = sorted((*reversed(_queue_shape(name, value)), name) for name, value in queues.items())
    return ", ".join(f"{name} ({gpus} x >= {memory:g} GiB)" for gpus, memory, name in shapes) or "no queues"


def queue_for(config_name: str, gpu_memory_gb: float, queues: dict[str, Any], gpus: int = 1) -> str:
    """The queue of ``gpus``-card workers with the smallest cards that still hold ``gpu_memory_gb`` each.

    ``queues``: name -> ``{min_gpu_memory_gb, gpus}`` (or GiB alone: one card). Exact card count: a
    worker with more cards than the run uses would leave the rest idle for the whole run.
    """
    shapes = {name: _queue_shape(name, value) for name, value in queues.items()}
    fitting = sorted(
        (memory, name) for name, (memory, count) in shapes.items() if count == gpus and memory >= gpu_memory_gb
    )
    if not fitting:
        raise ConfigError(
            f"config '{config_name}': resources.gpus={gpus}, gpu_memory_gb={gpu_memory_gb:g} "
            f"fits no work queue of the gpu pool; the queues offer: {describe_queues(queues)}. "
            f"Lower resources.gpus or gpu_memory_gb, or add a queue (deployments/pools/pools.yaml) "
            f"and workers with that many cards (deployments/gpu_workers.py --gpus-per-worker)"
        )
    return fitting[0][1]


def child_run_id(config_name: str, started: datetime, parent_id: str) -> str:
    """The run id a child publishes under: readable, sortable, unique per parent run."""
    return f"{config_name}-{started:%Y%m%dT%H%M%SZ}-{parent_id.replace('-', '')[:8]}"


@dataclass
class Child:
    """One config's ``train-model`` flow run as the parent tracks it (the latest attempt's state)."""

    config: str
    run_id: str
    queue: str
    flow_run_id: UUID
    created_s: float  # seconds the create call took (API round trip)
    job_variables: dict[str, Any] = field(default_factory=dict)  # the pool template's placement (job_variables_for)
    state: str = "SCHEDULED"
    message: str = ""
    timings: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)  # to re-dispatch it as it was
    tags: list[str] = field(default_factory=list)
    attempts: int = 1
    earlier: list[dict] = field(default_factory=list)  # [{flow_run_id, state, message}] of crashed attempts
    state_since: datetime | None = None  # when the current flow run entered its current state

    def outcome(self) -> ChildOutcome:
        """How this child ended; an unfinished or unsuccessful one is a failed outcome naming its state."""
        return ChildOutcome(
            config=self.config,
            run_id=self.run_id,
            state=self.state,
            flow_run_id=str(self.flow_run_id),
            queue=self.queue,
            attempts=self.attempts,
            earlier_attempts="; ".join(f"{e['flow_run_id']} {e['state']}: {e['message']}" for e in self.earlier),
            dispatch_s=self.timings.get("dispatch_s"),
            run_s=self.timings.get("run_s"),
            error=None if self.state == "COMPLETED" else f"child {self.state.lower()}: {self.message}",
        )


def job_variables_for(spec: dict) -> dict[str, Any]:
    """The Kubernetes template's placement of a child: ``gpu_count`` (nvidia.com/gpu) and, when the spec names the
    run's GPU memory, ``gpu_memory_mib_gt`` (nodes whose GPU-memory label exceeds it). Process pools ignore both."""
    variables: dict[str, Any] = {"gpu_count": spec.get("gpus", 1)}
    if spec.get("gpu_memory_gb") is not None:
        variables["gpu_memory_mib_gt"] = str(max(math.ceil(spec["gpu_memory_gb"] * 1024) - 1, 0))
    return variables


def _dispatch(deployment: str, spec: dict, tags: list[str], idempotency_key: str):
    from prefect.deployments import run_deployment

    return run_deployment(
        deployment,
        parameters=spec["parameters"],
        timeout=0,
        as_subflow=True,
        work_queue_name=spec["queue"],
        flow_run_name=f"train-model-{spec['config']}",
        job_variables=spec["job_variables"],
        idempotency_key=idempotency_key,
        tags=tags,
    )


def start_children(deployment: str, specs: Iterable[dict], tags: list[str]) -> list[Child]:
    """One flow run of ``deployment`` per spec (``config``, ``run_id``, ``queue``, ``parameters``; ``gpus`` and
    ``gpu_memory_gb`` for placement)."""
    children = []
    for spec in specs:
        started = time.perf_counter()
        spec = {**spec, "job_variables": job_variables_for(spec)}
        run = _dispatch(deployment, spec, tags, idempotency_key=spec["run_id"])
        children.append(
            Child(
                spec["config"],
                spec["run_id"],
                spec["queue"],
                run.id,
                time.perf_counter() - started,
                job_variables=spec["job_variables"],
                parameters=spec["parameters"],
                tags=list(tags),
            )
        )
    return children


def redispatch(deployment: str, child: Child, logger) -> None:
    """Start the next attempt of a crashed child: same parameters (same ``run_id``: it resumes), new flow run."""
    child.earlier.append({"flow_run_id": str(child.flow_run_id), "state": child.state, "message": child.message})
    child.attempts += 1
    started = time.perf_counter()
    run = _dispatch(
        deployment,
        {
            "config": child.config,
            "queue": child.queue,
            "job_variables": child.job_variables,
            "parameters": child.parameters,
        },
        child.tags,
        idempotency_key=f"{child.run_id}-attempt-{child.attempts}",
    )
    logger.warning(
        "child %s crashed (%s); re-dispatched as flow run %s (attempt %d, same run id %s: it resumes "
        "from its last checkpoint)",
        child.config,
        child.message,
        run.id,
        child.attempts,
        child.run_id,
    )
    child.flow_run_id, child.created_s = run.id, time.perf_counter() - started
    child.state, child.message, child.timings, child.state_since = "SCHEDULED", "", {}, None


def default_heartbeat_timeout_s() -> float | None:
    """``2 x PREFECT_FLOWS_HEARTBEAT_FREQUENCY + 30`` seconds; ``None`` when heartbeats are off."""
    from prefect.settings import get_current_settings

    frequency = get_current_settings().flows.heartbeat_frequency
    return None if frequency is None else 2.0 * max(frequency, 30) + 30.0


HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


def silent_children(client, children: list[Child], timeout_s: float, now: datetime | None = None) -> list[Child]:
    """RUNNING/PENDING children in that state for over ``timeout_s`` and without a heartbeat event in that time."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    now = now or datetime.now(UTC)
    suspects = [
        c
        for c in children
        if c.state in ("RUNNING", "PENDING")
        and c.state_since is not None
        and (now - c.state_since).total_seconds() > timeout_s
    ]
    if not suspects:
        return []
    resources = {f"prefect.flow-run.{c.flow_run_id}": c for c in suspects}
    page = client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=now - timedelta(seconds=timeout_s), until=now + timedelta(seconds=60)),
            event=EventNameFilter(name=[HEARTBEAT_EVENT]),
            resource=EventResourceFilter(id=list(resources)),
        ),
        limit=50,
    )  # the API's largest page
    alive = set()
    while page is not None:
        alive.update(event.resource.id for event in page.events)
        if alive >= set(resources) or not page.next_page:
            break
        page = client.read_events_page(str(page.next_page))
    return [c for resource, c in resources.items() if resource not in alive]


def wait_for_children(
    children: list[Child],
    poll_interval_s: float,
    logger,
    deployment: str | None = None,
    max_attempts: int = 1,
    heartbeat_timeout_s: float | None = None,
) -> None:
    """Poll until every child is final, re-dispatching crashed ones (up to ``max_attempts`` flow runs each).

    ``heartbeat_timeout_s``: a RUNNING/PENDING child without a heartbeat for that long is marked
    CRASHED (``None``: no heartbeat check). On any interruption the unfinished children are
    cancelled, then the interruption is re-raised.
    """
    from prefect import get_client

    check_every = max(poll_interval_s, (heartbeat_timeout_s or 0) / 3)
    last_check = time.monotonic()
    try:
        with get_client(sync_client=True) as client:
            while True:
                update_states(client, children, logger)
                if heartbeat_timeout_s and time.monotonic() - last_check >= check_every:
                    last_check = time.monotonic()
                    mark_silent_crashed(client, children, heartbeat_timeout_s, logger, retry_in_s=check_every)
                for child in children:
                    if crashed(child) and deployment is not None and child.attempts < max_attempts:
                        redispatch(deployment, child, logger)
                if all(c.state in FINAL for c in children):
                    return
                time.sleep(poll_interval_s)
    except BaseException:
        logger.warning("train-all interrupted: cancelling its unfinished children")
        cancel_flow_runs([c.flow_run_id for c in children if c.state not in FINAL])
        raise


def update_states(client, children: list[Child], logger) -> None:
    """Read the children's flow runs: state, message, timings; log each state change."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    by_id = {c.flow_run_id: c for c in children}
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(by_id))), limit=len(by_id))
    for run in runs:
        child = by_id[run.id]
        state = run.state.type.value if run.state else "SCHEDULED"
        if state != child.state:
            why = f" ({run.state.message})" if run.state and run.state.message and state != "RUNNING" else ""
            logger.info("child %s (%s): %s -> %s%s", child.config, run.name, child.state, state, why)
        child.state, child.message = state, (run.state.message or "") if run.state else ""
        child.state_since = run.state.timestamp if run.state else None
        child.timings = {
            "dispatch_s": _seconds(run.created, run.start_time),
            "run_s": _seconds(run.start_time, run.end_time),
        }


def mark_silent_crashed(client, children: list[Child], timeout_s: float, logger, retry_in_s: float) -> None:
    """Mark CRASHED (in Prefect too) every child ``silent_children`` finds; a failed check is retried later."""
    from prefect.states import Crashed

    try:
        silent = silent_children(client, children, timeout_s)
    except Exception as exc:  # noqa: BLE001 - a failed check must not fail the parent: try again later
        logger.warning("heartbeat check of the children failed (%r); retrying in %.0fs", exc, retry_in_s)
        return
    for child in silent:
        message = (
            f"no heartbeat for {timeout_s:.0f}s while {child.state}: its process "
            f"or worker died (marked crashed by the parent train-all)"
        )
        client.set_flow_run_state(child.flow_run_id, Crashed(message=message), force=True)
        logger.warning("child %s (flow run %s): %s", child.config, child.flow_run_id, message)
        child.state, child.message = "CRASHED", message


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def crashed(child: Child) -> bool:
    """CRASHED, or FAILED because a rank of its distributed run died (not an error of the training code):
    both may succeed on a new attempt, which resumes from the run's last checkpoint."""
    return child.state == "CRASHED" or (child.state == "FAILED" and RANK_DIED in (child.message or ""))


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
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_flow_run_id]))
        )
    cancel_flow_runs([r.id for r in runs])
