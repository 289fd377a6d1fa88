"""Bad model configs fail before any download or training, naming the config and the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emotion_core.config import RunConfig
from emotion_core.errors import ConfigError
from emotion_core.models import preflight


def cfg(model: dict, gpu_gb: float = 16) -> RunConfig:
    return RunConfig.model_validate({"name": "c", "model": model, "resources": {"gpu_memory_gb": gpu_gb}})


@pytest.mark.parametrize(
    "ref,arch,params",
    [
        ("meta-llama/Llama-3.2-1B", "llama", 1e9),
        ("Qwen/Qwen2.5-0.5B", "qwen2", 0.5e9),
        ("google/gemma-2-2b", "gemma2", 2e9),
        ("google/gemma-1.1-2b-it", "gemma", 2e9),
        ("mistralai/Mistral-7B-v0.1", "mistral", 7e9),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama", 8e9),
        ("microsoft/deberta-v3-base", "deberta-v2", 184e6),
        ("distilroberta-base", "roberta", 82e6),
        ("EleutherAI/pythia-410m", "gpt_neox", 410e6),
        ("minilm", "bert", 22.7e6),
    ],
)
def test_architecture_and_size_come_from_the_id_without_downloading(ref, arch, params):
    assert preflight.architecture(ref) == arch
    assert preflight.parameter_count(ref) == pytest.approx(params)


def test_an_adapter_on_an_unsupported_architecture_is_refused():
    with pytest.raises(
        ConfigError, match=r"config 'c': field 'model.adapter': lora is not supported on architecture 'gpt_neox'"
    ):
        preflight.check(cfg({"family": "decoder", "model": "EleutherAI/pythia-410m", "adapter": {"method": "lora"}}))


def test_a_model_larger_than_the_declared_gpu_memory_is_refused():
    with pytest.raises(
        ConfigError, match=r"field 'resources.gpu_memory_gb': mistralai/Mistral-7B-v0.1 .* needs ~\d+ GiB .* full"
    ):
        preflight.check(cfg({"family": "decoder", "model": "mistralai/Mistral-7B-v0.1", "adapter": None}, gpu_gb=40))
    # The same model as QLoRA fits in 40 GiB.
    preflight.check(
        cfg({"family": "decoder", "model": "mistralai/Mistral-7B-v0.1", "adapter": {"method": "qlora"}}, gpu_gb=40)
    )


def test_qlora_without_bitsandbytes_is_refused(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="qlora needs bitsandbytes"):
        preflight.check(cfg({"family": "decoder", "model": "smollm2", "adapter": {"method": "qlora"}}))


def test_the_shipped_sets_pass_and_checking_loads_no_ml_library(repo):
    code = (
        "import sys; from emotion_core.config import load_config_set; from emotion_core.models import preflight\n"
        "for s in ('gpu', 'cpu-demo'):\n"
        "    _, entries = load_config_set(f'deployments/sets/{s}.yaml')\n"
        "    [preflight.check(e.config, str(e.path)) for e in entries]\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"  # nothing heavy imported, nothing downloaded


def test_adapter_architectures_match_the_adapter_module():
    adapters = pytest.importorskip("emotion_core.models.adapters")
    for arch in preflight.ADAPTER_ARCHITECTURES:
        assert adapters.supported(arch, "lora") and adapters.supported(arch, "ia3"), arch
