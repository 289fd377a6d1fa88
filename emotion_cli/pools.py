"""Create or update the work pools and queues of ``deployments/pools/pools.yaml`` (idempotent).

Process pools get Prefect's default process job template; other types take ``base_job_template``
from a JSON file named in the spec (e.g. ``deployments/pools/kubernetes-gpu.json``). Existing pools
keep their template and get the spec's description, concurrency limit and queues. Then the automations
of the nightly run (``emotion_cli.automations``: failure notification, dead-parent detection).
"""

from __future__ import annotations

import json
from pathlib import Path

from flows.dispatch import POOLS_FILE, load_pools


def base_job_template(pool_type: str, template_file: str | None) -> dict:
    if template_file:
        return json.loads((POOLS_FILE.parent / template_file).read_text(encoding="utf-8"))
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    return {}


def apply_pools(path: str | Path = POOLS_FILE, automations: bool = True) -> list[str]:
    """Make the server's pools and queues match the spec, then write the automations; returns one line per item."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    lines = []
    with get_client(sync_client=True) as client:
        for name, spec in load_pools(path).items():
            try:
                client.read_work_pool(name)
                client.update_work_pool(
                    name,
                    WorkPoolUpdate(
                        description=spec.get("description"), concurrency_limit=spec.get("concurrency_limit")
                    ),
                )
            except ObjectNotFound:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type=spec.get("type", "process"),
                        description=spec.get("description"),
                        concurrency_limit=spec.get("concurrency_limit"),
                        base_job_template=base_job_template(spec.get("type", "process"), spec.get("base_job_template")),
                    )
                )
            existing = {q.name: q for q in client.read_work_queues(work_pool_name=name)}
            for queue, settings in (spec.get("queues") or {}).items():
                fields = {"description": settings.get("description"), "priority": settings.get("priority")}
                if queue in existing:
                    client.update_work_queue(existing[queue].id, **{k: v for k, v in fields.items() if v is not None})
                else:
                    client.create_work_queue(name=queue, work_pool_name=name, **fields)
            lines.append(
                f"pool {name} ({spec.get('type', 'process')}, limit {spec.get('concurrency_limit')}): "
                f"queues {', '.join(spec.get('queues') or {}) or 'default'}"
            )
    if automations:
        from emotion_cli.automations import apply_automations

        lines += apply_automations()
    return lines
