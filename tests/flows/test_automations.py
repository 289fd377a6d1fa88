"""The nightly run's automations (emotion_cli.automations) on the session's real Prefect server.

The server's own triggers and actions services do the work: a failed train-all/nightly flow run makes
the server POST to a webhook receiver on 127.0.0.1; a train-all parent whose heartbeats stop is set to
Crashed (CANCELLED type) and the server's cancellation service cancels its child.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import flows  # noqa: F401  (Prefect environment defaults before Prefect is imported)
from emotion_cli.automations import HEARTBEAT_NAME, NOTIFY_NAME, AutomationError, apply_automations, notify_block_id


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every POST body."""

    def __init__(self) -> None:
        self.posts: list[str] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                posts.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for body in self.posts:
                if text in body:
                    return body
            time.sleep(0.5)
        raise AssertionError(f"no POST naming {text} within {timeout_s:.0f}s; got {self.posts}")


@pytest.fixture
def automations(prefect_server):
    """Deletes the automations a test wrote (other tests must not meet a 12-second heartbeat timeout)."""
    from prefect import get_client

    yield
    with get_client(sync_client=True) as client:
        for name in (NOTIFY_NAME, HEARTBEAT_NAME):
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)


def count(name: str) -> int:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return len(client.read_automations_by_name(name))


