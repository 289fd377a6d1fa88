"""Per-label temperature scaling of saved logits, fitted on validation.

- ``fit_temperatures``: one ``T_l`` per label minimising the validation BCE of ``sigmoid(logit / T_l)``
  (bounded search on ``log T``, ``T`` in ``T_BOUNDS``); a label without a positive or a negative keeps ``T = 1``.
- ``apply_temperatures``: ``sigmoid(logits / T)``.
- ``calibrate_run``: fit on validation, re-tune thresholds on the calibrated validation probabilities, report
  temperatures, thresholds, ECE and NLL before/after (validation and test) and test metrics after scaling.
- ``shipped_calibration``: the ``calibration.json`` every run ships (``CALIBRATION_VERSION``).

Limits: fixes over/under-confidence only (no bias, isotonic or Platt; no label dependencies). Test data never
influences a temperature or a threshold. Why per-label temperatures: docs/design.md, "Calibration".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from emotion_core.evaluation import ece
from emotion_core.metrics import as_binary_matrix, check_label_names, multilabel_metrics, sigmoid
from emotion_core.thresholds import DEFAULT_SHRINKAGE, apply_thresholds, requires_one_label, tune_thresholds

__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_VERSION",
    "T_BOUNDS",
    "apply_temperatures",
    "bce_from_logits",
    "calibrate_run",
    "fit_temperatures",
    "shipped_calibration",
]

T_BOUNDS = (0.05, 20.0)
CALIBRATION_FILE = "calibration.json"
"""The file of a run folder that holds its shipped calibration."""
CALIBRATION_VERSION = 1
"""Layout version of ``calibration.json``; a reader refuses versions it does not know."""


def _as_logits(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (n_samples, n_labels) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _logits_and_truth(logits_name: str, logits: Any, true_name: str, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    z = _as_logits(logits_name, logits)
    y = as_binary_matrix(true_name, y_true).astype(np.float64)
    if z.shape != y.shape:
        raise ValueError(f"{logits_name} and {true_name} must have the same shape, got {z.shape} and {y.shape}")
    return z, y


def _bce(z: np.ndarray, y: np.ndarray) -> float:
    # -[y log s(z) + (1-y) log(1-s(z))] = log(1 + e^z) - y z, stable for any |z|.
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def bce_from_logits(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Mean binary cross-entropy (NLL) of ``sigmoid(logits)`` over all cells, in nats."""
    z, y = _logits_and_truth("logits", logits, "y_true", y_true)
    return _bce(z, y)


def fit_temperatures(val_logits: np.ndarray, val_true: np.ndarray) -> np.ndarray:
    """Per-label temperatures, shape (L,) float64, minimising validation NLL of ``sigmoid(z / T)``.

    Labels with only one class in validation keep ``T = 1`` (see the module docstring).
    """
    z, y = _logits_and_truth("val_logits", val_logits, "val_true", val_true)
    positives = y.sum(axis=0)
    temps = np.ones(z.shape[1], dtype=np.float64)
    bounds = (np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1]))
    for j in range(z.shape[1]):
        if positives[j] == 0 or positives[j] == z.shape[0]:
            continue
        zj, yj = z[:, j], y[:, j]
        result = minimize_scalar(
            lambda log_t: _bce(zj / np.exp(log_t), yj),  # noqa: B023 (called at once, in this iteration)
            bounds=bounds,
            method="bounded",
            options={"xatol": 1e-6},
        )
        temps[j] = float(np.exp(result.x))
    return temps


