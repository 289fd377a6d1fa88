"""Decoder LLMs as multi-label classifiers (Llama, Gemma/Gemma2, Qwen2, Mistral, SmolLM2...).

Features
- ``AutoModelForSequenceClassification``: the last non-pad token's state -> a fresh fp32 ``ScoreHead``
  with a bias (started at the label priors); right padding does not change a text's logits.
- Adapters (LoRA by default, IA3, QLoRA) through ``models.adapters``, the head trained and saved with them;
  ``adapter: null`` fine-tunes every weight. ``gradient_checkpointing`` optional.
- Saved: ``adapter/`` or ``model/`` (safetensors), ``tokenizer/``, ``base.json``; ``merge_on_export``
  adds ``merged/`` (load it with ``load_full_model``).

Limits
- One device per run. A saved full/merged model needs ``load_full_model`` (plain transformers drops the
  head's bias). ``load`` rebuilds the base from the config: pin ``model.revision`` for hub models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emotion_core.config import RunConfig
from emotion_core.errors import ModelError
from emotion_core.labels import LabelSchema
from emotion_core.model_configs import DecoderConfig
from emotion_core.models.family import Family, label_prior_logits
from emotion_core.models.resolve import resolve_model
from emotion_core.models.tokenized import text_io

HEAD = "score"
"""Name of the classification head in transformers' ``*ForSequenceClassification`` decoders."""


class ScoreHead(nn.Linear):
    """The classification head: a linear layer with a bias, fp32, that casts its input to its own dtype."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.to(self.weight.dtype))


def _tokenizer(source: str, revision: str | None, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"model '{source}': its tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _weights_dtype(spec: DecoderConfig) -> torch.dtype:
    if spec.adapter is None:
        return torch.float32  # full fine-tune: fp32 master weights, the Trainer autocasts on GPU
    if spec.adapter.method == "qlora":
        from emotion_core.models.adapters import compute_dtype

        return compute_dtype(spec.adapter)  # non-4-bit weights; prepare_model_for_kbit_training makes them fp32
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16  # frozen body; peft keeps the adapter weights in fp32
    return torch.float32


def _attach_head(model, num_labels: int, pad_token_id: int) -> None:
    """Replace ``score`` by a fresh fp32 ``ScoreHead`` with a bias; set the pad token; no KV cache."""
    model.config.pad_token_id = pad_token_id
    model.config.use_cache = False
    old = getattr(model, HEAD)
    head = ScoreHead(old.in_features, num_labels, bias=True, dtype=torch.float32, device=old.weight.device)
    nn.init.normal_(head.weight, std=getattr(model.config, "initializer_range", 0.02))
    nn.init.zeros_(head.bias)
    setattr(model, HEAD, head)


def _base_model(source: str, spec: DecoderConfig, num_labels: int, pad_token_id: int):
    """The pretrained decoder as a classifier with a fresh head (4-bit for QLoRA), before any adapter."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {}
    if spec.adapter is not None and spec.adapter.method == "qlora":
        from emotion_core.models.adapters import quantization_config

        kwargs["quantization_config"] = quantization_config(spec.adapter, skip_modules=[HEAD])
        from emotion_core.training.ranks import device_map

        if device_map() is not None:  # under torchrun each rank loads the 4-bit model onto its own card
            kwargs["device_map"] = device_map()
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        use_safetensors=True,
        num_labels=num_labels,
        problem_type="multi_label_classification",
        dtype=_weights_dtype(spec),
        **kwargs,
    )
    _attach_head(model, num_labels, pad_token_id)
    return model


