"""Adapters through ``peft``: LoRA, IA3 and QLoRA for the encoder and decoder families.

Features
- ``TARGETS``: default target modules per architecture (``model.adapter.target_modules`` overrides);
  ``check_supported`` needs only a ``model_type`` (the pre-flight check: no torch, no download).
- QLoRA: the base in 4-bit nf4 (bitsandbytes), prepared for k-bit training, LoRA on top.
- The new head stays fully trainable and is saved with the adapter; every other base weight is frozen.
- ``trainable_parameters`` counts a 4-bit weight as the parameters it stands for.
- ``save_adapter`` / ``load_adapter`` (adapter and head only); ``export_merged`` for LoRA/IA3.

Limits
- Architectures outside ``TARGETS`` are refused. No merged export for QLoRA.
- QLoRA on CPU turns off bitsandbytes' AVX512-bf16 repacking (it breaks gradients after an evaluation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emotion_core.errors import ConfigError
from emotion_core.model_configs import AdapterConfig

if TYPE_CHECKING:  # heavy imports stay out of the pre-flight path
    import torch


@dataclass(frozen=True)
class Targets:
    """Default adapter targets of one architecture (module-name suffixes)."""

    lora: tuple[str, ...]
    """LoRA/QLoRA: attention q/k/v/output projections and the MLP projections."""
    ia3: tuple[str, ...]
    """IA3: keys, values and the feed-forward output layer."""
    ia3_feedforward: tuple[str, ...]
    """IA3 targets scaled on their input (the feed-forward activation) rather than their output."""
    ia3_exclude: tuple[str, ...] = ()
    """Modules a suffix in ``ia3`` also matches but IA3 leaves alone (BERT's ``attention.output.dense``)."""


# BERT-style encoders: ``output.dense`` is the suffix of both ``attention.output.dense`` and the
# feed-forward ``output.dense``; ``intermediate.dense`` is the MLP's first layer. The bare suffix
# ``dense`` would also catch ``pooler.dense`` (unused by the encoder family), so it is not used.
_BERT_LIKE = Targets(
    lora=("query", "key", "value", "output.dense", "intermediate.dense"),
    ia3=("key", "value", "output.dense"),
    ia3_feedforward=("output.dense",),
    ia3_exclude=("attention.output.dense",),
)
_LLAMA_LIKE = Targets(
    lora=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ia3=("k_proj", "v_proj", "down_proj"),
    ia3_feedforward=("down_proj",),
)
TARGETS: dict[str, Targets] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "distilbert": Targets(
        lora=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
        ia3=("k_lin", "v_lin", "lin2"),
        ia3_feedforward=("lin2",),
    ),
    "deberta-v2": Targets(
        lora=("query_proj", "key_proj", "value_proj", "output.dense", "intermediate.dense"),
        ia3=("key_proj", "value_proj", "output.dense"),
        ia3_feedforward=("output.dense",),
        ia3_exclude=("attention.output.dense",),
    ),
    "llama": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
}
"""``config.model_type`` -> default targets. Keep in step with ``preflight.ADAPTER_ARCHITECTURES``."""

METHODS = ("lora", "ia3", "qlora")


def supported(model_type: str, method: str) -> bool:
    """Whether ``method`` has known target modules on architecture ``model_type``."""
    return model_type in TARGETS and method in METHODS


def check_supported(model_type: str, method: str, config_name: str) -> None:
    """Raise ``ConfigError`` naming the config, the architecture and the supported ones."""
    if method not in METHODS:
        raise ConfigError(
            f"config '{config_name}': field 'model.adapter.method': unknown adapter method "
            f"'{method}'; supported: {', '.join(METHODS)}"
        )
    if not supported(model_type, method):
        raise ConfigError(
            f"config '{config_name}': field 'model.adapter': {method} is not supported on architecture "
            f"'{model_type}'; supported architectures: {', '.join(TARGETS)}"
        )


