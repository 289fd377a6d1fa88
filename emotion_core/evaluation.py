"""Evaluation of saved predictions: ranking, calibration and uncertainty, without retraining.

Features
- ``ranking_metrics`` (PR-/ROC-AUC per label, macro, micro), ``brier_score``, ``ece`` (equal-width bins,
  flat and per label, with the reliability bins), ``bootstrap_f1`` (percentile CIs of macro/micro-F1),
  ``paired_bootstrap`` (macro-F1 difference of two models with a one-sided p-value), ``evaluate_split``
  (all of them, JSON-serialisable), ``align_labels`` (a split's labels in the order of saved logits).
- Undefined AUCs (no positive, or no negative for ROC) are ``None`` and left out of the macro mean
  (``labels_left_out`` names them). Bootstrap resamples rows from ``default_rng(seed)``: a seed fixes it.
  ``p_value`` = share of resamples where a does not beat b (resolution ``1/n``).

Limits
- Rows are treated as independent; the bootstrap reflects test-set noise only, not training randomness.
- Probabilities must be finite and in [0, 1], truths 0/1 (``ValueError``); ``n`` x rows indices in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from emotion_core.metrics import as_binary_matrix, check_label_names, multilabel_metrics
from emotion_core.thresholds import apply_thresholds, as_prob_matrix

__all__ = [
    "ECE_BINS",
    "align_labels",
    "bootstrap_f1",
    "bootstrap_indices",
    "brier_score",
    "ece",
    "evaluate_split",
    "paired_bootstrap",
    "ranking_metrics",
]

ECE_BINS = 15
# Resamples per chunk: bounds the (chunk, rows) count matrix (250 x 5,000 float64 = 10 MB).
_CHUNK = 250


def _truth_and_probs(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    yt = as_binary_matrix("y_true", y_true)
    p = as_prob_matrix("probs", probs)
    if yt.shape != p.shape:
        raise ValueError(f"y_true and probs must have the same shape, got {yt.shape} and {p.shape}")
    return yt, p


def _mean_or_none(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


# --------------------------------------------------------------------------- ranking


def ranking_metrics(y_true: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> dict:
    """PR-AUC and ROC-AUC per label, macro (over defined labels) and micro.

    Returns ``{"pr_auc": block, "roc_auc": block}``, each block
    ``{"macro", "micro", "per_label": {name: float | None}, "labels_left_out": int,
    "labels_left_out_names": [name, ...]}``. A label with no positive (PR-AUC) or without both
    classes (ROC-AUC) is ``None`` and left out of the macro mean; see the module docstring.
    """
    yt, p = _truth_and_probs(y_true, probs)
    label_names = check_label_names(names, p.shape[1])
    positives = yt.sum(axis=0)
    negatives = yt.shape[0] - positives

    pr: dict[str, float | None] = {}
    roc: dict[str, float | None] = {}
    for j, name in enumerate(label_names):
        pr[name] = float(average_precision_score(yt[:, j], p[:, j])) if positives[j] > 0 else None
        both = positives[j] > 0 and negatives[j] > 0
        roc[name] = float(roc_auc_score(yt[:, j], p[:, j])) if both else None

    flat_true, flat_probs = yt.ravel(), p.ravel()
    n_pos = int(flat_true.sum())
    micro_pr = float(average_precision_score(flat_true, flat_probs)) if n_pos > 0 else None
    micro_roc = float(roc_auc_score(flat_true, flat_probs)) if 0 < n_pos < flat_true.size else None

    def block(per_label: dict[str, float | None], micro: float | None) -> dict:
        left_out = [nm for nm, v in per_label.items() if v is None]
        return {
            "macro": _mean_or_none(list(per_label.values())),
            "micro": micro,
            "per_label": per_label,
            "labels_left_out": len(left_out),
            "labels_left_out_names": left_out,
        }

    return {"pr_auc": block(pr, micro_pr), "roc_auc": block(roc, micro_roc)}


# --------------------------------------------------------------------------- calibration


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Brier score: ``{"mean": float, "per_label": [float, ...]}`` (label order).

    ``mean`` is the mean of ``(p - y)^2`` over all cells (equal to the mean of the per-label values,
    every label having the same number of rows); lower is better, 0.25 is "always 0.5".
    """
    yt, p = _truth_and_probs(y_true, probs)
    squared = (p - yt) ** 2
    return {"mean": float(squared.mean()), "per_label": [float(v) for v in squared.mean(axis=0)]}


def _bin_index(probs: np.ndarray, bins: int) -> np.ndarray:
    # floor(p * bins), with p == 1.0 put into the last bin instead of a bin of its own.
    return np.minimum((probs * bins).astype(np.int64), bins - 1)


