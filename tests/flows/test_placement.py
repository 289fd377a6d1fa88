"""Placement without a server: queue routing by GPU count and memory, worker commands per card group, pool spec."""

from __future__ import annotations

import re
from datetime import UTC
from pathlib import Path

import pytest
from helpers import gpu_workers_module

from emotion_core.errors import ConfigError
from flows.dispatch import child_run_id, queue_capacities, queue_for

REPO = Path(__file__).resolve().parents[2]


def test_a_config_goes_to_the_smallest_cards_that_hold_it():
    queues = queue_capacities("gpu")
    assert queues == {
        "gpu-large": {"min_gpu_memory_gb": 40.0, "gpus": 1},
        "gpu-small": {"min_gpu_memory_gb": 16.0, "gpus": 1},
        "gpu-large-x2": {"min_gpu_memory_gb": 40.0, "gpus": 2},
        "gpu-large-x4": {"min_gpu_memory_gb": 40.0, "gpus": 4},
    }
    assert queue_for("ffnn", 2, queues) == "gpu-small"
    assert queue_for("roberta", 16, queues) == "gpu-small"
    assert queue_for("deberta", 24, queues) == "gpu-large"
    with pytest.raises(ConfigError, match=r"'mistral': resources.gpus=1, gpu_memory_gb=90 fits no work queue"):
        queue_for("mistral", 90, queues)
    # The legacy shape (GiB alone) still means one card.
    assert queue_for("ffnn", 2, {"big": 40, "small": 16.0}) == "small"


def test_a_config_goes_to_workers_with_exactly_its_card_count():
    queues = queue_capacities("gpu")
    assert queue_for("mistral", 24, queues, gpus=2) == "gpu-large-x2"
    assert queue_for("tiny", 1, queues, gpus=2) == "gpu-large-x2"  # no small x2 queue: the large one holds it
    assert queue_for("deberta", 40, queues, gpus=4) == "gpu-large-x4"
    # More cards than any queue offers, or cards too small: refused, naming the config and every offer.
    with pytest.raises(ConfigError) as info:
        queue_for("llama-70b", 40, queues, gpus=8)
    message = str(info.value)
    assert "config 'llama-70b': resources.gpus=8, gpu_memory_gb=40 fits no work queue" in message
    assert (
        "the queues offer: gpu-small (1 x >= 16 GiB), gpu-large (1 x >= 40 GiB), gpu-large-x2 (2 x >= 40 GiB), "
        "gpu-large-x4 (4 x >= 40 GiB)"
    ) in message
    assert "--gpus-per-worker" in message
    with pytest.raises(ConfigError, match="resources.gpus=2, gpu_memory_gb=90 fits no work queue"):
        queue_for("huge", 90, queues, gpus=2)


@pytest.mark.parametrize(
    "queue, error",
    [
        ({"min_gpu_memory_gb": 40, "gpus": 0}, "work queue 'q': gpus must be a whole number of cards >= 1, got 0"),
        ({"min_gpu_memory_gb": 40, "gpus": 1.5}, "gpus must be a whole number of cards >= 1, got 1.5"),
        ({"min_gpu_memory_gb": 40, "gpus": True}, "gpus must be a whole number of cards >= 1, got True"),
        ({"min_gpu_memory_gb": 40, "gpus": "2"}, "gpus must be a whole number of cards >= 1, got '2'"),
        ({"min_gpu_memory_gb": "big"}, "work queue 'q': min_gpu_memory_gb must be a positive number of GiB, got 'big'"),
        ({"min_gpu_memory_gb": -1}, "min_gpu_memory_gb must be a positive number of GiB, got -1"),
    ],
)
def test_a_malformed_queue_is_refused_naming_it(tmp_path, queue, error):
    import yaml

    pools = tmp_path / "pools.yaml"
    pools.write_text(yaml.safe_dump({"gpu": {"queues": {"q": queue}}}))
    with pytest.raises(ConfigError, match=re.escape(error)):
        queue_capacities("gpu", pools)
    with pytest.raises(ConfigError, match=re.escape(error)):  # train-all's `queues` parameter: the same checks
        queue_for("c", 1, {"q": queue})