def nightly_deployment_id(client):
    """The server's train-all/nightly deployment (a bare one if the stack has not deployed it yet)."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name("train-all/nightly").id
    except ObjectNotFound:
        return client.create_deployment(flow_id=client.create_flow_from_name("train-all"), name="nightly")


def test_a_block_that_is_not_a_notification_block_is_refused_by_name(prefect_server):
    from prefect.blocks.system import Secret

    name = f"test-not-notify-{uuid.uuid4().hex[:8]}"
    Secret(value="x").save(name)
    with pytest.raises(AutomationError, match=f"secret/{name}': a Secret block cannot send notifications"):
        notify_block_id(f"secret/{name}")
    with pytest.raises(AutomationError, match="custom-webhook/absent-block': no such block"):
        notify_block_id("custom-webhook/absent-block")
    with pytest.raises(AutomationError, match="expected <block-type-slug>/<name>"):
        notify_block_id("just-a-name")


@pytest.mark.slow
def test_a_failed_nightly_run_posts_to_the_webhook_once_per_failure(prefect_server, automations):
    from prefect import flow, get_client
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.schemas.objects import StateType
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    receiver = Receiver()
    block = f"test-nightly-alerts-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(name="nightly", url=receiver.url, json_data={"text": "{{subject}}\n{{body}}"}).save(
        block
    )
    for _ in range(2):  # idempotent: the second call updates, it does not add
        lines = apply_automations(notify_block=f"custom-webhook/{block}", heartbeat_timeout_s=0)
    assert lines[0] == f"automation '{NOTIFY_NAME}' updated (block custom-webhook/{block})"
    assert count(NOTIFY_NAME) == 1

    @flow(name="train-all")
    def failing_parent(config_set=None, dataset=None, store=None, dispatch=None, child_deployment=None):
        # the parameters of prefect.yaml's nightly: the session may already hold that deployment
        raise RuntimeError("config minilm failed: child crashed")

    with get_client(sync_client=True) as client:
        # Pending, not Scheduled: an orchestration worker of another test must not pick it up.
        flow_run = client.create_flow_run_from_deployment(nightly_deployment_id(client), state=Pending())
    time.sleep(3)  # the triggers service loads a changed automation within a few seconds
    state = run_flow(failing_parent, flow_run=flow_run, return_type="state")
    assert state.type == StateType.FAILED

    body = json.loads(receiver.wait_for(str(flow_run.id), timeout_s=90))["text"]
    assert f"train-all/nightly Failed: {flow_run.name}" in body
    assert "config minilm failed: child crashed" in body
    assert len([p for p in receiver.posts if str(flow_run.id) in p]) == 1


def post_heartbeat(api_url: str, flow_run, flow_name: str) -> None:
    """A ``prefect.flow-run.heartbeat`` event as a flow-run process emits it (resource and related flow)."""
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": "prefect.flow-run.heartbeat",
        "resource": {"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.name": flow_run.name},
        "related": [
            {
                "prefect.resource.id": f"prefect.flow.{flow_run.flow_id}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": flow_name,
            }
        ],
    }
    httpx.post(f"{api_url}/events", json=[event], timeout=10).raise_for_status()


@pytest.mark.slow
def test_a_silent_parent_is_marked_crashed_and_its_child_cancelled(prefect_server, automations):
    from prefect import flow, get_client, task
    from prefect.client.schemas.objects import StateType
    from prefect.states import Completed, Running

    timeout_s = 12
    apply_automations(notify_block="", heartbeat_timeout_s=timeout_s)
    apply_automations(notify_block="", heartbeat_timeout_s=timeout_s)
    assert count(HEARTBEAT_NAME) == 1

    @flow(name="train-all")
    def parent():
        pass

    @flow(name="not-train-all")
    def other():
        pass

    @flow(name="train-model")
    def child():
        pass

    @task(name="run-deployment")
    def link():
        pass

    with get_client(sync_client=True) as client:
        silent, beating = (client.create_flow_run(parent, state=Running()) for _ in range(2))
        unrelated = client.create_flow_run(other, state=Running())
        link_run = client.create_task_run(link, flow_run_id=silent.id, dynamic_key="0", state=Running())
        kid = client.create_flow_run(child, parent_task_run_id=link_run.id, state=Running())
        time.sleep(3)  # the triggers service loads a changed automation within a few seconds
        for run, flow_name in ((silent, "train-all"), (beating, "train-all"), (unrelated, "not-train-all")):
            post_heartbeat(prefect_server.api_url, run, flow_name)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            post_heartbeat(prefect_server.api_url, beating, "train-all")  # every 3 s: never silent for 12 s
            crashed, kid_now = client.read_flow_run(silent.id), client.read_flow_run(kid.id)
            if crashed.state.type == StateType.CANCELLED and kid_now.state.type == StateType.CANCELLED:
                break
            time.sleep(3)
        assert (crashed.state.type, crashed.state.name) == (StateType.CANCELLED, "Crashed"), crashed.state
        assert f"no heartbeat for {timeout_s}s" in crashed.state.message
        assert kid_now.state.type == StateType.CANCELLED, kid_now.state
        assert kid_now.state.message == "The parent flow run was cancelled."
        # A parent that keeps beating, and a silent flow run that is not train-all, are left alone.
        assert client.read_flow_run(beating.id).state.type == StateType.RUNNING
        assert client.read_flow_run(unrelated.id).state.type == StateType.RUNNING
        for run in (beating, unrelated):
            client.set_flow_run_state(run.id, Completed(), force=True)


@pytest.mark.slow
def test_emotion_pools_writes_the_automations_once_and_refuses_a_missing_block(prefect_server, automations):
    import subprocess
    import sys
    from pathlib import Path

    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = f"test-pools-alerts-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(name="nightly", url="http://127.0.0.1:9/hook").save(block)
    emotion = str(Path(sys.executable).with_name("emotion"))
    env = {**prefect_server.env(), "EMOTION_NOTIFY_WEBHOOK_BLOCK": f"custom-webhook/{block}"}
    for _ in range(2):
        result = subprocess.run([emotion, "pools"], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    assert f"automation '{NOTIFY_NAME}' updated (block custom-webhook/{block})" in result.stdout
    assert f"automation '{HEARTBEAT_NAME}' updated (timeout " in result.stdout
    assert count(NOTIFY_NAME) == 1 and count(HEARTBEAT_NAME) == 1

    env["EMOTION_NOTIFY_WEBHOOK_BLOCK"] = "custom-webhook/no-such-block"
    result = subprocess.run([emotion, "pools"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "EMOTION_NOTIFY_WEBHOOK_BLOCK='custom-webhook/no-such-block': no such block" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
