"""Decision thresholds: turn per-label probabilities into 0/1 predictions, tuned for a dataset's official metric.

- ``POLICIES``: ``fixed`` (0.5); ``global`` (one value maximising the metric); ``per_label`` (each label its own
  F1); ``shrunk`` (per-label thresholds pulled towards the global one: ``(n t_label + k t_global) / (n + k)``, n the
  label's validation positives, k ``shrinkage``: rare labels keep little of their own noisy value);
  ``global_at_least_one`` (one value, and a row with no label above it gets its most probable label: the rule that
  suits example-based Jaccard).
- ``choose_policy``: the ``auto`` policy: each candidate is tuned on k-1 folds of validation and scored on the
  held-out fold; the best mean wins (in-sample, ``per_label`` would always win). Test is never looked at.
- ``tune_thresholds``: vectorised over a grid (default 0.01..0.99) with one ``bincount``, no (n, L, G) cube;
  ties go to the value closest to 0.5; ``per_label`` gives a label without positives 0.5.
- ``apply_thresholds``: ``prob >= threshold`` (+ the at-least-one rule), the comparison the tuning counts use.
- ``evaluate_policies``: tunes every policy on validation only and applies it to test.

Limits: probabilities and grid values must be finite, in [0, 1]; per-label values maximise F1 whatever the metric;
validation numbers of tuned policies are optimistic by construction. Why: docs/design.md, "Metrics, thresholds and
calibration".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emotion_core.metrics import RANKING_METRICS, as_binary_matrix, check_label_names, metric_score, multilabel_metrics

__all__ = [
    "POLICIES",
    "DEFAULT_GRID",
    "FIXED_THRESHOLD",
    "AUTO",
    "DEFAULT_SHRINKAGE",
    "requires_one_label",
    "tune_thresholds",
    "apply_thresholds",
    "choose_policy",
    "evaluate_policies",
]

POLICIES = ("fixed", "global", "per_label", "shrunk", "global_at_least_one")
AUTO = "auto"
"""Config value: the policy is chosen by ``choose_policy`` among ``AUTO_CANDIDATES``."""
AUTO_CANDIDATES = ("global", "per_label", "shrunk", "global_at_least_one")
DEFAULT_SHRINKAGE = 20.0
"""k of ``shrunk``: a label with k validation positives keeps half of its own threshold."""
CV_FOLDS = 5
FIXED_THRESHOLD = 0.5
# integer / 100 is correctly rounded, so 0.3 here is the same double as the literal 0.3.
DEFAULT_GRID = np.arange(1, 100) / 100
# F1 values closer than this are a tie (they differ only by floating-point summation order).
_TIE_TOL = 1e-12


def as_prob_matrix(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, n_labels) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must hold probabilities, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(
            f"{name} must hold probabilities in [0, 1], got range [{arr.min()}, {arr.max()}] "
            "(apply emotion_core.metrics.sigmoid to logits first)"
        )
    return arr


def _as_grid(grid: Any) -> np.ndarray:
    if grid is None:
        return DEFAULT_GRID.copy()
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"grid must be a non-empty 1-D array of thresholds, got shape {g.shape}")
    if not np.isfinite(g).all() or g.min() < 0.0 or g.max() > 1.0:
        raise ValueError("grid values must be finite and in [0, 1]")
    # Sorted and unique: searchsorted needs order, and duplicates would only duplicate ties.
    return np.unique(g)


def _f1_table(y_true: np.ndarray, probs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """F1 of every label at every grid value, shape (L, G), zero_division=0.

    ``k = searchsorted(grid, p, side="right")`` is the number of grid values ``<= p``, so ``p`` is
    predicted positive at grid index ``g`` exactly when ``g < k`` -- the same ``p >= t`` rule as
    ``apply_thresholds``. Counting rows per (label, k) and summing from the top gives, for each g,
    how many rows (all / positive) have ``k > g``.
    """
    n, n_labels = probs.shape
    n_grid = grid.size
    k = np.searchsorted(grid, probs, side="right")  # (n, L) in 0..G
    flat = (np.arange(n_labels)[None, :] * (n_grid + 1) + k).ravel()
    size = n_labels * (n_grid + 1)
    all_counts = np.bincount(flat, minlength=size).reshape(n_labels, n_grid + 1)
    pos_counts = np.bincount(flat, weights=y_true.ravel().astype(np.float64), minlength=size)
    pos_counts = pos_counts.reshape(n_labels, n_grid + 1)
    # reversed cumsum over k, then drop k=0: entry g = count with k >= g+1, i.e. k > g.
    predicted = np.cumsum(all_counts[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.float64)
    tp = np.cumsum(pos_counts[:, ::-1], axis=1)[:, ::-1][:, 1:]
    positives = y_true.sum(axis=0).astype(np.float64)[:, None]
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + positives); 0 where both are 0.
    denom = predicted + positives
    return np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def _best_index(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Argmax over the last axis of ``scores`` (..., G); ties -> value closest to 0.5, then lower."""
    best = scores.max(axis=-1, keepdims=True)
    is_best = scores >= best - _TIE_TOL
    # Rounded distance so 0.4 and 0.6 tie exactly despite binary floating point.
    distance = np.round(np.abs(grid - FIXED_THRESHOLD), 9)
    # Among the best, minimise distance; argmin returns the first (= lowest, grid is sorted) on ties.
    masked = np.where(is_best, distance, np.inf)
    return np.argmin(masked, axis=-1)


