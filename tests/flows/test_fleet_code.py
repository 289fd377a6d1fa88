"""Code on the workers: the fleet deployment file pushes the code to S3 and a worker folder pulls it; children get
config content and refuse to run other code than their parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emotion_core.errors import CodeVersionMismatch, ConfigError
from emotion_core.provenance import code_version

REPO = Path(__file__).resolve().parents[2]
EMOTION = str(Path(sys.executable).with_name("emotion"))
PUSHED_TOP_LEVEL = {"emotion_core", "tasks", "flows", "emotion_cli", "deployments", "pyproject.toml"}


def test_the_fleet_file_has_the_root_deployments_with_s3_push_and_pull():
    root = yaml.safe_load((REPO / "prefect.yaml").read_text())
    fleet = yaml.safe_load((REPO / "deployments" / "fleet" / "prefect.yaml").read_text())
    assert fleet["deployments"] == root["deployments"]  # one set of deployments, two ways to ship the code
    assert list(fleet["push"][0]) == ["prefect_aws.deployments.steps.push_to_s3"]
    pull = fleet["pull"][0]["prefect_aws.deployments.steps.pull_from_s3"]
    assert pull["bucket"] == "{{ push-code.bucket }}" and pull["folder"] == "{{ push-code.folder }}"


@pytest.mark.parametrize("uri", ["file:///tmp/code", "s3://", "/tmp/code"])
def test_stack_up_refuses_a_code_store_that_is_not_s3_before_starting_anything(uri, tmp_path):
    from helpers import assert_refused

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    result = subprocess.run(
        [EMOTION, "stack", "up", "--port", "1", "--code-store", uri],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_refused(result, f"code store '{uri}': expected s3://bucket[/prefix]")
    assert "--code-store" in subprocess.run([EMOTION, "stack", "up", "--help"], capture_output=True, text=True).stdout


def test_a_config_mapping_is_validated_like_a_file_naming_the_field():
    from flows.train_model import resolve_config

    content = yaml.safe_load((REPO / "tests" / "data" / "sets" / "tiny-ffnn.yaml").read_text())
    assert resolve_config(content, {"training": {"epochs": 1}}).training.epochs == 1
    with pytest.raises(ConfigError, match=r"(?s)config 'tiny-ffnn' \(parameter 'config'\).*field 'training.epochs'"):
        resolve_config({**content, "training": {"epochs": -1}})


def test_runs_whose_manifest_names_other_code_are_failed_rows(tmp_path):
    """The parent's check: other code -> failed outcome naming the run and both versions; no field -> unknown, kept."""
    from emotion_core.records import ChildOutcome
    from flows.train_all import check_code_versions

    manifests = {"old-1": {"code_version": "sha256:old"}, "legacy-1": {}, "same-1": {"code_version": code_version()}}
    for run_id, manifest in manifests.items():
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        (tmp_path / "runs" / run_id / "manifest.json").write_text(json.dumps({"run_id": run_id, **manifest}))
    outcomes = [ChildOutcome(config=r.split("-")[0], run_id=r, state="COMPLETED") for r in manifests]
    outcomes.append(ChildOutcome("gone", "gone-1", "FAILED", "boom"))
    checked = check_code_versions(outcomes, str(tmp_path), code_version())
    assert [o.failed for o in checked] == [True, False, False, True]
    assert checked[0].error == (
        f"run old-1 was trained by code sha256:old, this train-all runs {code_version()}: not compared"
    )
    assert checked[3].error == "boom"


@pytest.mark.slow
def test_a_child_on_other_code_fails_before_training(prefect_server, tmp_path):
    from flows.train_model import train_model

    store = tmp_path / "store"
    config = REPO / "tests" / "data" / "sets" / "tiny-ffnn.yaml"
    state = train_model(config=str(config), store=str(store), code_version="sha256:parent", return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, CodeVersionMismatch)
    assert str(error).startswith(f"this worker runs code {code_version()}, its parent train-all runs sha256:parent")
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())  # nothing trained or published