def apply_temperatures(logits: np.ndarray, temps: np.ndarray) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temps)``, (n, L) float64."""
    z = _as_logits("logits", logits)
    t = np.asarray(temps, dtype=np.float64)
    if t.shape != (z.shape[1],):
        raise ValueError(f"temps must have shape ({z.shape[1]},) to match logits {z.shape}, got {t.shape}")
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise ValueError("temperatures must be finite and > 0")
    return sigmoid(z / t[None, :])


def calibrate_run(
    val_logits: np.ndarray,
    val_true: np.ndarray,
    test_logits: np.ndarray | None,
    test_true: np.ndarray | None,
    names: Sequence[str],
    policy: str = "per_label",
    *,
    metric: str = "macro_f1",
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> dict:
    """Temperature-scale a run: fit on validation, re-tune thresholds, measure before/after.

    Returns a JSON-serialisable dict with keys ``method`` (``"temperature_scaling_per_label"``),
    ``policy``, ``temperatures`` ({name: T}), ``labels_kept_at_1`` (names whose T was not fitted),
    ``thresholds`` ({name: threshold tuned on calibrated validation}), ``ece`` and ``nll``
    (``{"validation": {"before", "after"}, "test": {"before", "after"}}``; each ECE entry is
    ``{"flat", "per_label_mean"}``, each NLL a float), ``reliability`` (``{"validation": {"before",
    "after"}, "test": ...}``, the flattened reliability bins of ``evaluation.ece`` for
    ``reliability_diagram``) and ``test_metrics`` (``metrics.multilabel_metrics`` of the calibrated
    test probabilities at the new thresholds). Without test arrays every ``"test"`` entry and
    ``test_metrics`` are ``None``.
    """
    if (test_logits is None) != (test_true is None):
        raise ValueError("pass both test_logits and test_true, or neither")
    zv, yv = _logits_and_truth("val_logits", val_logits, "val_true", val_true)
    label_names = check_label_names(names, zv.shape[1])
    temps = fit_temperatures(zv, yv)
    positives = yv.sum(axis=0)
    kept = [nm for nm, pos in zip(label_names, positives) if pos == 0 or pos == yv.shape[0]]

    val_after = apply_temperatures(zv, temps)
    thresholds = tune_thresholds(yv, val_after, policy, metric=metric, shrinkage=shrinkage)

    splits = _splits(zv, yv, test_logits, test_true)
    ece_out: dict[str, dict | None] = {"validation": None, "test": None}
    nll_out: dict[str, dict | None] = {"validation": None, "test": None}
    bins_out: dict[str, dict | None] = {"validation": None, "test": None}
    for split, (z, y) in splits.items():
        ece_out[split], bins_out[split], nll_out[split] = _before_after(z, y, temps)
    test_metrics = None
    if "test" in splits:
        zt, yt = splits["test"]
        predicted = apply_thresholds(apply_temperatures(zt, temps), thresholds, requires_one_label(policy))
        test_metrics = multilabel_metrics(yt, predicted, label_names)

    return {
        "method": "temperature_scaling_per_label",
        "policy": policy,
        "temperatures": dict(zip(label_names, (float(t) for t in temps))),
        "labels_kept_at_1": kept,
        "thresholds": dict(zip(label_names, (float(t) for t in thresholds))),
        "ece": ece_out,
        "nll": nll_out,
        "reliability": bins_out,
        "test_metrics": test_metrics,
    }


def _splits(zv: np.ndarray, yv: np.ndarray, test_logits, test_true) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"validation": (logits, truth)}``, plus ``"test"`` when test arrays are given (checked against validation)."""
    splits = {"validation": (zv, yv)}
    if test_logits is not None:
        zt, yt = _logits_and_truth("test_logits", test_logits, "test_true", test_true)
        if zt.shape[1] != zv.shape[1]:
            raise ValueError(f"test_logits has {zt.shape[1]} label columns but val_logits has {zv.shape[1]}")
        splits["test"] = (zt, yt)
    return splits


def _before_after(z: np.ndarray, y: np.ndarray, temps: np.ndarray) -> tuple[dict, dict, dict]:
    """ECE (``{"flat", "per_label_mean"}``), reliability bins and NLL of one split, each ``{"before", "after"}``."""
    e_before, e_after = ece(y, sigmoid(z)), ece(y, apply_temperatures(z, temps))
    ece_entry = {
        "before": {"flat": e_before["flat"], "per_label_mean": e_before["per_label_mean"]},
        "after": {"flat": e_after["flat"], "per_label_mean": e_after["per_label_mean"]},
    }
    bins = {"before": e_before["bins"], "after": e_after["bins"]}
    return ece_entry, bins, {"before": _bce(z, y), "after": _bce(z / temps[None, :], y)}


def shipped_calibration(
    val_logits: np.ndarray,
    val_true: np.ndarray,
    names: Sequence[str],
    policy: str,
    *,
    metric: str = "macro_f1",
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> dict:
    """The ``calibration.json`` payload of a run: ``calibrate_run`` on validation only, without the test split.

    Keys: ``version``, ``method`` (``"temperature"``), ``fitted_on`` (``"validation"``), ``rows``,
    ``policy``, ``temperatures`` and ``thresholds`` ({label: value}, label order), ``labels_kept_at_1``,
    ``ece_before`` / ``ece_after`` ({``flat``, ``per_label_mean``}) and ``nll_before`` / ``nll_after``.
    """
    fitted = calibrate_run(val_logits, val_true, None, None, names, policy=policy, metric=metric, shrinkage=shrinkage)
    ece_val, nll_val = fitted["ece"]["validation"], fitted["nll"]["validation"]
    return {
        "version": CALIBRATION_VERSION,
        "method": "temperature",
        "fitted_on": "validation",
        "rows": int(np.shape(val_logits)[0]),
        "policy": policy,
        "temperatures": fitted["temperatures"],
        "thresholds": fitted["thresholds"],
        "labels_kept_at_1": fitted["labels_kept_at_1"],
        "ece_before": ece_val["before"],
        "ece_after": ece_val["after"],
        "nll_before": nll_val["before"],
        "nll_after": nll_val["after"],
    }