def requires_one_label(policy: str | None) -> bool:
    """True for a policy whose rule gives every row at least one label (``global_at_least_one``)."""
    return policy == "global_at_least_one"


def _at_least_one(probs: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """``preds`` with each empty row given its most probable label (first on ties)."""
    empty = preds.sum(axis=1) == 0
    if empty.any():
        preds = preds.copy()
        preds[np.flatnonzero(empty), probs[empty].argmax(axis=1)] = 1
    return preds


def _check_metric(metric: str) -> None:
    if metric not in RANKING_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(RANKING_METRICS)}")


def _global_scores(
    y_true: np.ndarray, probs: np.ndarray, grid: np.ndarray, metric: str, at_least_one: bool, f1: np.ndarray
) -> np.ndarray:
    """The metric at each grid value used as one global threshold, shape (G,)."""
    if metric == "macro_f1" and not at_least_one:
        return f1.mean(axis=0)  # the (L, G) F1 table already has it
    scores = np.empty(grid.size)
    for g, value in enumerate(grid):  # G passes over (n, L): cheap next to a model's forward pass
        preds = (probs >= value).astype(np.uint8)
        scores[g] = metric_score(y_true, _at_least_one(probs, preds) if at_least_one else preds, metric)
    return scores


def tune_thresholds(
    y_true: np.ndarray,
    probs: np.ndarray,
    policy: str,
    grid: np.ndarray | None = None,
    *,
    metric: str = "macro_f1",
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> np.ndarray:
    """Per-label thresholds, shape (L,) float64, for ``policy`` in ``POLICIES``, tuned for ``metric``.

    ``y_true`` is (n, L) 0/1, ``probs`` (n, L) in [0, 1]; ``grid`` defaults to 0.01..0.99 step
    0.01. See the module docstring for the policies, the tie rule and labels without positives.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown threshold policy {policy!r}; expected one of {', '.join(POLICIES)}")
    _check_metric(metric)
    if not shrinkage > 0:
        raise ValueError(f"shrinkage must be > 0, got {shrinkage}")
    yt = as_binary_matrix("y_true", y_true)
    p = as_prob_matrix("probs", probs)
    if yt.shape != p.shape:
        raise ValueError(f"y_true and probs must have the same shape, got {yt.shape} and {p.shape}")
    g = _as_grid(grid)
    n_labels = p.shape[1]

    if policy == "fixed":
        return np.full(n_labels, FIXED_THRESHOLD, dtype=np.float64)

    f1 = _f1_table(yt, p, g)  # (L, G)
    if policy in ("global", "global_at_least_one"):
        scores = _global_scores(yt, p, g, metric, requires_one_label(policy), f1)
        return np.full(n_labels, g[_best_index(scores, g)], dtype=np.float64)

    positives = yt.sum(axis=0).astype(np.float64)
    own = g[_best_index(f1, g)].astype(np.float64)
    if policy == "per_label":
        own[positives == 0] = FIXED_THRESHOLD
        return own
    # shrunk: a label with no positives gets the global value (n = 0).
    pooled = g[_best_index(_global_scores(yt, p, g, metric, False, f1), g)]
    return (positives * own + shrinkage * pooled) / (positives + shrinkage)


def apply_thresholds(probs: np.ndarray, thresholds: np.ndarray, at_least_one: bool = False) -> np.ndarray:
    """0/1 predictions, (n, L) uint8: 1 where ``probs[:, j] >= thresholds[j]``; ``at_least_one``: a row with none
    gets its most probable label."""
    p = as_prob_matrix("probs", probs)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.shape[0] != p.shape[1]:
        raise ValueError(f"thresholds must have shape ({p.shape[1]},) to match probs {p.shape}, got {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("thresholds contain NaN or infinite values")
    preds = (p >= t[None, :]).astype(np.uint8)
    return _at_least_one(p, preds) if at_least_one else preds


def choose_policy(
    y_true: np.ndarray,
    probs: np.ndarray,
    metric: str,
    *,
    candidates: Sequence[str] = AUTO_CANDIDATES,
    shrinkage: float = DEFAULT_SHRINKAGE,
    folds: int = CV_FOLDS,
    seed: int = 0,
) -> dict:
    """The candidate policy with the best ``metric`` on held-out validation folds (see the module docstring).

    Returns ``{"policy", "metric", "folds", "seed", "scores": {policy: mean held-out score}}``; ties go to the
    earlier candidate (the simpler rule). Fewer rows than folds: ``folds`` drops to the row count (at least 2).
    """
    _check_metric(metric)
    yt = as_binary_matrix("y_true", y_true)
    p = as_prob_matrix("probs", probs)
    if yt.shape != p.shape:
        raise ValueError(f"y_true and probs must have the same shape, got {yt.shape} and {p.shape}")
    if len(yt) < 2:
        raise ValueError("choosing a policy needs at least 2 validation rows")
    k = min(folds, len(yt))
    fold_of = np.random.default_rng(seed).permutation(len(yt)) % k
    scores = {}
    for policy in candidates:
        held_out = []
        for fold in range(k):
            fit, score = fold_of != fold, fold_of == fold
            t = tune_thresholds(yt[fit], p[fit], policy, metric=metric, shrinkage=shrinkage)
            preds = apply_thresholds(p[score], t, requires_one_label(policy))
            held_out.append(metric_score(yt[score], preds, metric))
        scores[policy] = float(np.mean(held_out))
    best = max(scores.values())
    chosen = next(policy for policy in candidates if scores[policy] >= best - _TIE_TOL)
    return {"policy": chosen, "metric": metric, "folds": k, "seed": seed, "scores": scores}


def _labelled_metrics(y_true: np.ndarray, preds: np.ndarray, names: list[str], policy: str) -> dict:
    out = multilabel_metrics(y_true, preds, names)
    out["threshold_policy"] = policy
    # "fixed" uses no data at all, so it was tuned on nothing.
    out["thresholds_tuned_on"] = None if policy == "fixed" else "validation"
    return out


def evaluate_policies(
    label_names: Sequence[str],
    val_true: np.ndarray,
    val_probs: np.ndarray,
    test_true: np.ndarray | None = None,
    test_probs: np.ndarray | None = None,
    *,
    metric: str = "macro_f1",
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> dict:
    """Tune every policy on validation for ``metric``, score it on validation and (if given) test.

    Returns ``{"thresholds": {policy: [float, ...]}, "validation": {policy: metrics},
    "test": {policy: metrics}}`` (``"test"`` only when test arrays are given). Each metrics dict is
    ``multilabel_metrics``' output plus ``threshold_policy`` and ``thresholds_tuned_on``
    (``"validation"``, or ``None`` for ``fixed``). Tuned thresholds are computed once from
    validation and applied unchanged to test.
    """
    if (test_true is None) != (test_probs is None):
        raise ValueError("pass both test_true and test_probs, or neither")
    val_probs = as_prob_matrix("val_probs", val_probs)
    names = check_label_names(label_names, val_probs.shape[1])
    if test_probs is not None:
        test_probs = as_prob_matrix("test_probs", test_probs)
        if test_probs.shape[1] != val_probs.shape[1]:
            raise ValueError(
                f"test_probs has {test_probs.shape[1]} label columns but val_probs has {val_probs.shape[1]}"
            )

    thresholds = {
        policy: tune_thresholds(val_true, val_probs, policy, metric=metric, shrinkage=shrinkage) for policy in POLICIES
    }
    one = {policy: requires_one_label(policy) for policy in POLICIES}
    report: dict[str, Any] = {
        "thresholds": {policy: [float(x) for x in t] for policy, t in thresholds.items()},
        "validation": {
            policy: _labelled_metrics(val_true, apply_thresholds(val_probs, t, one[policy]), names, policy)
            for policy, t in thresholds.items()
        },
    }
    if test_probs is not None:
        report["test"] = {
            policy: _labelled_metrics(test_true, apply_thresholds(test_probs, t, one[policy]), names, policy)
            for policy, t in thresholds.items()
        }
    return report
