"""deployments/setup_gpu_machine.sh: the one command that sets up a GPU machine (and the Docker image's install steps).

No container runtime and no GPU here: the slow test runs the script's install steps into a clean virtual
environment with a CPU torch (``EMOTION_TEST_TORCH_INDEX_URL``, default PyPI; pip's own configuration,
e.g. a local wheel folder, applies as on any machine), then checks that the environment works without
the checkout: the project is installed non-editable, the worker kit runs from the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deployments" / "setup_gpu_machine.sh"


def run_script(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_bad_arguments_are_refused_before_anything_is_installed(tmp_path):
    venv = tmp_path / "venv"
    result = run_script("--gpus-per-worker", "0", "--venv", str(venv), env={"PREFECT_API_URL": ""})
    assert result.returncode == 2 and "--gpus-per-worker must be a positive integer, got '0'" in result.stderr
    result = run_script("--venv", str(venv), env={"PREFECT_API_URL": ""})
    assert result.returncode == 2 and "--api-url (or $PREFECT_API_URL) is required" in result.stderr
    result = run_script("--install-only", "--venv", str(venv), "--python", "no-such-python3")
    assert result.returncode == 2 and "--python no-such-python3: not found" in result.stderr
    assert not venv.exists()


def test_the_docker_image_installs_with_the_same_script():
    dockerfile = (REPO / "deployments" / "docker" / "Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in dockerfile and "ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda" in dockerfile
    assert "deployments/setup_gpu_machine.sh --install-only --venv /opt/conda" in dockerfile
    pin = next(line for line in (REPO / "pyproject.toml").read_text().splitlines() if '"torch==' in line)
    assert "torch==2.13.0" in pin  # the base image's torch must be the pinned one (the script keeps it)
    assert "USER emotion" in dockerfile


@pytest.mark.slow
@pytest.mark.install
def test_install_only_builds_a_working_environment_without_the_checkout(tmp_path):
    venv = tmp_path / "venv"
    env = {
        "TORCH_INDEX_URL": os.environ.get("EMOTION_TEST_TORCH_INDEX_URL", "https://pypi.org/simple"),
        "PYTHONPATH": "",
    }
    first = run_script("--install-only", "--venv", str(venv), "--python", sys.executable, env=env, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "== torch==2.13.0 from" in first.stdout and "constraint: torch==2.13.0" in first.stdout

    # Run from an empty folder with no PYTHONPATH: everything must come from the environment, not the checkout.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PREFECT_API_URL")}
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            (
                "import torch, prefect, emotion_core, flows, tasks, emotion_cli.automations as a\n"
                "print(torch.__version__, prefect.__version__)\n"
                "print(emotion_core.__file__)\n"
            ),
        ],
        capture_output=True,
        text=True,
        cwd=outside,
        env=clean,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    versions, location = probe.stdout.split("\n")[:2]
    assert versions.startswith("2.13.0") and versions.endswith("3.8.8")
    assert Path(location).resolve().is_relative_to(venv.resolve())  # non-editable: no path into the checkout

    kit = venv / "share" / "emotion-pipeline"
    assert (kit / "gpu_workers.py").read_text() == (REPO / "deployments" / "gpu_workers.py").read_text()
    assert (kit / "pools" / "pools.yaml").read_text() == (REPO / "deployments" / "pools" / "pools.yaml").read_text()
    # The kit runs from the environment; an API that does not answer is a clear error before any worker starts.
    workers = subprocess.run(
        [str(venv / "bin" / "python"), str(kit / "gpu_workers.py"), "--api-url", "http://127.0.0.1:9/api"],
        capture_output=True,
        text=True,
        cwd=outside,
        env=clean,
        timeout=120,
    )
    assert workers.returncode == 2 and "the Prefect API does not answer" in workers.stderr

    again = run_script("--install-only", "--venv", str(venv), env=env, timeout=1800)  # idempotent: torch kept
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== keeping torch 2.13.0" in again.stdout and "== torch==" not in again.stdout
