"""Prefect automations of the nightly run: someone hears when it fails, and a dead parent takes its children down.

- ``notify``: a ``train-all/nightly`` flow run that ends Failed or Crashed sends a notification (flow run
  name, id, state message, UI link) through the notification block named in ``$EMOTION_NOTIFY_WEBHOOK_BLOCK``
  (``<block-type-slug>/<name>``, e.g. ``custom-webhook/nightly-alerts`` or ``slack-webhook/ops``; any Prefect
  notification block). Unset: no such automation is created.
- ``parent heartbeat``: a ``train-all`` flow run that stops emitting ``prefect.flow-run.heartbeat`` events
  for ``2 x PREFECT_FLOWS_HEARTBEAT_FREQUENCY + 30`` s (the children's timeout, ``flows.dispatch``) without
  reaching a final state is set to a CANCELLED-type state named ``Crashed``: its process or machine died, so
  its own ``on_crashed`` hook never runs; the server's cancellation service then cancels its children
  (Prefect cancels the subflow runs of a *cancelled* parent only), and the ``Crashed`` event notifies.
Both are Prefect event triggers evaluated by the server's triggers and actions services (on by default).
Idempotent: an automation is found by its name and updated, never duplicated.
Limits: the heartbeat timeout is fixed when the automation is written, from this process's heartbeat
frequency; the orchestration workers must use the same frequency.
"""

from __future__ import annotations

import os
from datetime import timedelta

from emotion_core.errors import EmotionError

NOTIFY_BLOCK_ENV = "EMOTION_NOTIFY_WEBHOOK_BLOCK"
NOTIFY_NAME = "emotion: train-all/nightly failed or crashed -> notify"
HEARTBEAT_NAME = "emotion: train-all without heartbeat -> crashed, children cancelled"
PARENT_FLOW, NIGHTLY_DEPLOYMENT = "train-all", "nightly"
FINAL_EVENTS = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed", "Cancelling")}

NOTIFY_SUBJECT = "train-all/nightly {{ flow_run.state.name }}: {{ flow_run.name }}"
NOTIFY_BODY = (
    "Flow run {{ flow_run.name }} ({{ flow_run.id }}) of train-all/nightly ended "
    "{{ flow_run.state.name }}: {{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
)


class AutomationError(EmotionError):
    """An automation could not be written (e.g. the notification block named in settings does not exist)."""


def notify_block_id(reference: str):
    """The block document id of the notification block ``<block-type-slug>/<name>``."""
    from prefect.blocks.abstract import NotificationBlock
    from prefect.blocks.core import Block

    if reference.count("/") != 1 or not all(reference.split("/")):
        raise AutomationError(
            f"{NOTIFY_BLOCK_ENV}='{reference}': expected <block-type-slug>/<name>, "
            "e.g. custom-webhook/nightly-alerts (see `prefect block ls`)"
        )
    try:
        block = Block.load(reference)
    except (ValueError, KeyError) as error:
        raise AutomationError(
            f"{NOTIFY_BLOCK_ENV}='{reference}': no such block on the Prefect server "
            f"({type(error).__name__}); create it first (`prefect block create custom-webhook`)"
        ) from None
    if not isinstance(block, NotificationBlock):
        raise AutomationError(
            f"{NOTIFY_BLOCK_ENV}='{reference}': a {type(block).__name__} block cannot send "
            "notifications; name a notification block (custom-webhook, slack-webhook, ...)"
        )
    return block._block_document_id


def notify_automation(block_document_id):
    """Failed or Crashed ``train-all/nightly`` flow run -> one notification through the block."""
    from prefect.automations import AutomationCore
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    return AutomationCore(
        name=NOTIFY_NAME,
        description="A failed or crashed nightly run notifies the team (emotion_cli.automations).",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=[
                {"prefect.resource.role": "flow", "prefect.resource.name": PARENT_FLOW},
                {"prefect.resource.role": "deployment", "prefect.resource.name": NIGHTLY_DEPLOYMENT},
            ],
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_document_id, subject=NOTIFY_SUBJECT, body=NOTIFY_BODY)],
    )


def heartbeat_automation(timeout_s: float):
    """A ``train-all`` flow run silent for ``timeout_s`` (no heartbeat, no final state) -> cancelled as Crashed."""
    from prefect.automations import AutomationCore
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    # CANCELLED type, not CRASHED: the server cancels the children of a cancelled parent only. The name
    # makes the event prefect.flow-run.Crashed (what the UI shows, what the notification listens to).
    return AutomationCore(
        name=HEARTBEAT_NAME,
        description="A train-all parent whose process died is marked crashed and its children cancelled "
        "(emotion_cli.automations).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": PARENT_FLOW},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=timeout_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CANCELLED,
                name="Crashed",
                message=f"no heartbeat for {timeout_s:.0f}s: the train-all process or its machine died; "
                "its children are cancelled",
            )
        ],
    )


def upsert(client, automation) -> str:
    """Create the automation, or update the one of the same name (and delete duplicates); returns what it did."""
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        client.create_automation(automation)
        return "created"
    first, *duplicates = sorted(existing, key=lambda a: str(a.id))
    client.update_automation(first.id, automation)
    for extra in duplicates:
        client.delete_automation(extra.id)
    return "updated"


def apply_automations(notify_block: str | None = None, heartbeat_timeout_s: float | None = None) -> list[str]:
    """Write the automations on ``$PREFECT_API_URL``; returns one line per automation.

    ``notify_block``: default ``$EMOTION_NOTIFY_WEBHOOK_BLOCK``; ``heartbeat_timeout_s``: default from
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (``flows.dispatch.default_heartbeat_timeout_s``; heartbeats off: none).
    """
    from prefect import get_client

    from flows.dispatch import default_heartbeat_timeout_s

    reference = (notify_block if notify_block is not None else os.environ.get(NOTIFY_BLOCK_ENV, "")).strip()
    timeout_s = heartbeat_timeout_s if heartbeat_timeout_s is not None else default_heartbeat_timeout_s()
    lines = []
    with get_client(sync_client=True) as client:
        if reference:
            done = upsert(client, notify_automation(notify_block_id(reference)))
            lines.append(f"automation '{NOTIFY_NAME}' {done} (block {reference})")
        else:
            lines.append(f"no failure notification: {NOTIFY_BLOCK_ENV} is unset")
        if timeout_s:
            done = upsert(client, heartbeat_automation(timeout_s))
            lines.append(f"automation '{HEARTBEAT_NAME}' {done} (timeout {timeout_s:.0f}s)")
        else:
            lines.append("no parent heartbeat automation: heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY unset)")
    return lines
