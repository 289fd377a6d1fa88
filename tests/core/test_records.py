"""The records passed between train-all's steps keep the dict shapes the artifacts, the report and the tests read."""

from __future__ import annotations

import pytest

from emotion_core.records import ChildOutcome, ReportEntry


def test_a_local_child_outcome_has_the_short_shape_and_a_failed_one_says_why():
    done = ChildOutcome(config="ffnn", run_id="ffnn-1", state="COMPLETED")
    assert done.to_dict() == {"config": "ffnn", "run_id": "ffnn-1", "state": "COMPLETED"}
    assert not done.failed
    failed = ChildOutcome(config="bad", run_id="bad-1", state="FAILED", error="OSError: no such model")
    assert failed.to_dict() == {
        "config": "bad",
        "run_id": "bad-1",
        "state": "FAILED",
        "status": "failed",
        "error": "OSError: no such model",
    }
    assert ChildOutcome.from_dict(failed.to_dict()) == failed and ChildOutcome.from_dict(done.to_dict()) == done


def test_a_dispatched_child_outcome_keeps_its_columns_in_order():
    outcome = ChildOutcome(
        config="minilm",
        run_id="minilm-1",
        state="CRASHED",
        flow_run_id="f-2",
        queue="gpu-small",
        attempts=2,
        earlier_attempts="f-1 CRASHED: no heartbeat",
        dispatch_s=1.5,
        run_s=None,
        error="child crashed: killed",
    )
    row = outcome.to_dict()
    assert list(row) == [
        "config",
        "run_id",
        "flow_run_id",
        "queue",
        "state",
        "attempts",
        "earlier_attempts",
        "dispatch_s",
        "run_s",
        "status",
        "error",
    ]
    assert ChildOutcome.from_dict(row) == outcome
    # A failed row read back without an error message still counts as failed, and says so.
    assert ChildOutcome.from_dict({"config": "x", "run_id": "x-1", "state": "FAILED", "status": "failed"}).failed


def test_report_entries_keep_their_keys_by_kind():
    failed = ReportEntry.failure("bad", "failed: boom", "bad-1")
    assert failed.to_dict() == {"name": "bad", "status": "failed", "error": "failed: boom", "run_id": "bad-1"}
    run = ReportEntry(
        name="ffnn",
        status="completed",
        family="ffnn",
        method="full",
        run_id="ffnn-1",
        validation_macro_f1=0.4,
        threshold_policy="per_label",
        dataset_key="goemotions-abc",
        test={"metrics": {"macro_f1": 0.38}},
        files={"evaluation": "models/ffnn/evaluation.json"},
    )
    row = run.to_dict()
    assert list(row)[:7] == ["name", "status", "error", "family", "method", "model", "run_id"]
    assert row["dataset_key"] == "goemotions-abc" and "members" not in row and "rows" not in row
    assert ReportEntry.from_dict(row) == run
    ensemble = ReportEntry(
        name="ensemble-top2",
        status="completed",
        family="ensemble",
        method="ensemble",
        members=["a", "b"],
        rows={"validation": 10, "test": 5},
    )
    assert "dataset_key" not in ensemble.to_dict() and ensemble.to_dict()["members"] == ["a", "b"]
    with pytest.raises(AttributeError):
        run.status = "failed"  # frozen: a step makes a new entry (dataclasses.replace), never edits one
