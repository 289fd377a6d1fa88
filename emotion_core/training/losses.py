"""Multi-label training losses over label logits (``training.loss``): one loss path for every family.

``build_loss(cfg, train_labels)`` -> ``loss(logits, labels)``, the mean over every (row, label) entry; the
Trainer applies it to the model's ``logits`` (``training.fit``).

Features
- ``bce``; ``bce_pos_weight`` (positives weighted by ``clip(neg/pos, 1, pos_weight_max)`` per label);
  ``focal`` (Lin et al. 2017); ``asl`` (Ridnik et al. 2021: easy negatives below ``asl_clip`` add 0);
  ``combined``: a weighted sum (not renormalised). ``focal`` with gamma 0 and ``asl`` with 0/0/0 are BCE.
- ``label_smoothing`` e: every kind sees the targets ``y (1 - e) + e / 2``.
- Written with ``logsigmoid`` in float32: finite values and gradients for logits of any size.

Limits
- ``pos_weight`` comes from the training split before oversampling.
- ASL's focusing weights carry gradient (the reference implementation's default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch.nn import functional as F

from emotion_core.config import LossConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(logits, labels) -> scalar tensor``; both of shape (batch, labels), labels 0/1 (any dtype)."""

NEEDS_LABEL_STATISTICS = frozenset({"bce_pos_weight"})
"""Loss kinds computed from the training labels."""


def pos_weights(train_labels: np.ndarray, cap: float) -> torch.Tensor:
    """Per-label ``clip(negatives / positives, 1, cap)`` of a 0/1 (rows, labels) matrix; no positive: ``cap``."""
    labels = np.asarray(train_labels)
    if labels.ndim != 2 or len(labels) == 0:
        raise ValueError(f"train_labels must be a non-empty (rows, labels) matrix, got shape {labels.shape}")
    positives = labels.sum(axis=0).astype(np.float64)
    negatives = len(labels) - positives
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1.0), cap)
    return torch.tensor(np.clip(ratio, 1.0, cap), dtype=torch.float32)


def bce(pos_weight: torch.Tensor | None = None) -> LossFn:
    """Binary cross-entropy with logits; ``pos_weight`` (one per label) scales the positive term."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if pos_weight is None else pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight)

    return loss


def focal(gamma: float, alpha: float | None = None) -> LossFn:
    """Sigmoid focal loss: ``-[a y (1-p)^g log p + (1-a)(1-y) p^g log(1-p)]``, in log space."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        pos = torch.exp(gamma * log_not_p) * log_p  # (1 - p)^g log p
        neg = torch.exp(gamma * log_p) * log_not_p  # p^g log(1 - p)
        if alpha is not None:
            pos, neg = alpha * pos, (1.0 - alpha) * neg
        return -(labels * pos + (1.0 - labels) * neg).mean()

    return loss


def asymmetric(gamma_pos: float, gamma_neg: float, clip: float) -> LossFn:
    """ASL: ``-(1-p)^g+ log p`` on positives, ``-p_m^g- log(1-p_m)`` with ``p_m = max(p-m, 0)`` on negatives."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        pos = torch.exp(gamma_pos * log_not_p) * log_p
        if clip > 0:
            # log(1 - p_m) = log(min(1 - p + m, 1)) >= log(m): finite, and exactly 0 (no gradient) when p <= m.
            log_not_pm = torch.log(torch.sigmoid(-logits) + clip).clamp(max=0.0)
            p_m = torch.sigmoid(logits) - clip
            shifted = p_m > 0
            # p_m^g- in log space on the entries where p_m > 0 (a safe 1 elsewhere, where log(1 - p_m) is 0 anyway).
            weight = torch.exp(gamma_neg * torch.log(torch.where(shifted, p_m, torch.ones_like(p_m))))
            neg = torch.where(shifted, weight, torch.zeros_like(weight)) * log_not_pm
        else:
            neg = torch.exp(gamma_neg * log_p) * log_not_p
        return -(labels * pos + (1.0 - labels) * neg).mean()

    return loss


def _single(kind: str, cfg: LossConfig, train_labels: np.ndarray | None) -> LossFn:
    if kind in NEEDS_LABEL_STATISTICS and train_labels is None:
        raise ValueError(f"loss '{kind}' is computed from the training labels: pass train_labels")
    if kind == "bce":
        return bce()
    if kind == "bce_pos_weight":
        return bce(pos_weights(train_labels, cfg.pos_weight_max))
    if kind == "focal":
        return focal(cfg.focal_gamma, cfg.focal_alpha)
    if kind == "asl":
        return asymmetric(cfg.asl_gamma_pos, cfg.asl_gamma_neg, cfg.asl_clip)
    raise ValueError(f"unknown loss kind {kind!r}")


def needs_train_labels(cfg: LossConfig) -> bool:
    """Whether ``build_loss(cfg, ...)`` needs the training labels."""
    kinds = cfg.weights.keys() if cfg.kind == "combined" else (cfg.kind,)
    return any(k in NEEDS_LABEL_STATISTICS for k in kinds)


def build_loss(cfg: LossConfig, train_labels: np.ndarray | None = None) -> LossFn:
    """``loss(logits, labels) -> scalar`` for ``cfg``: the mean over every (row, label) entry.

    ``train_labels`` (the training split's 0/1 matrix) is needed by ``bce_pos_weight`` (alone or in
    ``combined``); without it that raises ``ValueError``. Logits are computed on in float32.
    """
    if cfg.kind == "combined":
        parts = [(weight, _single(kind, cfg, train_labels)) for kind, weight in cfg.weights.items() if weight > 0]
    else:
        parts = [(1.0, _single(cfg.kind, cfg, train_labels))]

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape != labels.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in shape")
        logits, labels = logits.float(), labels.to(device=logits.device, dtype=torch.float32)
        if cfg.label_smoothing:
            labels = labels * (1.0 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
        if len(parts) == 1 and parts[0][0] == 1.0:
            return parts[0][1](logits, labels)
        return sum(weight * fn(logits, labels) for weight, fn in parts)

    return loss


def trainer_loss(
    loss_cfg: LossConfig, train_labels: np.ndarray | None, observe: Callable[[torch.Tensor], None] | None = None
):
    """The Trainer's ``compute_loss_func``: ``(outputs, labels, num_items_in_batch) -> loss``.

    ``training.losses.build_loss`` on the model's ``logits``: a mean over the batch's label entries.
    With gradient accumulation the Trainer passes ``num_items_in_batch``, the label entries of all
    accumulated batches (it counts ``labels != -100``: every 0/1 entry), and does not divide the loss
    itself; ``mean * entries / num_items_in_batch`` makes the accumulated gradient that of the mean
    over all of them (without accumulation the factor is exactly 1). ``observe`` sees every loss.
    """
    loss = build_loss(loss_cfg, train_labels)

    def compute_loss(outputs, labels, num_items_in_batch=None):
        if labels is None:
            raise ValueError("the batch carries no 'labels': training and validation datasets need labels")
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        value = loss(logits, labels)
        if num_items_in_batch is not None:
            value = value * (labels.numel() / num_items_in_batch)
        if observe is not None:
            observe(value)
        return value

    return compute_loss
