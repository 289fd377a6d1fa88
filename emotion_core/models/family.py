"""The one shape every model family is trained and served through (``Family``), and its shared helpers.

A ``Family`` holds what the training loop and ``predict`` need, and nothing else; optimizer groups and
learning rates are the training loop's business (``training.optimizer``): a family only says which of
its parameters form the newly initialised head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Family:
    name: str
    model: torch.nn.Module
    """``forward(**batch)`` returns ``logits`` (batch, labels), and ``loss`` when ``labels`` are in the batch."""
    make_dataset: Callable[[list[str], np.ndarray | None], Any]
    """``(texts, labels or None)`` -> a dataset of model inputs."""
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    """A list of dataset items -> a batch (dynamic padding)."""
    save: Callable[[Path], None]
    """Writes the weights (safetensors) and what rebuilds the inputs into a folder."""
    has_lengths: bool
    """Items carry ``input_ids``, whose lengths drive length-grouped batching."""
    is_head: Callable[[str], bool] | None = None
    """Parameter name -> part of the new head (trained at ``head_learning_rate``); None: no separate head."""
    trained: bool = True
    """False for a prompted family: nothing to fit."""


def label_prior_logits(train_labels: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """logit(p) of each label's share of positive training rows, clipped away from 0 and 1.

    Starting the output bias there makes the untrained model predict each label's base rate,
    instead of 0.5 for all; with a zero bias the first steps push every logit down and the
    head can collapse to predicting no label (measured on MiniLM/GoEmotions).
    """
    prior = np.clip(train_labels.mean(axis=0), eps, 1 - eps)
    return np.log(prior / (1 - prior)).astype(np.float32)
