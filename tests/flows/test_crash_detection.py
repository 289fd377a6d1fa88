"""Crash detection and re-dispatch of train-all's children without a server (a fake API client).

The real thing (a worker SIGKILLed mid-training on a real stack) is tests/e2e/test_crash_resume.py.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from flows import dispatch
from flows.dispatch import Child, silent_children

NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def child(state: str, since_s: float, name: str = "c") -> Child:
    return Child(
        name,
        f"{name}-run",
        "gpu-small",
        uuid.uuid4(),
        0.1,
        state=state,
        state_since=NOW - timedelta(seconds=since_s),
        parameters={"config": f"{name}.yaml", "run_id": f"{name}-run"},
        tags=["train-all"],
    )


class FakeEvents:
    def __init__(self, beating: list[Child]) -> None:
        self.beating = beating
        self.filters = []

    def read_events(self, filter, limit):
        assert limit <= 50  # the API refuses bigger pages (422)
        self.filters.append(filter)
        events = [
            SimpleNamespace(resource=SimpleNamespace(id=f"prefect.flow-run.{c.flow_run_id}")) for c in self.beating
        ]
        return SimpleNamespace(events=events, next_page=None)


def test_only_children_silent_for_longer_than_the_timeout_are_dead():
    alive, dead, fresh, queued, done = (
        child("RUNNING", 300, "alive"),
        child("RUNNING", 300, "dead"),
        child("RUNNING", 20, "fresh"),
        child("SCHEDULED", 900, "queued"),
        child("COMPLETED", 900, "done"),
    )
    stuck_pending = child("PENDING", 200, "pending")
    client = FakeEvents(beating=[alive])
    assert silent_children(client, [alive, dead, fresh, queued, done, stuck_pending], 90, now=NOW) == [
        dead,
        stuck_pending,
    ]
    (query,) = client.filters
    assert query.event.name == ["prefect.flow-run.heartbeat"]
    assert set(query.resource.id) == {f"prefect.flow-run.{c.flow_run_id}" for c in (alive, dead, stuck_pending)}
    assert query.occurred.since == NOW - timedelta(seconds=90)
    assert silent_children(FakeEvents([]), [fresh, queued], 90, now=NOW) == []  # nothing to ask the API


def test_a_crashed_child_is_redispatched_with_the_same_run_id_and_its_attempts_recorded(monkeypatch):
    calls = []

    def fake_dispatch(deployment, spec, tags, idempotency_key):
        calls.append((deployment, spec, tags, idempotency_key))
        return SimpleNamespace(id=uuid.uuid4())

    monkeypatch.setattr(dispatch, "_dispatch", fake_dispatch)
    crashed = child("CRASHED", 10, "minilm")
    crashed.message = "no heartbeat for 90s"
    first = crashed.flow_run_id
    dispatch.redispatch("train-model/gpu", crashed, logging.getLogger("test"))
    ((deployment, spec, tags, key),) = calls
    assert (
        deployment == "train-model/gpu"
        and spec["parameters"]["run_id"] == "minilm-run"
        and spec["queue"] == "gpu-small"
    )
    assert key == "minilm-run-attempt-2" and tags == ["train-all"]
    assert crashed.attempts == 2 and crashed.state == "SCHEDULED" and crashed.flow_run_id != first
    crashed.state = "COMPLETED"
    outcome = crashed.outcome().to_dict()  # the children table's row
    assert (
        outcome["attempts"] == 2
        and str(first) in outcome["earlier_attempts"]
        and "no heartbeat" in outcome["earlier_attempts"]
    )
    assert "status" not in outcome  # the last attempt completed: the config did not fail


def test_the_default_timeout_follows_the_heartbeat_setting():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        assert dispatch.default_heartbeat_timeout_s() == 90
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        assert dispatch.default_heartbeat_timeout_s() is None


class FakeRuns:
    """``read_flow_runs`` answers each flow run's scripted states in turn (the last one repeats)."""

    def __init__(self, script: dict) -> None:
        self.script, self.forced = script, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_flow_runs(self, flow_run_filter, limit):
        runs = []
        for flow_run_id in flow_run_filter.id.any_:
            states = self.script[flow_run_id]
            kind = states.pop(0) if len(states) > 1 else states[0]
            kind, _, message = kind.partition(":")  # "FAILED:<message>" scripts a message
            state = SimpleNamespace(
                type=SimpleNamespace(value=kind), message=message or f"{kind.lower()} here", timestamp=NOW
            )
            runs.append(
                SimpleNamespace(
                    id=flow_run_id, name="train-model-x", state=state, created=NOW, start_time=NOW, end_time=None
                )
            )
        return runs

    def set_flow_run_state(self, flow_run_id, state, force):
        self.forced.append((flow_run_id, state.type.value, force))


