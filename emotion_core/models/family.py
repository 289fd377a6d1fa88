"""The one shape every model family is trained and served through.

A ``Family`` bundles what the training loop and ``predict`` need, and nothing else:
- ``model``: an ``nn.Module`` whose ``forward(**batch)`` returns ``loss`` (when ``labels`` are in the
  batch) and ``logits`` of shape (batch, labels);
- ``make_dataset(texts, labels)``: a torch/datasets dataset of model inputs;
- ``collate``: turns a list of dataset items into a batch (dynamic padding);
- ``param_groups(training)``: optimizer groups (the pretrained body and the new head learn at
  different rates; biases and norms get no weight decay);
- ``save(folder)``: weights as safetensors plus what is needed to rebuild the inputs;
- ``has_lengths``: whether items carry ``input_ids`` whose lengths drive length-grouped batching.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from emotion_core.config import RunConfig, TrainingConfig
from emotion_core.labels import LabelSchema


@dataclass
class Family:
    name: str
    model: torch.nn.Module
    make_dataset: Callable[[list[str], np.ndarray | None], Any]
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    param_groups: Callable[[TrainingConfig], list[dict]]
    save: Callable[[Path], None]
    has_lengths: bool


def label_prior_logits(train_labels: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """logit(p) of each label's share of positive training rows, clipped away from 0 and 1.

    Starting the output bias there makes the untrained model predict each label's base rate,
    instead of 0.5 for all; with a zero bias the first steps push every logit down and the
    head can collapse to predicting no label (measured on MiniLM/GoEmotions).
    """
    prior = np.clip(train_labels.mean(axis=0), eps, 1 - eps)
    return np.log(prior / (1 - prior)).astype(np.float32)


def split_decay(named_params, lr: float, weight_decay: float) -> list[dict]:
    """Two optimizer groups at ``lr``: weights with decay; biases and norm weights without."""
    decay, no_decay = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def build_family(cfg: RunConfig, schema: LabelSchema, train_texts: list[str], train_labels: np.ndarray) -> Family:
    """Build the family named by ``cfg.model.family``, initialised for ``schema``."""
    if cfg.model.family == "ffnn":
        from emotion_core.models import ffnn

        return ffnn.build(cfg, schema, train_texts, train_labels)
    if cfg.model.family == "encoder":
        from emotion_core.models import encoder

        return encoder.build(cfg, schema, train_texts, train_labels)
    if cfg.model.family == "decoder":
        from emotion_core.models import decoder

        return decoder.build(cfg, schema, train_texts, train_labels)
    if cfg.model.family == "zero_shot":
        from emotion_core.models import zero_shot

        return zero_shot.build(cfg, schema, train_texts, train_labels)
    raise ValueError(f"unknown model family {cfg.model.family!r}")  # unreachable: the config validates it


def load_family(cfg: RunConfig, schema: LabelSchema, folder: Path) -> Family:
    """Rebuild a trained family from a run's ``model/`` folder: safetensors only, never code from the folder."""
    if getattr(cfg.model, "trust_remote_code", False):
        from emotion_core.errors import ModelError

        raise ModelError(f"{folder}: field 'model.trust_remote_code' is true; a saved model is never loaded with "
                         "remote code (it would run Python from the run's files)")
    if cfg.model.family == "ffnn":
        from emotion_core.models import ffnn

        return ffnn.load(cfg, schema, folder)
    if cfg.model.family == "encoder":
        from emotion_core.models import encoder

        return encoder.load(cfg, schema, folder)
    if cfg.model.family == "decoder":
        from emotion_core.models import decoder

        return decoder.load(cfg, schema, folder)
    if cfg.model.family == "zero_shot":
        from emotion_core.models import zero_shot

        return zero_shot.load(cfg, schema, folder)
    raise ValueError(f"unknown model family {cfg.model.family!r}")