def test_shipped_configs_all_have_a_queue():
    from emotion_core.config import load_config_set

    _, entries = load_config_set(REPO / "deployments" / "sets" / "gpu.yaml")
    queues = queue_capacities("gpu")
    assert {
        queue_for(e.config.name, e.config.resources.gpu_memory_gb, queues, e.config.resources.gpus) for e in entries
    } <= set(queues)


def test_child_run_ids_are_unique_per_parent_and_readable():
    from datetime import datetime

    t = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
    a = child_run_id("minilm", t, "0a1b2c3d-1111-2222-3333-444455556666")
    assert a == "minilm-20261125T020000Z-0a1b2c3d"
    assert a != child_run_id("minilm", t, "99999999-1111-2222-3333-444455556666")


def test_one_worker_per_gpu_pinned_to_its_card_and_serving_the_queues_it_can_hold(monkeypatch):
    workers = gpu_workers_module()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 16)
    import yaml

    queues = yaml.safe_load((REPO / "deployments" / "pools" / "pools.yaml").read_text())["gpu"]["queues"]
    gpus = [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.6},
        {"index": 1, "name": "NVIDIA L4", "memory_gib": 22.5},
        {"index": 2, "name": "Quadro 8GB", "memory_gib": 8.0},
    ]
    commands = workers.worker_commands("gpu", queues, gpus, cpu_workers=1, prefix="gpu")
    assert len(commands) == 2  # the 8 GiB card holds no queue: no worker
    (h100, h100_env), (l4, l4_env) = commands
    assert h100_env["CUDA_VISIBLE_DEVICES"] == "0" and l4_env["CUDA_VISIBLE_DEVICES"] == "1"
    assert h100[h100.index("--limit") + 1] == "1" and h100[h100.index("--pool") + 1] == "gpu"
    served = lambda argv: [argv[i + 1] for i, a in enumerate(argv) if a == "--work-queue"]  # noqa: E731
    assert sorted(served(h100)) == ["gpu-large", "gpu-small"] and served(l4) == ["gpu-small"]
    assert h100_env["EMOTION_WORKER_GPUS"] == "1"
    # No GPU: CPU workers serve every one-card queue, with no CUDA pinning.
    cpu = workers.worker_commands("gpu", queues, [], cpu_workers=2, prefix="gpu")
    assert len(cpu) == 2 and all("CUDA_VISIBLE_DEVICES" not in env for _, env in cpu)
    assert all(sorted(served(argv)) == ["gpu-large", "gpu-small"] for argv, _ in cpu)
    assert cpu[0][1]["EMOTION_WORKER_NAME"] != cpu[1][1]["EMOTION_WORKER_NAME"]
    # The workers share the cores (16 here) instead of each taking all of them; the user's setting wins.
    assert h100_env["OMP_NUM_THREADS"] == "8" and [env["OMP_NUM_THREADS"] for _, env in cpu] == ["8", "8"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert workers.worker_commands("gpu", queues, [], cpu_workers=2, prefix="gpu")[0][1]["OMP_NUM_THREADS"] == "3"


def _served(argv):
    return sorted(argv[i + 1] for i, a in enumerate(argv) if a == "--work-queue")


def test_gpus_per_worker_groups_the_cards_and_serves_the_queues_of_that_card_count():
    workers = gpu_workers_module()
    import yaml

    queues = yaml.safe_load((REPO / "deployments" / "pools" / "pools.yaml").read_text())["gpu"]["queues"]
    h100s = [{"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.6} for i in range(8)]
    pairs = workers.worker_commands("gpu", queues, h100s, cpu_workers=1, prefix="gpu", gpus_per_worker=2)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in pairs] == ["0,1", "2,3", "4,5", "6,7"]
    assert all(_served(argv) == ["gpu-large-x2"] and env["EMOTION_WORKER_GPUS"] == "2" for argv, env in pairs)
    assert len({env["EMOTION_WORKER_NAME"] for _, env in pairs}) == 4
    # 6 cards by 4: one worker, two cards left over (named on stderr, no worker).
    fours = workers.worker_commands("gpu", queues, h100s[:6], cpu_workers=1, prefix="gpu", gpus_per_worker=4)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in fours] == ["0,1,2,3"] and _served(fours[0][0]) == ["gpu-large-x4"]
    # A group is as big as its smallest card: an L4 pair holds no 40 GiB x2 queue.
    l4s = [{"index": i, "name": "NVIDIA L4", "memory_gib": 22.5} for i in range(2)]
    assert workers.worker_commands("gpu", queues, l4s, cpu_workers=1, prefix="gpu", gpus_per_worker=2) == []
    # CPU stand-ins for 2-card workers (CI): the two-card queues only, no CUDA pinning.
    cpu = workers.worker_commands("gpu", queues, [], cpu_workers=1, prefix="x2", gpus_per_worker=2)
    assert len(cpu) == 1 and _served(cpu[0][0]) == ["gpu-large-x2"] and "CUDA_VISIBLE_DEVICES" not in cpu[0][1]
    # 8 cards per worker: no queue of that size, no worker.
    assert workers.worker_commands("gpu", queues, h100s, cpu_workers=1, prefix="gpu", gpus_per_worker=8) == []


def test_every_queue_has_a_worker_shape_that_serves_it():
    """A queue no worker shape serves would hold its runs forever: each is served by some K-card worker."""
    workers = gpu_workers_module()
    import yaml

    queues = yaml.safe_load((REPO / "deployments" / "pools" / "pools.yaml").read_text())["gpu"]["queues"]
    served = set()
    for k in {workers.queue_gpus(q) for q in queues.values()}:
        served.update(workers.queues_for_card(queues, 80.0, k))
    assert served == set(queues)


def test_prefect_yaml_deploys_without_prompts():
    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert (
        spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $EMOTION_PROJECT_DIR }}"
    )
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {"nightly", "gpu", "batch"} and all("schedules" in d for d in by_name.values())
    assert by_name["nightly"]["work_pool"]["name"] != by_name["gpu"]["work_pool"]["name"]  # same pool deadlocks
    assert by_name["nightly"]["parameters"]["dispatch"] == "deployment"
    assert by_name["nightly"]["parameters"]["child_deployment"] == "train-model/gpu"