def test_wait_redispatches_crashed_children_up_to_the_attempts_and_never_failed_ones(monkeypatch):
    import prefect

    crashing, failing = child("SCHEDULED", 0, "crashing"), child("SCHEDULED", 0, "failing")
    second, third = uuid.uuid4(), uuid.uuid4()
    fake = FakeRuns(
        {
            crashing.flow_run_id: ["RUNNING", "CRASHED"],
            failing.flow_run_id: ["RUNNING", "FAILED"],
            second: ["RUNNING", "CRASHED"],
            third: ["COMPLETED"],
        }
    )
    new_ids = iter([second, third])
    monkeypatch.setattr(prefect, "get_client", lambda sync_client: fake)
    monkeypatch.setattr(
        dispatch, "_dispatch", lambda deployment, spec, tags, idempotency_key: SimpleNamespace(id=next(new_ids))
    )
    dispatch.wait_for_children(
        [crashing, failing], 0, logging.getLogger("test"), deployment="train-model/gpu", max_attempts=2
    )
    assert (
        crashing.attempts == 2 and crashing.state == "CRASHED" and crashing.flow_run_id == second
    )  # one re-dispatch only
    assert failing.attempts == 1 and failing.state == "FAILED"
    assert next(new_ids) == third  # never asked for a third flow run


def test_a_silent_running_child_is_marked_crashed_then_redispatched(monkeypatch):
    import prefect

    silent = child("SCHEDULED", 0, "silent")
    replacement = uuid.uuid4()
    fake = FakeRuns({silent.flow_run_id: ["RUNNING"], replacement: ["COMPLETED"]})
    monkeypatch.setattr(prefect, "get_client", lambda sync_client: fake)
    monkeypatch.setattr(
        dispatch, "_dispatch", lambda deployment, spec, tags, idempotency_key: SimpleNamespace(id=replacement)
    )
    monkeypatch.setattr(
        dispatch, "silent_children", lambda client, children, timeout_s: [c for c in children if c.state == "RUNNING"]
    )
    monkeypatch.setattr(dispatch.time, "monotonic", iter(range(0, 10_000, 100)).__next__)  # every poll: a check is due
    dispatch.wait_for_children(
        [silent], 0, logging.getLogger("test"), deployment="train-model/gpu", max_attempts=2, heartbeat_timeout_s=90
    )
    first = silent.earlier[0]["flow_run_id"]
    assert fake.forced == [(uuid.UUID(first), "CRASHED", True)]
    assert "no heartbeat for 90s" in silent.earlier[0]["message"]
    assert silent.state == "COMPLETED" and silent.flow_run_id == replacement and silent.attempts == 2


def test_a_distributed_child_whose_rank_died_is_redispatched_but_not_one_whose_code_failed(monkeypatch):
    import prefect

    from emotion_core.errors import RANK_DIED

    died, raised = child("SCHEDULED", 0, "rank-died"), child("SCHEDULED", 0, "rank-raised")
    second = uuid.uuid4()
    fake = FakeRuns(
        {
            died.flow_run_id: ["RUNNING", f"FAILED:RankFailed: config 'x': rank 1 of 2 {RANK_DIED} (exit code 1)"],
            raised.flow_run_id: ["RUNNING", "FAILED:RankFailed: config 'x': rank 1 of 2 raised ValueError"],
            second: ["COMPLETED"],
        }
    )
    new_ids = iter([second])
    monkeypatch.setattr(prefect, "get_client", lambda sync_client: fake)
    monkeypatch.setattr(
        dispatch, "_dispatch", lambda deployment, spec, tags, idempotency_key: SimpleNamespace(id=next(new_ids))
    )
    dispatch.wait_for_children(
        [died, raised], 0, logging.getLogger("test"), deployment="train-model/gpu", max_attempts=2
    )
    assert died.attempts == 2 and died.state == "COMPLETED" and died.flow_run_id == second  # resumed by a new attempt
    assert raised.attempts == 1 and raised.state == "FAILED"
