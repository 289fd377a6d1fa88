"""``RunData``: the validation and test scores of a run (or of a published ensemble) with the truth aligned by id.

Built by ``analysis.run_data`` from a run's logits and by ``ensemble_package.ensemble_run_data`` from a package's
stored probabilities; read by the ensembles, paired tests and champion challenges of ``analysis``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RunData"]


@dataclass
class RunData:
    """A run's logits and the aligned truth: ``ids[split]``, ``logits[split]`` (float32), ``truth[split]`` (0/1)."""

    name: str
    ids: dict[str, list[str]]
    logits: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    thresholds: np.ndarray
    names: list[str]
    probabilities: bool = False
    """``logits`` hold probabilities already (the ensemble's calibrated mean), not logits."""
    at_least_one: bool = False
    """The run's rule gives every row a label (``thresholds.requires_one_label``)."""
    metric: str = "macro_f1"
    """The official metric its paired tests use."""