def compute_dtype(adapter: AdapterConfig) -> torch.dtype:
    """QLoRA's matmul dtype: ``auto`` -> bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    import torch

    if adapter.compute_dtype != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[adapter.compute_dtype]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # CPUs without native bf16 emulate it far slower than fp32


def quantization_config(adapter: AdapterConfig, skip_modules: list[str] | None = None):
    """``transformers.BitsAndBytesConfig`` for QLoRA: 4-bit nf4, double quantisation per the config.

    ``skip_modules``: modules kept in full precision (a classification head that is trained).
    """
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=adapter.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(adapter),
        llm_int8_skip_modules=list(skip_modules) if skip_modules else None,
    )


def peft_config(adapter: AdapterConfig, model_type: str, head_modules: list[str], task_type: str | None = None):
    """The ``peft`` config (``LoraConfig`` or ``IA3Config``) for ``adapter`` on ``model_type``."""
    from peft import IA3Config, LoraConfig

    defaults = TARGETS.get(model_type)
    if adapter.target_modules is None and defaults is None:
        raise ConfigError(
            f"field 'model.adapter': no default target modules for architecture '{model_type}'; "
            f"supported architectures: {', '.join(TARGETS)}"
        )
    modules_to_save = list(head_modules) or None
    if adapter.method == "ia3":
        if adapter.target_modules is not None:
            targets, exclude = list(adapter.target_modules), None
            feedforward = (
                list(adapter.feedforward_modules)
                if adapter.feedforward_modules is not None
                else [t for t in targets if defaults is not None and t in defaults.ia3_feedforward]
            )
        else:
            targets, exclude = list(defaults.ia3), list(defaults.ia3_exclude) or None
            feedforward = (
                list(adapter.feedforward_modules)
                if adapter.feedforward_modules is not None
                else list(defaults.ia3_feedforward)
            )
        return IA3Config(
            target_modules=targets,
            feedforward_modules=feedforward,
            exclude_modules=exclude,
            modules_to_save=modules_to_save,
            task_type=task_type,
        )
    targets = list(adapter.target_modules) if adapter.target_modules is not None else list(defaults.lora)
    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets,
        bias="none",
        modules_to_save=modules_to_save,
        task_type=task_type,
    )


def apply_adapter(
    model,
    adapter: AdapterConfig,
    model_type: str,
    head_modules: list[str],
    *,
    task_type: str | None = None,
    gradient_checkpointing: bool = False,
):
    """Wrap ``model`` in its peft adapter; afterwards only adapter weights and ``head_modules`` train.

    For QLoRA ``model`` must already be loaded in 4-bit (``quantization_config``); it is prepared for
    k-bit training first. ``head_modules``: names of the new head (``["score"]`` for decoder
    classifiers; ``[]`` for the encoder body, whose head lives outside it). ``task_type``: peft's
    (``"SEQ_CLS"`` for ``AutoModelForSequenceClassification``), or None for a bare body.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if adapter.method == "qlora":
        if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False)):
            raise ValueError("qlora: load the model with quantization_config(adapter) first")
        # peft's own checkpointing path calls the deprecated transformers API with reentrant
        # checkpointing; ours (below) is non-reentrant and needs no input-grad hook.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        keep_4bit_differentiable(model)
    if gradient_checkpointing:
        enable_checkpointing(model)
    return get_peft_model(model, peft_config(adapter, model_type, head_modules, task_type))


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing on a transformers model (any version)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def adapted_modules(model) -> list[str]:
    """Names of the modules an adapter was injected into (LoRA/IA3 layers), in model order."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def _real_numel(param) -> int:
    if param.__class__.__name__ == "Params4bit":
        quant_state = getattr(param, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "shape", None) is not None:
            count = 1
            for dim in quant_state.shape:
                count *= int(dim)
            return count
        return param.numel() * 2  # two 4-bit values per stored byte
    return param.numel()


def trainable_parameters(model) -> dict[str, int]:
    """``{"trainable", "total"}`` parameter counts; a 4-bit weight counts as the parameters it stands for.

    A head wrapped by ``modules_to_save`` exists twice (the frozen original and the trained copy);
    both are counted, as they are both held in memory.
    """
    trainable = total = 0
    for param in model.parameters():
        count = _real_numel(param)
        total += count
        if param.requires_grad:
            trainable += count
    return {"trainable": trainable, "total": total}


def save_adapter(model, folder: Path) -> None:
    """Save only the adapter and the head (``modules_to_save``): safetensors + ``adapter_config.json``."""
    model.save_pretrained(str(folder), safe_serialization=True)


def load_adapter(base, folder: Path, adapter: AdapterConfig | None = None, trainable: bool = False):
    """``base`` + the adapter (and head) saved in ``folder``.

    ``base`` must be loaded as for training (4-bit for QLoRA) with the same fresh head module; for
    QLoRA (``adapter``) it is prepared as in training (non-4-bit weights in fp32), so the reloaded
    model computes exactly what the trained one did.
    """
    from peft import PeftModel, prepare_model_for_kbit_training

    if not (Path(folder) / "adapter_model.safetensors").is_file():  # PEFT would fall back to a pickled .bin
        from emotion_core.errors import ModelError

        raise ModelError(f"{folder}: no adapter_model.safetensors; adapters are loaded from safetensors only")
    if adapter is not None and adapter.method == "qlora":
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        keep_4bit_differentiable(base)
    return PeftModel.from_pretrained(base, str(folder), is_trainable=trainable)


def keep_4bit_differentiable(model) -> int:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights; returns the layers changed.

    On CPUs with AVX512-bf16, bitsandbytes (0.50) repacks a ``Linear4bit`` weight in place the first
    time it runs in eval mode without gradients (absmax cast to bf16, a ``gemv_4bit`` kernel). The
    repacking is permanent: every later forward uses that kernel, which has no autograd formula, so
    training after the Trainer's first evaluation would backpropagate wrong gradients to the
    adapters below each 4-bit layer (measured: relative error > 1), and evaluation would compute
    other logits than training. It also fails for layers narrower than the 64-value block. With it
    off, training and evaluation share bitsandbytes' dequantise-and-matmul path. GPUs are unaffected.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def export_merged(model, adapter: AdapterConfig, folder: Path) -> bool:
    """Save ``model`` with its adapter merged into the base weights (LoRA/IA3 only); True if written.

    Merges a deep copy (the model in memory keeps its adapter), so it briefly needs a second copy of
    the weights. QLoRA is never merged: its base is 4-bit.
    """
    if adapter.method == "qlora":
        return False
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(str(folder), safe_serialization=True)
    del merged
    return True


def describe(adapter: AdapterConfig | None, model_type: str) -> dict[str, Any]:
    """A JSON-able summary of the adapter as configured and as resolved for ``model_type``."""
    if adapter is None:
        return {"method": None}
    defaults = TARGETS.get(model_type)
    if adapter.method == "ia3":
        targets = adapter.target_modules or (defaults.ia3 if defaults else ())
    else:
        targets = adapter.target_modules or (defaults.lora if defaults else ())
    return {"method": adapter.method, "target_modules": list(targets), **adapter.model_dump(exclude={"target_modules"})}