def _ece_from_counts(count: np.ndarray, conf_sum: np.ndarray, pos_sum: np.ndarray) -> np.ndarray:
    """ECE per row of (K, bins) count / probability-sum / positive-count tables."""
    gap = np.abs(pos_sum - conf_sum)  # = count * |accuracy - confidence|
    return gap.sum(axis=-1) / count.sum(axis=-1)


def ece(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error, flattened and per label, with the flattened reliability bins.

    Returns ``{"flat": float, "per_label": [float, ...], "per_label_mean": float, "n_bins": int,
    "bins": [{"lower", "upper", "count", "confidence", "accuracy"}, ...]}``; ``bins`` are the
    flattened ones, ``confidence``/``accuracy`` are ``None`` in an empty bin. Binning and the
    meaning of confidence/accuracy are in the module docstring.
    """
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    yt, p = _truth_and_probs(y_true, probs)
    n_labels = p.shape[1]
    idx = _bin_index(p, bins)
    # One bincount over (label, bin) gives every per-label table; the flat table is their sum.
    flat_idx = (np.arange(n_labels)[None, :] * bins + idx).ravel()
    size = n_labels * bins
    count = np.bincount(flat_idx, minlength=size).reshape(n_labels, bins).astype(np.float64)
    conf_sum = np.bincount(flat_idx, weights=p.ravel(), minlength=size).reshape(n_labels, bins)
    pos_sum = np.bincount(flat_idx, weights=yt.ravel().astype(np.float64), minlength=size).reshape(n_labels, bins)

    per_label = _ece_from_counts(count, conf_sum, pos_sum)
    c, s, t = count.sum(axis=0), conf_sum.sum(axis=0), pos_sum.sum(axis=0)
    table = [
        {
            "lower": b / bins,
            "upper": (b + 1) / bins,
            "count": int(c[b]),
            "confidence": float(s[b] / c[b]) if c[b] > 0 else None,
            "accuracy": float(t[b] / c[b]) if c[b] > 0 else None,
        }
        for b in range(bins)
    ]
    return {
        "flat": float(_ece_from_counts(c, s, t)),
        "per_label_mean": float(per_label.mean()),
        "per_label": [float(v) for v in per_label],
        "n_bins": int(bins),
        "bins": table,
    }


# --------------------------------------------------------------------------- bootstrap


def bootstrap_indices(n_rows: int, n: int, seed: int) -> np.ndarray:
    """The resampled row indices, ``(n, n_rows)`` int32: row ``b`` is resample ``b``.

    Public so that a slow reference implementation (tests) can use the very same resamples.
    """
    if n < 1:
        raise ValueError(f"the number of bootstrap resamples must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_rows, size=(n, n_rows), dtype=np.int32)


def _resample_counts(indices: np.ndarray):
    """Yield (chunk, rows) float64 matrices: how often each row occurs in each resample."""
    n, rows = indices.shape
    for start in range(0, n, _CHUNK):
        block = indices[start : start + _CHUNK].astype(np.int64)
        k = block.shape[0]
        flat = (np.arange(k)[:, None] * rows + block).ravel()
        yield np.bincount(flat, minlength=k * rows).reshape(k, rows).astype(np.float64)


def _confusion_per_row(yt: np.ndarray, yp: np.ndarray) -> np.ndarray:
    """(rows, 3L) float64: per-row TP, FP, FN indicators, label blocks side by side."""
    t, q = yt.astype(np.float64), yp.astype(np.float64)
    return np.concatenate([t * q, (1.0 - t) * q, t * (1.0 - q)], axis=1)


def _f1_from_counts(counts: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Macro- and micro-F1 per resample from (k, 3L) summed TP|FP|FN, ``zero_division=0``."""
    tp, fp, fn = counts[:, :n_labels], counts[:, n_labels : 2 * n_labels], counts[:, 2 * n_labels :]
    denom = 2.0 * tp + fp + fn
    per_label = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    tp_s, denom_s = tp.sum(axis=1), denom.sum(axis=1)
    micro = np.divide(2.0 * tp_s, denom_s, out=np.zeros_like(tp_s), where=denom_s > 0)
    return per_label.mean(axis=1), micro


def _resampled_f1(
    confusions: list[np.ndarray], indices: np.ndarray, n_labels: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(macro, micro) F1 of every resample, for each per-row confusion matrix (same resamples)."""
    macro: list[list[np.ndarray]] = [[] for _ in confusions]
    micro: list[list[np.ndarray]] = [[] for _ in confusions]
    for counts in _resample_counts(indices):
        # A resample's TP/FP/FN sums are its row counts times the per-row indicators.
        for i, conf in enumerate(confusions):
            ma, mi = _f1_from_counts(counts @ conf, n_labels)
            macro[i].append(ma)
            micro[i].append(mi)
    return [(np.concatenate(ma), np.concatenate(mi)) for ma, mi in zip(macro, micro)]


def _pair(name_a: str, a: Any, name_b: str, b: Any) -> tuple[np.ndarray, np.ndarray]:
    ya, yb = as_binary_matrix(name_a, a), as_binary_matrix(name_b, b)
    if ya.shape != yb.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {ya.shape} and {yb.shape}")
    return ya, yb


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _interval(estimate: float, samples: np.ndarray, alpha: float, n: int, seed: int) -> dict:
    low, high = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0])
    return {
        "estimate": float(estimate),
        "low": float(low),
        "high": float(high),
        "confidence": 1.0 - alpha,
        "n_resamples": int(n),
        "seed": int(seed),
    }


def bootstrap_f1(y_true: np.ndarray, y_pred: np.ndarray, n: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap CIs of macro- and micro-F1 over resampled rows.

    Returns ``{"macro_f1": ci, "micro_f1": ci}``, each ``ci`` =
    ``{"estimate", "low", "high", "confidence", "n_resamples", "seed"}`` (``estimate`` on the original
    rows). Vectorised: per-resample TP/FP/FN sums are a (resamples, rows) count matrix times the
    per-row indicator matrix, so 1000 resamples of 5,000 x 28 take about a second.
    """
    _check_alpha(alpha)
    yt, yp = _pair("y_true", y_true, "y_pred", y_pred)
    n_rows, n_labels = yt.shape
    conf = _confusion_per_row(yt, yp)
    macro_hat, micro_hat = _f1_from_counts(conf.sum(axis=0, keepdims=True), n_labels)
    [(macro, micro)] = _resampled_f1([conf], bootstrap_indices(n_rows, n, seed), n_labels)
    return {
        "macro_f1": _interval(macro_hat[0], macro, alpha, n, seed),
        "micro_f1": _interval(micro_hat[0], micro, alpha, n, seed),
    }


def _row_jaccard(yt: np.ndarray, yp: np.ndarray) -> np.ndarray:
    """Per-row |T ∩ P| / |T ∪ P| (1.0 for an empty union, as ``metrics.multilabel_metrics``)."""
    inter = np.logical_and(yt, yp).sum(axis=1)
    union = np.logical_or(yt, yp).sum(axis=1)
    return np.divide(inter, union, out=np.ones(len(union), dtype=np.float64), where=union > 0)


def _resampled_scores(
    yt: np.ndarray, ya: np.ndarray, yb: np.ndarray, indices: np.ndarray, metric: str
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """``metric`` of a and b on the original rows and on every resample (same resamples for both)."""
    n_rows, n_labels = yt.shape
    if metric == "jaccard_samples":  # a mean of per-row scores: resampled means are count-weighted sums
        ja, jb = _row_jaccard(yt, ya), _row_jaccard(yt, yb)
        counts = list(_resample_counts(indices))
        return (
            float(ja.mean()),
            float(jb.mean()),
            np.concatenate([c @ ja for c in counts]) / n_rows,
            np.concatenate([c @ jb for c in counts]) / n_rows,
        )
    if metric not in ("macro_f1", "micro_f1"):
        raise ValueError(f"unknown metric {metric!r}; expected macro_f1, micro_f1 or jaccard_samples")
    pick = 0 if metric == "macro_f1" else 1
    conf_a, conf_b = _confusion_per_row(yt, ya), _confusion_per_row(yt, yb)
    score_a = float(_f1_from_counts(conf_a.sum(axis=0, keepdims=True), n_labels)[pick][0])
    score_b = float(_f1_from_counts(conf_b.sum(axis=0, keepdims=True), n_labels)[pick][0])
    resampled_a, resampled_b = _resampled_f1([conf_a, conf_b], indices, n_labels)
    return score_a, score_b, resampled_a[pick], resampled_b[pick]


def paired_bootstrap(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    metric: str = "macro_f1",
) -> dict:
    """Paired bootstrap of ``metric(a) - metric(b)`` (macro-F1, micro-F1 or example-based Jaccard) on the same
    resampled rows.

    Returns ``{"delta", "low", "high", "p_value", "confidence", "n_resamples", "seed", "metric", "score_a",
    "score_b"}`` (plus ``macro_f1_a``/``macro_f1_b`` when the metric is macro-F1): ``delta`` and the two scores on
    the original rows, a percentile CI of the delta, and the one-sided ``p_value`` = share of resamples whose delta
    is ``<= 0`` (see the module docstring). Small p: a is better than b beyond test-set noise.
    """
    _check_alpha(alpha)
    yt, ya = _pair("y_true", y_true, "pred_a", pred_a)
    _, yb = _pair("y_true", y_true, "pred_b", pred_b)
    score_a, score_b, resampled_a, resampled_b = _resampled_scores(
        yt, ya, yb, bootstrap_indices(yt.shape[0], n, seed), metric
    )
    deltas = resampled_a - resampled_b
    out = _interval(score_a - score_b, deltas, alpha, n, seed)
    result = {
        "delta": out.pop("estimate"),
        **out,
        "p_value": float(np.mean(deltas <= 0.0)),
        "metric": metric,
        "score_a": score_a,
        "score_b": score_b,
    }
    if metric == "macro_f1":
        result |= {"macro_f1_a": score_a, "macro_f1_b": score_b}
    return result


# --------------------------------------------------------------------------- one split


def evaluate_split(
    y_true: np.ndarray,
    probs: np.ndarray,
    thresholds: np.ndarray,
    names: Sequence[str],
    *,
    bootstrap_n: int = 1000,
    seed: int = 0,
    at_least_one: bool = False,
) -> dict:
    """Everything reported for one split, as one JSON-serialisable dict of plain values.

    Keys: ``thresholds`` ({name: float}), ``metrics`` (``metrics.multilabel_metrics`` at
    ``thresholds``, with the at-least-one rule when asked), ``macro_f1_ci``, ``micro_f1_ci`` (``bootstrap_f1``
    intervals) and ``jaccard_samples_ci`` (same resamples), ``pr_auc`` and
    ``roc_auc`` (``ranking_metrics`` blocks), ``brier`` (``{"mean", "per_label": {name: float}}``),
    ``ece`` (``{"flat", "per_label_mean", "per_label": {name: float}, "n_bins", "bins"}``).
    """
    yt, p = _truth_and_probs(y_true, probs)
    label_names = check_label_names(names, p.shape[1])
    t = np.asarray(thresholds, dtype=np.float64)
    preds = apply_thresholds(p, t, at_least_one)
    ci = bootstrap_f1(yt, preds, n=bootstrap_n, seed=seed)
    rows = _row_jaccard(yt, preds)
    resampled = np.concatenate([c @ rows for c in _resample_counts(bootstrap_indices(len(rows), bootstrap_n, seed))])
    jaccard_ci = _interval(float(rows.mean()), resampled / len(rows), 0.05, bootstrap_n, seed)
    ranking = ranking_metrics(yt, p, label_names)
    brier = brier_score(yt, p)
    calibration = ece(yt, p)
    return {
        "thresholds": dict(zip(label_names, (float(v) for v in t))),
        "metrics": multilabel_metrics(yt, preds, label_names),
        "macro_f1_ci": ci["macro_f1"],
        "micro_f1_ci": ci["micro_f1"],
        "jaccard_samples_ci": jaccard_ci,
        "pr_auc": ranking["pr_auc"],
        "roc_auc": ranking["roc_auc"],
        "brier": {"mean": brier["mean"], "per_label": dict(zip(label_names, brier["per_label"]))},
        "ece": {**calibration, "per_label": dict(zip(label_names, calibration["per_label"]))},
    }


# --------------------------------------------------------------------------- alignment


def _preview(ids: list, limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def _duplicates(ids: Sequence) -> list:
    seen: set = set()
    dupes: dict = {}
    for i in ids:
        if i in seen:
            dupes[i] = None
        seen.add(i)
    return list(dupes)


def align_labels(ids_logits: Sequence, ids_data: Sequence, labels: np.ndarray) -> np.ndarray:
    """``labels`` (rows of ``ids_data``) reordered into the row order of ``ids_logits``.

    The two id lists must hold exactly the same ids, each once; otherwise ``ValueError`` saying how
    many ids are missing from the data / extra in the data (with the first few), or duplicated.
    Rows are never dropped silently: a mismatch means the logits were made from other data.
    """
    ids_logits, ids_data = list(ids_logits), list(ids_data)
    arr = np.asarray(labels)
    if arr.shape[0] != len(ids_data):
        raise ValueError(f"labels has {arr.shape[0]} rows but ids_data has {len(ids_data)} ids")
    for what, ids in (("logits", ids_logits), ("data", ids_data)):
        dupes = _duplicates(ids)
        if dupes:
            raise ValueError(f"{len(dupes)} duplicated id(s) in the {what}: {_preview(dupes)}")
    position = {i: k for k, i in enumerate(ids_data)}
    missing = [i for i in ids_logits if i not in position]
    logit_ids = set(ids_logits)
    extra = [i for i in ids_data if i not in logit_ids]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) of the logits are missing from the data: {_preview(missing)}")
        if extra:
            parts.append(f"{len(extra)} id(s) of the data are not in the logits: {_preview(extra)}")
        raise ValueError("logits and data rows differ (were the logits made from other data?): " + "; ".join(parts))
    return arr[np.fromiter((position[i] for i in ids_logits), dtype=np.int64, count=len(ids_logits))]
