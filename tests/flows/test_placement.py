"""Placement without a server: queue routing by GPU memory, worker commands per card, pool spec."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from emotion_core.errors import ConfigError
from flows.dispatch import child_run_id, queue_capacities, queue_for

REPO = Path(__file__).resolve().parents[2]


def test_a_config_goes_to_the_smallest_cards_that_hold_it():
    queues = queue_capacities("gpu")
    assert queues == {"gpu-large": 40.0, "gpu-small": 16.0}
    assert queue_for("ffnn", 2, queues) == "gpu-small"
    assert queue_for("roberta", 16, queues) == "gpu-small"
    assert queue_for("deberta", 24, queues) == "gpu-large"
    with pytest.raises(ConfigError, match="mistral.*gpu_memory_gb=90.*exceeds every work queue"):
        queue_for("mistral", 90, queues)


def test_shipped_configs_all_have_a_queue():
    from emotion_core.config import load_config_set

    _, entries = load_config_set(REPO / "deployments" / "sets" / "gpu.yaml")
    assert {queue_for(e.config.name, e.config.resources.gpu_memory_gb, queue_capacities("gpu")) for e in entries} <= {"gpu-small", "gpu-large"}


def test_child_run_ids_are_unique_per_parent_and_readable():
    from datetime import datetime, timezone

    t = datetime(2026, 11, 25, 2, 0, tzinfo=timezone.utc)
    a = child_run_id("minilm", t, "0a1b2c3d-1111-2222-3333-444455556666")
    assert a == "minilm-20261125T020000Z-0a1b2c3d"
    assert a != child_run_id("minilm", t, "99999999-1111-2222-3333-444455556666")


def _workers_module():
    spec = importlib.util.spec_from_file_location("gpu_workers", REPO / "deployments" / "gpu_workers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_worker_per_gpu_pinned_to_its_card_and_serving_the_queues_it_can_hold():
    workers = _workers_module()
    import yaml

    queues = yaml.safe_load((REPO / "deployments" / "pools" / "pools.yaml").read_text())["gpu"]["queues"]
    gpus = [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.6},
            {"index": 1, "name": "NVIDIA L4", "memory_gib": 22.5},
            {"index": 2, "name": "Quadro 8GB", "memory_gib": 8.0}]
    commands = workers.worker_commands("gpu", queues, gpus, cpu_workers=1, prefix="gpu")
    assert len(commands) == 2  # the 8 GiB card holds no queue: no worker
    (h100, h100_env), (l4, l4_env) = commands
    assert h100_env["CUDA_VISIBLE_DEVICES"] == "0" and l4_env["CUDA_VISIBLE_DEVICES"] == "1"
    assert h100[h100.index("--limit") + 1] == "1" and h100[h100.index("--pool") + 1] == "gpu"
    served = lambda argv: [argv[i + 1] for i, a in enumerate(argv) if a == "--work-queue"]  # noqa: E731
    assert sorted(served(h100)) == ["gpu-large", "gpu-small"] and served(l4) == ["gpu-small"]
    # No GPU: CPU workers serve every queue, with no CUDA pinning.
    cpu = workers.worker_commands("gpu", queues, [], cpu_workers=2, prefix="gpu")
    assert len(cpu) == 2 and all("CUDA_VISIBLE_DEVICES" not in env for _, env in cpu)
    assert all(sorted(served(argv)) == ["gpu-large", "gpu-small"] for argv, _ in cpu)
    assert cpu[0][1]["EMOTION_WORKER_NAME"] != cpu[1][1]["EMOTION_WORKER_NAME"]


def test_prefect_yaml_deploys_without_prompts():
    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $EMOTION_PROJECT_DIR }}"
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {"nightly", "gpu"} and all("schedules" in d for d in by_name.values())
    assert by_name["nightly"]["work_pool"]["name"] != by_name["gpu"]["work_pool"]["name"]  # same pool deadlocks
    assert by_name["nightly"]["parameters"]["dispatch"] == "deployment"
    assert by_name["nightly"]["parameters"]["child_deployment"] == "train-model/gpu"