def test_each_child_requests_its_cards_as_the_gpu_count_job_variable(monkeypatch):
    """start_children and a re-dispatch pass resources.gpus as ``gpu_count`` (the Kubernetes template's request)."""
    import logging
    from types import SimpleNamespace
    from uuid import uuid4

    import prefect.deployments

    calls = []

    def fake_run_deployment(name, **kwargs):  # the server side is covered by tests/e2e/test_placement_gpus.py
        calls.append(kwargs)
        return SimpleNamespace(id=uuid4())

    monkeypatch.setattr(prefect.deployments, "run_deployment", fake_run_deployment)
    from flows.dispatch import redispatch, start_children

    specs = [
        {"config": "one", "run_id": "r1", "queue": "gpu-small", "parameters": {}},
        {"config": "two", "run_id": "r2", "queue": "gpu-large-x2", "gpus": 2, "gpu_memory_gb": 40, "parameters": {}},
    ]
    children = start_children("train-model/gpu", specs, tags=[])
    two = {"gpu_count": 2, "gpu_memory_mib_gt": "40959"}  # nodes with more than 40 GiB - 1 MiB of GPU memory
    assert [c["job_variables"] for c in calls] == [{"gpu_count": 1}, two]
    assert [c["work_queue_name"] for c in calls] == ["gpu-small", "gpu-large-x2"]
    children[1].state = "CRASHED"
    redispatch("train-model/gpu", children[1], logging.getLogger("test"))
    assert calls[-1]["job_variables"] == two and calls[-1]["work_queue_name"] == "gpu-large-x2"
