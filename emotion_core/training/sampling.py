"""Rare-label oversampling (``training.oversample_rare``): repeat whole training rows that carry rare labels.

``oversample_indices(labels, strength, seed)`` returns row indices into the training split: every
row at least once, rows with rare labels several times. The Trainer then reads the training set
through a ``torch.utils.data.Subset`` of these indices (``training.fit``).

How many repeats, with ``c_l`` the positive count of label ``l`` and ``M`` the median of the
``c_l`` over the labels that have positives:
- each label gets a factor ``f_l = max(M / c_l, 1) ** strength``: ``strength`` 1 aims its count at
  about ``M``; in between the target ``c_l * f_l`` moves geometrically (in log space) from ``c_l``
  to ``M`` (0.5: the geometric mean of the two); labels at or above the median keep ``f_l = 1``;
- each row is repeated ``r = max f_l`` over its labels (1 for a row without labels), rounded
  stochastically (``floor(r)``, plus one with probability ``r - floor(r)``; seeded), so a label's
  expected count is at least ``c_l * f_l``.

Limits
- Rows repeat whole: the labels that co-occur with a rare label rise too (in GoEmotions
  ``neutral``, ``approval``... appear beside rare ones), so frequent labels grow a little and a rare
  label that mostly co-occurs with another rare one can end above the median.
- A label without any positive training row cannot be raised.
- Only the training rows are resampled; validation and test are never touched. The Trainer's epoch
  becomes ``len(indices)`` rows, so an epoch takes longer.
- Deterministic for a seed (NumPy's PCG64 ``default_rng``).
"""

from __future__ import annotations

import numpy as np


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
