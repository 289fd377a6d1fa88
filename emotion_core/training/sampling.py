"""Rare-label oversampling (``training.oversample_rare``): repeat whole training rows that carry rare labels.

``oversample_indices(labels, strength, seed)``: every row at least once; a label below the median positive
count ``M`` gets a factor ``(M / c_l) ** strength``, each row the largest factor of its labels, rounded
stochastically (seeded). ``oversampled`` reads a training dataset through those indices.

Limits
- Rows repeat whole: labels that co-occur with rare ones rise too. A label without positives cannot rise.
- Only training rows are resampled; an epoch becomes ``len(indices)`` rows.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from emotion_core.config import TrainingConfig

log = logging.getLogger(__name__)


def label_factors(labels: np.ndarray, strength: float) -> np.ndarray:
    """Per-label repeat factor ``max(median / count, 1) ** strength`` (1 for labels without positives)."""
    counts = np.asarray(labels).sum(axis=0).astype(np.float64)
    present = counts > 0
    factors = np.ones_like(counts)
    if present.any():
        median = float(np.median(counts[present]))
        factors[present] = np.maximum(median / counts[present], 1.0) ** strength
    return factors


def oversample_indices(labels: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """Row indices (int64, each row at least once, repeats adjacent) raising rare labels toward the median count.

    ``labels``: the training split's 0/1 (rows, labels) matrix. ``strength`` in [0, 1]: 0 returns
    ``np.arange(rows)``; 1 raises every label to about the median label's positive count.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a (rows, labels) matrix, got shape {labels.shape}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"oversampling strength must be in [0, 1], got {strength}")
    n = len(labels)
    if strength == 0 or n == 0:
        return np.arange(n)
    positive = labels > 0
    factors = label_factors(positive, strength)
    row_factor = np.where(positive, factors, 1.0).max(axis=1, initial=1.0)
    rng = np.random.default_rng(seed)
    whole = np.floor(row_factor)
    repeats = whole.astype(np.int64) + (rng.random(n) < row_factor - whole)
    return np.repeat(np.arange(n), repeats)


def oversampled(train_dataset, train_labels: np.ndarray | None, training: TrainingConfig):
    """``train_dataset``, or with ``training.oversample_rare`` > 0 a ``Subset`` repeating rows with rare labels."""
    if training.oversample_rare == 0:
        return train_dataset
    if train_labels is None:
        raise ValueError("training.oversample_rare is set: pass train_labels (the training split's label matrix)")
    if len(train_labels) != len(train_dataset):
        raise ValueError(f"train_labels has {len(train_labels)} rows, the training dataset {len(train_dataset)}")
    indices = oversample_indices(train_labels, training.oversample_rare, training.seed)
    log.info(
        "oversampling rare labels (strength %g): %d training rows -> %d per epoch",
        training.oversample_rare,
        len(train_dataset),
        len(indices),
    )
    # Items are read through the Subset, so the Trainer's length grouping (which reads each item's
    # ``input_ids``) sees the repeated rows' lengths as well.
    return torch.utils.data.Subset(train_dataset, indices.tolist())
