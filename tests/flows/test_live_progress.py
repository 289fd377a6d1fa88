"""`emotion demo`'s live progress reads each child's state and latest progress line from a real Prefect server."""

from __future__ import annotations

import io

import pytest
from prefect import flow, get_client
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from rich.console import Console

from emotion_cli.progress import read_lines, watch
from tasks.training import describe_progress

pytestmark = pytest.mark.slow


@flow(flow_run_name="train-model-minilm")
def _child_that_trains() -> None:
    first = {"event": "step", "step": 1, "max_steps": 10}
    artifact = create_progress_artifact(10.0, description=describe_progress("minilm", first))
    last = {"event": "evaluate", "step": 6, "max_steps": 10, "eta_s": 12, "metrics": {"eval_macro_f1": 0.4321}}
    update_progress_artifact(artifact, 60.0, description=describe_progress("minilm", last))


@flow(flow_run_name="train-model-ffnn")
def _child_that_fails() -> None:
    raise RuntimeError("out of memory")


@flow(name="progress-parent")
def _parent() -> str:
    from prefect.runtime import flow_run

    _child_that_trains()
    _child_that_fails(return_state=True)
    return flow_run.id


def test_one_line_per_config_with_state_step_eta_and_macro_f1(prefect_server):
    parent_id = _parent()
    with get_client(sync_client=True) as client:
        lines = {line.config: line for line in read_lines(client, parent_id)}
        assert set(lines) == {"minilm", "ffnn"}
        assert lines["minilm"].state == "Completed"
        assert lines["minilm"].progress == "evaluate | step 6/10 | eval_macro_f1 0.4321 | eta 12s"  # latest
        assert lines["ffnn"].state == "Failed" and lines["ffnn"].progress == ""

        printed = io.StringIO()
        final = watch(client, parent_id, Console(file=printed, width=200), poll_s=0.1)
    assert final.state.is_final()
    text = printed.getvalue().splitlines()
    assert [line.split()[:2] for line in text] == [["ffnn", "Failed"], ["minilm", "Completed"]]
