"""Transformer encoder + new multi-label head: the fine-tuning family (BERT, RoBERTa, DistilBERT, DeBERTa-v2...).

Features
- Any ``AutoModel`` body (hub id, local folder, or the bundled offline MiniLM) with a fresh linear head on
  mean (default) or first-token pooling; the head's bias starts at the label priors.
- Adapters (LoRA, IA3, QLoRA) on the body through ``models.adapters``; the head is always fully trained.
- Saved as ``body/`` (the body or only its adapter), ``head.safetensors``, ``tokenizer/`` (+ ``base.json``,
  and ``body_merged/`` with ``merge_on_export``).

Limits
- Remote model code only with ``trust_remote_code: true`` (for hub ids in ``$EMOTION_TRUSTED_REMOTE_CODE``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from emotion_core.config import RunConfig
from emotion_core.labels import LabelSchema
from emotion_core.model_configs import EncoderConfig
from emotion_core.models.family import Family, label_prior_logits
from emotion_core.models.resolve import resolve_model
from emotion_core.models.tokenized import text_io


class EncoderClassifier(nn.Module):
    """Encoder body -> pooled vector -> dropout -> linear head (one logit per label)."""

    def __init__(self, body: nn.Module, num_labels: int, pooling: str, dropout: float) -> None:
        super().__init__()
        self.body = body
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        # On the body's device: a QLoRA body is placed on the GPU when it loads.
        self.head = nn.Linear(body.config.hidden_size, num_labels, device=next(body.parameters()).device)

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.body(**inputs).last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        else:
            pooled = hidden[:, 0]
        logits = self.head(self.dropout(pooled)).float()
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}


def _family(cfg: RunConfig, model: EncoderClassifier, tokenizer) -> Family:
    make_dataset, collate = text_io(tokenizer, cfg.model.max_length)

    def save(folder: Path) -> None:
        folder = Path(folder)
        adapter = cfg.model.adapter
        if adapter is not None:
            from emotion_core.models import adapters

            adapters.save_adapter(model.body, folder / "body")  # adapter weights only, never the base
            if adapter.merge_on_export:
                adapters.export_merged(model.body, adapter, folder / "body_merged")
            model_type = model.body.config.model_type
            base = {
                "model": cfg.model.model,
                "revision": cfg.model.revision,
                "model_type": model_type,
                "adapter": adapters.describe(adapter, model_type),
            }
            (folder / "base.json").write_text(json.dumps(base, indent=2) + "\n", encoding="utf-8")
        else:
            model.body.save_pretrained(folder / "body")
        head = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
        save_file(head, str(folder / "head.safetensors"))
        tokenizer.save_pretrained(folder / "tokenizer")

    return Family("encoder", model, make_dataset, collate, save, has_lengths=True, is_head=_is_head)


def _is_head(name: str) -> bool:
    return name.startswith("head.")


def _freeze_unused(body: nn.Module) -> None:
    # BERT-style bodies carry a pooler our head does not read; frozen, it is not counted as trainable.
    for name, param in body.named_parameters():
        if name.startswith("pooler."):
            param.requires_grad_(False)


def _base_body(spec: EncoderConfig, source: str):
    """The pretrained body: fp32, or 4-bit nf4 for QLoRA (its non-4-bit weights fp32)."""
    from transformers import AutoModel

    kwargs = {}
    if spec.adapter is not None and spec.adapter.method == "qlora":
        from emotion_core.models.adapters import quantization_config

        kwargs["quantization_config"] = quantization_config(spec.adapter)
        from emotion_core.training.ranks import device_map

        if device_map() is not None:  # under torchrun each rank loads the 4-bit model onto its own card
            kwargs["device_map"] = device_map()
    return AutoModel.from_pretrained(
        source,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        use_safetensors=True,
        dtype=torch.float32,
        **kwargs,
    )


def _check_adapter(cfg: RunConfig, source: str) -> None:
    """Refuse an adapter on an architecture without known targets, before any weight is loaded."""
    from transformers import AutoConfig

    from emotion_core.models.adapters import check_supported

    spec: EncoderConfig = cfg.model
    config = AutoConfig.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    model_type = config.model_type
    check_supported(model_type, spec.adapter.method, cfg.name)


def build(cfg: RunConfig, schema: LabelSchema, train_texts: list[str], train_labels: np.ndarray) -> Family:
    """A pretrained body (with an adapter if configured) and a new head whose bias starts at the label priors."""
    from transformers import AutoTokenizer

    spec: EncoderConfig = cfg.model
    source = resolve_model(spec.model, spec.revision, spec.trust_remote_code)
    if spec.adapter is not None:
        _check_adapter(cfg, source)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    body = _base_body(spec, source)
    _freeze_unused(body)
    if spec.adapter is not None:  # the head is not part of the body: head_modules stays empty
        from emotion_core.models.adapters import apply_adapter

        body = apply_adapter(body, spec.adapter, body.config.model_type, head_modules=[])
    model = EncoderClassifier(body, len(schema), spec.pooling, spec.dropout)
    if cfg.training.init_bias_from_prior:
        with torch.no_grad():
            model.head.bias.copy_(torch.from_numpy(label_prior_logits(train_labels)))
    return _family(cfg, model, tokenizer)


def load(cfg: RunConfig, schema: LabelSchema, folder: Path) -> Family:
    """Rebuild a trained encoder classifier from ``folder`` (weights are safetensors only)."""
    from transformers import AutoModel, AutoTokenizer

    spec: EncoderConfig = cfg.model
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", trust_remote_code=False)  # never a run's code
    if spec.adapter is not None:  # the base comes from its source again; the run holds the adapter
        from emotion_core.models.adapters import load_adapter

        source = resolve_model(spec.model, spec.revision, spec.trust_remote_code)
        body = load_adapter(_base_body(spec, source), folder / "body", spec.adapter)
    else:
        body = AutoModel.from_pretrained(
            folder / "body", use_safetensors=True, dtype=torch.float32, trust_remote_code=False
        )
    model = EncoderClassifier(body, len(schema), spec.pooling, spec.dropout)
    model.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    model.eval()
    return _family(cfg, model, tokenizer)
