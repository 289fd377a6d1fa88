"""The Kubernetes GPU work-pool template (deployments/pools/kubernetes-gpu.json) against Prefect's own checks.

Static checks use Prefect's placeholder finder and jsonschema; the slow ones use the session's Prefect
server: it must store the template unchanged, render it with Prefect's templating, and reject broken
copies. The kubernetes worker (prefect-kubernetes) is not installed here, so its manifest rules are
mirrored, not run.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

import flows  # noqa: F401  (Prefect environment defaults before Prefect is imported)

TEMPLATE = Path(__file__).resolve().parents[2] / "deployments" / "pools" / "kubernetes-gpu.json"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture
def template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())


def pod_spec(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]


def test_every_placeholder_names_a_variable(template):
    from prefect.utilities.templating import find_placeholders

    used = {p.name for p in find_placeholders(template["job_configuration"])}
    declared = set(template["variables"]["properties"])
    assert used <= declared, f"undeclared: {sorted(used - declared)}"
    assert {"gpu_count", "cpu_request", "memory_request", "node_selector", "tolerations", "image"} <= used


def test_variables_are_a_valid_schema_and_defaults_satisfy_it(template):
    from jsonschema import Draft202012Validator

    variables = template["variables"]
    Draft202012Validator.check_schema(variables)  # the draft Prefect's server validates with
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    Draft202012Validator(variables).validate(defaults)
    assert variables["properties"]["gpu_count"]["type"] == "integer" and defaults["gpu_count"] == 1
    assert defaults["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert GPU_TOLERATION in defaults["tolerations"]
    assert defaults["image"] == "ghcr.io/example/emotion-pipeline:latest"


def test_manifest_requests_gpus_as_the_kubernetes_worker_expects(template):
    manifest = template["job_configuration"]["job_manifest"]
    pod = pod_spec(manifest)
    container = pod["containers"][0]
    for kind in ("requests", "limits"):  # extended resources: requests must equal limits
        assert container["resources"][kind]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["resources"]["requests"]["cpu"] == "{{ cpu_request }}"
    assert container["resources"]["requests"]["memory"] == "{{ memory_request }}"
    assert pod["nodeSelector"] == "{{ node_selector }}" and pod["tolerations"] == "{{ tolerations }}"
    assert manifest["spec"]["backoffLimit"] == 0
    assert manifest["spec"]["ttlSecondsAfterFinished"] == "{{ finished_job_ttl }}"
    # What prefect-kubernetes' worker requires of a job manifest (_get_base_job_manifest).
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert (pod["restartPolicy"], pod["parallelism"], pod["completions"]) == ("Never", 1, 1)
    assert container["name"] == "prefect-job"
    # GPU visibility is the device plugin's job, not the template's.
    assert "CUDA_VISIBLE_DEVICES" not in json.dumps(template["job_configuration"])


@pytest.mark.slow
def test_prefect_renders_the_gpu_request(prefect_server, template):
    from prefect.client.orchestration import get_client
    from prefect.workers.base import BaseJobConfiguration

    class KubernetesFields(BaseJobConfiguration):
        """The fields of prefect-kubernetes' KubernetesWorkerJobConfiguration."""

        namespace: str = "default"
        job_manifest: dict[str, Any]
        cluster_config: dict | None = None
        job_watch_timeout_seconds: int | None = None
        pod_watch_timeout_seconds: int = 60
        stream_output: bool = True

    async def render(values):
        async with get_client() as client:
            return await KubernetesFields.from_template_and_values(template, values, client=client)

    config = asyncio.run(render({"gpu_count": 2, "image": "x"}))
    container = pod_spec(config.job_manifest)["containers"][0]
    # A whole-string placeholder takes the value's type: 2, not "2" (Kubernetes accepts both).
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 2}
    assert "memory" not in container["resources"]["limits"]  # an unset variable drops its key
    assert container["image"] == "x"
    assert pod_spec(config.job_manifest)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod_spec(config.job_manifest)["tolerations"] == [GPU_TOLERATION]
    assert config.job_manifest["spec"]["ttlSecondsAfterFinished"] == 86400
    assert config.pod_watch_timeout_seconds == 900 and config.namespace == "default"

    defaults = asyncio.run(render({}))
    container = pod_spec(defaults.job_manifest)["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "ghcr.io/example/emotion-pipeline:latest"


@pytest.mark.slow
def test_server_stores_the_template_unchanged(prefect_server, template):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    name = f"test-k8s-gpu-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="kubernetes", base_job_template=template))
        try:
            pool = client.read_work_pool(name)
            assert pool.type == "kubernetes"
            assert pool.base_job_template == template
        finally:
            client.delete_work_pool(name)
        with pytest.raises(ObjectNotFound):
            client.read_work_pool(name)


def _undeclared_placeholder(t):
    t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["priorityClassName"] = "{{ priority_class }}"


def _default_of_wrong_type(t):
    t["variables"]["properties"]["gpu_count"]["default"] = "one"


def _default_below_minimum(t):
    t["variables"]["properties"]["gpu_count"]["default"] = 0


def _invalid_schema(t):
    t["variables"]["properties"]["gpu_count"]["type"] = "int"


@pytest.mark.slow
@pytest.mark.parametrize(
    "break_it, message",
    [
        (_undeclared_placeholder, "undeclared variable(s): priority_class"),
        (_default_of_wrong_type, "Validation failed for work pool's job variable defaults"),
        (_default_below_minimum, "0 is less than the minimum of 1"),
        (_invalid_schema, "Invalid schema"),
    ],
)
def test_server_rejects_a_broken_template(prefect_server, template, break_it, message):
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    broken = copy.deepcopy(template)
    break_it(broken)
    name = f"test-k8s-gpu-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        # The client sends the template as is; the server validates it (pydantic, then jsonschema).
        with pytest.raises(httpx.HTTPStatusError) as info:
            client.create_work_pool(WorkPoolCreate(name=name, type="kubernetes", base_job_template=broken))
        assert info.value.response.status_code == 422
        assert message in info.value.response.text
        with pytest.raises(ObjectNotFound):
            client.read_work_pool(name)


def test_the_pod_needs_nodes_whose_gpus_have_the_configs_memory(template):
    pod = pod_spec(template["job_configuration"]["job_manifest"])
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    # GPU feature discovery's label, in MiB per card; Kubernetes compares label values as integers for Gt.
    assert term["matchExpressions"] == [
        {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["{{ gpu_memory_mib_gt }}"]}
    ]
    variable = template["variables"]["properties"]["gpu_memory_mib_gt"]
    assert (variable["type"], variable["default"]) == ("string", "0")  # Kubernetes wants strings in values


@pytest.mark.slow
def test_prefect_renders_the_gpu_memory_affinity(prefect_server, template):
    from prefect.client.orchestration import get_client
    from prefect.workers.base import BaseJobConfiguration

    class KubernetesFields(BaseJobConfiguration):
        namespace: str = "default"
        job_manifest: dict[str, Any]

    async def render(values):
        async with get_client() as client:
            return await KubernetesFields.from_template_and_values(template, values, client=client)

    def expression(values):
        pod = pod_spec(asyncio.run(render(values)).job_manifest)
        return pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][
            0
        ]["matchExpressions"][0]

    # A config with resources.gpu_memory_gb = 40 on 2 cards: nodes with more than 40959 MiB per card.
    assert expression({"gpu_count": 2, "gpu_memory_mib_gt": "40959"})["values"] == ["40959"]
    assert expression({})["values"] == ["0"]
