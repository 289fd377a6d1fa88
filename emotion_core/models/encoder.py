"""Transformer encoder + new multi-label head: the fine-tuning family (BERT, RoBERTa, DistilBERT, DeBERTa-v2...).

Features
- Any ``AutoModel`` body (hub id, local folder, or the bundled offline MiniLM) with a fresh linear head.
- Pooling: attention-masked mean over tokens (default) or the first token. Mean pooling is how
  sentence encoders such as all-MiniLM-L6-v2 were pretrained; BERT's pooler (what
  ``AutoModelForSequenceClassification`` reads for BERT) is effectively untrained in that model
  (weight std 0.009) and a head on it collapsed to "no label" here, so the head sits on our pooling
  rather than on each architecture's own classification head. The BERT pooler is frozen (unused).
- Head bias initialised to the logit of each label's prior; the head learns at its own rate.
- BCE-with-logits loss computed in ``forward`` when ``labels`` are given.
- Saved as ``body/`` (``save_pretrained``, safetensors), ``head.safetensors`` and ``tokenizer/``.

Limits
- Remote model code only with ``trust_remote_code: true`` in the config.
- No adapters yet (LoRA/IA3/QLoRA come through ``peft`` in a later family option).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from emotion_core.config import EncoderConfig, RunConfig, TrainingConfig
from emotion_core.labels import LabelSchema
from emotion_core.models.family import Family, label_prior_logits, split_decay
from emotion_core.models.resolve import resolve_model


class EncoderClassifier(nn.Module):
    """Encoder body -> pooled vector -> dropout -> linear head (one logit per label)."""

    def __init__(self, body: nn.Module, num_labels: int, pooling: str, dropout: float) -> None:
        super().__init__()
        self.body = body
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(body.config.hidden_size, num_labels)

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


class TokenizedTexts(torch.utils.data.Dataset):
    """Tokenized texts (unpadded) with optional float labels; items carry ``length`` for length grouping."""

    def __init__(self, encodings: dict[str, list], labels: np.ndarray | None) -> None:
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict:
        item = {key: values[i] for key, values in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def _family(cfg: RunConfig, model: EncoderClassifier, tokenizer) -> Family:
    spec: EncoderConfig = cfg.model

    def make_dataset(texts: list[str], labels: np.ndarray | None) -> TokenizedTexts:
        enc = tokenizer(list(texts), truncation=True, max_length=spec.max_length)
        encodings = {k: enc[k] for k in tokenizer.model_input_names if k in enc}
        return TokenizedTexts(encodings, None if labels is None else labels.astype(np.float32))

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        features = [{k: v for k, v in item.items() if k != "labels"} for item in items]
        batch = dict(tokenizer.pad(features, return_tensors="pt"))
        if "labels" in items[0]:
            batch["labels"] = torch.from_numpy(np.stack([item["labels"] for item in items]))
        return batch

    def param_groups(training: TrainingConfig) -> list[dict]:
        body = split_decay(model.body.named_parameters(), training.learning_rate, training.weight_decay)
        head = split_decay(model.head.named_parameters(), training.head_learning_rate, training.weight_decay)
        return body + head

    def save(folder: Path) -> None:
        model.body.save_pretrained(folder / "body")
        save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, str(folder / "head.safetensors"))
        tokenizer.save_pretrained(folder / "tokenizer")

    return Family("encoder", model, make_dataset, collate, param_groups, save, has_lengths=True)


def _freeze_unused(body: nn.Module) -> None:
    # BERT-style bodies carry a pooler our head does not read; frozen, it is not counted as trainable.
    for name, param in body.named_parameters():
        if name.startswith("pooler."):
            param.requires_grad_(False)


def build(cfg: RunConfig, schema: LabelSchema, train_texts: list[str], train_labels: np.ndarray) -> Family:
    """A pretrained body with a new head whose bias starts at the label priors (if configured)."""
    from transformers import AutoModel, AutoTokenizer

    spec: EncoderConfig = cfg.model
    source = resolve_model(spec.model, spec.revision, spec.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    body = AutoModel.from_pretrained(
        source, revision=spec.revision, trust_remote_code=spec.trust_remote_code, use_safetensors=True, dtype=torch.float32
    )
    _freeze_unused(body)
    model = EncoderClassifier(body, len(schema), spec.pooling, spec.dropout)
    if cfg.training.init_bias_from_prior:
        with torch.no_grad():
            model.head.bias.copy_(torch.from_numpy(label_prior_logits(train_labels)))
    return _family(cfg, model, tokenizer)


def load(cfg: RunConfig, schema: LabelSchema, folder: Path) -> Family:
    """Rebuild a trained encoder classifier from ``folder`` (weights are safetensors only)."""
    from transformers import AutoModel, AutoTokenizer

    spec: EncoderConfig = cfg.model
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    body = AutoModel.from_pretrained(folder / "body", use_safetensors=True, dtype=torch.float32, trust_remote_code=spec.trust_remote_code)
    model = EncoderClassifier(body, len(schema), spec.pooling, spec.dropout)
    model.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    model.eval()
    return _family(cfg, model, tokenizer)
