"""Multi-label classification metrics of hard 0/1 predictions.

- ``sigmoid``: numerically stable, float64 out.
- ``metric_score``: one of ``RANKING_METRICS`` (macro-F1, micro-F1, example-based Jaccard), numpy only.
- ``multilabel_metrics``: one JSON-serialisable dict: micro/macro/weighted F1, micro/macro precision and
  recall, ``subset_accuracy``, ``jaccard_samples`` (SemEval E-c's score), ``hamming_loss``, ``n_samples``,
  ``n_labels``, ``labels_never_predicted``, ``no_positive_predictions`` and ``per_label`` P/R/F1/support.
- Conventions: ``zero_division=0`` for P/R/F1; a row with no true and no predicted label scores 1.0 in
  ``jaccard_samples`` (why: docs/design.md, "Metrics, thresholds and calibration").

Limits: dense ``(n, L)`` 0/1 arrays only (else ``ValueError``); turning probabilities into predictions is
``thresholds``' job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.metrics import accuracy_score, hamming_loss, precision_recall_fscore_support

__all__ = ["sigmoid", "multilabel_metrics", "metric_score", "RANKING_METRICS", "METRIC_NAMES"]

# P/R/F1 value when a denominator is zero; docs/design.md says why 0.
ZERO_DIVISION = 0.0
RANKING_METRICS = ("macro_f1", "micro_f1", "jaccard_samples")
"""Metrics a dataset may declare official: they tune thresholds, choose checkpoints and rank runs."""
METRIC_NAMES = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "jaccard_samples": "Jaccard (example-based)"}
"""How reports name each ranking metric."""


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``, element-wise, as float64, any shape.

    ``scipy.special.expit`` is used because the textbook formula overflows ``exp(-x)`` for
    ``x << 0`` (``exp(1000)`` is ``inf`` with a RuntimeWarning); expit evaluates the stable branch
    for each sign, so ``sigmoid(-1000) == 0.0`` and ``sigmoid(1000) == 1.0`` without warnings.
    NaN stays NaN (not validated here: logits come from a model, and NaN there is a model bug the
    caller should see, not a silent 0.5).
    """
    return expit(np.asarray(logits, dtype=np.float64))


def as_binary_matrix(name: str, values: Any) -> np.ndarray:
    """Validate a 2-D 0/1 matrix and return it as uint8. ``name`` is used in error messages."""
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, n_labels) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no rows (shape {arr.shape}); metrics need at least one sample")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no label columns (shape {arr.shape})")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must hold numbers 0/1, got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)  # NaN compares unequal to both, so it is caught here too
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must contain only 0 and 1; found {arr[row, col].item()!r} at row {row}, column {col} "
            f"({int(bad.sum())} bad value(s) in total)"
        )
    return arr.astype(np.uint8)


def check_label_names(label_names: Sequence[str], n_labels: int) -> list[str]:
    if isinstance(label_names, str):
        # A bare string is a Sequence[str] of characters: almost certainly a caller mistake.
        raise ValueError("label_names must be a sequence of names, not a single string")
    names = list(label_names)
    if len(names) != n_labels:
        raise ValueError(f"label_names has {len(names)} names but the arrays have {n_labels} label columns")
    for nm in names:
        if not isinstance(nm, str):
            raise ValueError(f"label names must be strings, got {nm!r}")
    dupes = sorted({nm for nm in names if names.count(nm) > 1})
    if dupes:
        # per_label is keyed by name: a duplicate would silently overwrite another label's numbers.
        raise ValueError(f"duplicate label names: {', '.join(dupes)}")
    return names


def _jaccard_samples(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over rows of |T ∩ P| / |T ∪ P|; a row with an empty union scores 1.0 (see module doc)."""
    inter = np.logical_and(y_true, y_pred).sum(axis=1)
    union = np.logical_or(y_true, y_pred).sum(axis=1)
    per_row = np.divide(inter, union, out=np.ones(len(union), dtype=np.float64), where=union > 0)
    return float(per_row.mean())


def metric_score(y_true: np.ndarray, y_pred: np.ndarray, metric: str) -> float:
    """One ranking metric of 0/1 ``(n, L)`` arrays, numpy only (fast enough to call inside a search).

    Same conventions as ``multilabel_metrics`` (``zero_division=0``; an empty row pair scores 1 in Jaccard);
    the caller validates the arrays.
    """
    if metric == "jaccard_samples":
        return _jaccard_samples(y_true, y_pred)
    t, p = y_true.astype(bool), y_pred.astype(bool)
    tp = (t & p).sum(axis=0).astype(np.float64)
    denom = t.sum(axis=0) + p.sum(axis=0).astype(np.float64)  # 2TP + FP + FN
    if metric == "macro_f1":
        return float(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0).mean())
    if metric == "micro_f1":
        return float(2 * tp.sum() / denom.sum()) if denom.sum() > 0 else ZERO_DIVISION
    raise ValueError(f"unknown ranking metric {metric!r}; expected one of {', '.join(RANKING_METRICS)}")


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str]) -> dict:
    """All reported metrics for 0/1 predictions ``y_pred`` against ``y_true``, both ``(n, L)``.

    Returns a JSON-serialisable dict; keys and conventions are listed in the module docstring.
    Raises ``ValueError`` for shape mismatches, non-0/1 values, or label names that do not match
    the columns.
    """
    yt = as_binary_matrix("y_true", y_true)
    yp = as_binary_matrix("y_pred", y_pred)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {yt.shape} and {yp.shape}")
    n, n_labels = yt.shape
    names = check_label_names(label_names, n_labels)

    # scikit-learn reads an (n, 1) matrix as a binary column, not as multi-label; score that one
    # label as the positive class so P/R/F1 mean the same thing for every L.
    if n_labels == 1:
        sk_true, sk_pred, sk_labels = yt[:, 0], yp[:, 0], [1]
    else:
        sk_true, sk_pred, sk_labels = yt, yp, None
    kw = {"labels": sk_labels, "zero_division": ZERO_DIVISION}

    precision, recall, f1, _ = precision_recall_fscore_support(sk_true, sk_pred, average=None, **kw)
    # One call per average gives P, R and F1 together (f1_score / precision_score / recall_score
    # would each redo the same input validation and confusion counts: 2x slower on 5k x 28).
    averaged = {
        avg: precision_recall_fscore_support(sk_true, sk_pred, average=avg, **kw)[:3]
        for avg in ("micro", "macro", "weighted")
    }
    support = yt.sum(axis=0)
    predicted_positives = yp.sum(axis=0)

    result: dict[str, Any] = {
        "micro_f1": float(averaged["micro"][2]),
        "macro_f1": float(averaged["macro"][2]),
        "weighted_f1": float(averaged["weighted"][2]),
        "micro_precision": float(averaged["micro"][0]),
        "micro_recall": float(averaged["micro"][1]),
        "macro_precision": float(averaged["macro"][0]),
        "macro_recall": float(averaged["macro"][1]),
        # accuracy_score on a multi-label matrix is the exact-match (subset) ratio.
        "subset_accuracy": float(accuracy_score(sk_true, sk_pred)),
        "jaccard_samples": _jaccard_samples(yt, yp),
        "hamming_loss": float(hamming_loss(sk_true, sk_pred)),
        "n_samples": int(n),
        "n_labels": int(n_labels),
        "labels_never_predicted": [nm for nm, c in zip(names, predicted_positives) if c == 0],
        "no_positive_predictions": bool(predicted_positives.sum() == 0),
        "per_label": {
            nm: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "predicted_positives": int(predicted_positives[i]),
            }
            for i, nm in enumerate(names)
        },
    }
    return result