def head_module(model) -> nn.Linear:
    """The trained head: the ``modules_to_save`` copy under an adapter, else ``score`` itself."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, HEAD)
    copies = getattr(head, "modules_to_save", None)
    if copies is not None:
        return copies[head.active_adapter if isinstance(head.active_adapter, str) else head.active_adapter[0]]
    return head


def _is_head(name: str) -> bool:
    return HEAD in name.split(".")


def _family(cfg: RunConfig, model, tokenizer, base_info: dict) -> Family:
    spec: DecoderConfig = cfg.model
    make_dataset, collate = text_io(tokenizer, spec.max_length)

    def save(folder: Path) -> None:
        from emotion_core.models import adapters

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if spec.adapter is not None:
            adapters.save_adapter(model, folder / "adapter")
            if spec.adapter.merge_on_export:
                adapters.export_merged(model, spec.adapter, folder / "merged")
        else:
            model.save_pretrained(folder / "model", safe_serialization=True)
        tokenizer.save_pretrained(folder / "tokenizer")
        (folder / "base.json").write_text(json.dumps(base_info, indent=2) + "\n", encoding="utf-8")

    return Family("decoder", model, make_dataset, collate, save, has_lengths=True, is_head=_is_head)


def _base_info(spec: DecoderConfig, source: str, model) -> dict:
    from emotion_core.models.adapters import describe

    return {
        "model": spec.model,
        "revision": spec.revision,
        "source": source,
        "model_type": model.config.model_type,
        "num_labels": model.config.num_labels,
        "pad_token_id": model.config.pad_token_id,
        "head": HEAD,
        "head_bias": True,
        "adapter": describe(spec.adapter, model.config.model_type),
    }


def build(cfg: RunConfig, schema: LabelSchema, train_texts: list[str], train_labels: np.ndarray) -> Family:
    """A pretrained decoder with a new prior-initialised head, wrapped in its adapter if configured."""
    spec: DecoderConfig = cfg.model
    source = resolve_model(spec.model, spec.revision, spec.trust_remote_code)
    if spec.adapter is not None:  # refuse an unsupported architecture before loading any weight
        from transformers import AutoConfig

        from emotion_core.models.adapters import check_supported

        model_type = AutoConfig.from_pretrained(
            source, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        ).model_type
        check_supported(model_type, spec.adapter.method, cfg.name)
    tokenizer = _tokenizer(source, spec.revision, spec.trust_remote_code)
    model = _base_model(source, spec, len(schema), tokenizer.pad_token_id)
    if cfg.training.init_bias_from_prior:
        with torch.no_grad():
            model.score.bias.copy_(torch.from_numpy(label_prior_logits(train_labels)))
    info = _base_info(spec, source, model)
    if spec.adapter is not None:
        from emotion_core.models.adapters import apply_adapter

        model = apply_adapter(
            model,
            spec.adapter,
            model.config.model_type,
            head_modules=[HEAD],
            task_type="SEQ_CLS",
            gradient_checkpointing=spec.gradient_checkpointing,
        )
    elif spec.gradient_checkpointing:
        from emotion_core.models.adapters import enable_checkpointing

        enable_checkpointing(model)
    return _family(cfg, model, tokenizer, info)


def load_full_model(folder: Path, dtype: torch.dtype = torch.float32):
    """A saved full (or merged) decoder classifier, head bias included."""
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    folder = Path(folder)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, use_safetensors=True, dtype=dtype, trust_remote_code=False
    )  # never a run's code
    head_state = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            head_state.update({k[len(HEAD) + 1 :]: f.get_tensor(k) for k in f.keys() if k.startswith(HEAD + ".")})
    if "bias" not in head_state:
        raise ModelError(f"{folder}: no '{HEAD}.bias' in the saved weights; not a model saved by this family")
    _attach_head(model, model.config.num_labels, model.config.pad_token_id)
    model.score.load_state_dict(head_state)
    return model


def load(cfg: RunConfig, schema: LabelSchema, folder: Path) -> Family:
    """Rebuild a trained decoder classifier: the base from its source plus the run's adapter, or its full model."""
    spec: DecoderConfig = cfg.model
    folder = Path(folder)
    tokenizer = _tokenizer(str(folder / "tokenizer"), None, False)
    if spec.adapter is not None:
        from emotion_core.models.adapters import load_adapter

        if not (folder / "adapter" / "adapter_config.json").is_file():
            raise ModelError(f"{folder}: no adapter/adapter_config.json; was this run trained with model.adapter set?")
        source = resolve_model(spec.model, spec.revision, spec.trust_remote_code)
        base = _base_model(source, spec, len(schema), tokenizer.pad_token_id)
        info = _base_info(spec, source, base)
        model = load_adapter(base, folder / "adapter", spec.adapter)
    else:
        model = load_full_model(folder / "model")
        info = _base_info(spec, str(folder / "model"), model)
    if model.config.num_labels != len(schema):
        raise ModelError(f"{folder}: the model has {model.config.num_labels} labels, the schema {len(schema)}")
    model.eval()
    return _family(cfg, model, tokenizer, info)
