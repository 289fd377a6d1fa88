"""A probability-averaging ensemble of the best runs, built from their saved logits.

Features
- ``top_k``: the ``k`` completed runs with the best validation macro-F1 (ties: name, then run id).
- ``mean_probabilities``: element-wise mean of several models' probabilities, refusing mismatched ids.
- ``ensemble_split``: temperature-scale each member on validation, average, tune thresholds on the mean.

Limits
- Unweighted mean only; members must have predicted the same rows in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emotion_core.calibration import apply_temperatures, fit_temperatures
from emotion_core.thresholds import tune_thresholds

__all__ = ["entry_name", "validation_macro_f1", "top_k", "mean_probabilities", "ensemble_split"]

IdsAndValues = tuple[Sequence, np.ndarray]


def validation_macro_f1(entry: dict) -> float | None:
    """Validation macro-F1 of an entry at its run's threshold policy; ``None`` for a failed run.

    ``entry`` is either a report entry ``{"config", "manifest"}`` (``manifest`` is ``None`` for a
    failed config), an analysis entry ``{"name", "validation_macro_f1"}`` (``analysis``) or a plain
    ``{"name", "val_macro_f1"}``.
    """
    if "manifest" in entry:
        manifest = entry["manifest"]
        if manifest is None:
            return None
        return manifest["summary"]["validation"][manifest["threshold_policy"]]["macro_f1"]
    return entry.get("val_macro_f1", entry.get("validation_macro_f1"))


def entry_name(entry: dict) -> str:
    manifest = entry.get("manifest")
    if manifest is not None:
        return manifest["config_name"]
    return entry.get("name") or entry["config"]


def top_k(entries: Sequence[dict], k: int) -> list[dict]:
    """The ``k`` entries with the highest validation macro-F1 (fewer if fewer completed runs).

    Entries without a score (failed runs) are skipped. Order: score descending, then name, then
    run id ascending.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scored = [e for e in entries if validation_macro_f1(e) is not None]

    def key(entry: dict) -> tuple:
        manifest = entry.get("manifest") or {}
        run_id = manifest.get("run_id") or entry.get("run_id") or ""
        return (-float(validation_macro_f1(entry)), entry_name(entry), run_id)

    return sorted(scored, key=key)[:k]


def mean_probabilities(prob_list: Sequence[IdsAndValues]) -> tuple[list, np.ndarray]:
    """``(ids, mean)`` of ``[(ids, probs), ...]``; every member must have the same ids, order and shape."""
    if not prob_list:
        raise ValueError("mean_probabilities needs at least one model's probabilities")
    ids0, first = list(prob_list[0][0]), np.asarray(prob_list[0][1], dtype=np.float64)
    if first.ndim != 2 or first.shape[0] != len(ids0):
        raise ValueError(f"model 0: probabilities of shape {first.shape} do not match its {len(ids0)} ids")
    total = first.copy()
    for m, (ids, probs) in enumerate(prob_list[1:], start=1):
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != first.shape:
            raise ValueError(f"model {m}: probabilities have shape {p.shape}, model 0 has {first.shape}")
        ids = list(ids)
        if ids != ids0:
            if len(ids) != len(ids0):
                raise ValueError(f"model {m} has {len(ids)} ids, model 0 has {len(ids0)}")
            at = next(i for i, (a, b) in enumerate(zip(ids0, ids)) if a != b)
            raise ValueError(f"model {m}: ids differ from model 0 at row {at} ({ids[at]!r} vs {ids0[at]!r}); "
                             "members must predict the same rows in the same order")
        total += p
    return ids0, total / len(prob_list)


def ensemble_split(val_logits: Sequence[IdsAndValues], val_true: np.ndarray,
                   test_logits: Sequence[IdsAndValues] | None = None, policy: str = "per_label",
                   calibrate: bool = True) -> dict:
    """Average the (temperature-scaled) probabilities of the members and tune thresholds.

    ``val_logits`` / ``test_logits``: one ``(ids, logits)`` per member, same member order;
    ``val_true`` in the validation ids' order (``evaluation.align_labels``). Temperatures are fitted
    per member on validation (``calibrate=False``: plain sigmoid). Returns ``{"temperatures":
    [(L,) array per member], "validation": (ids, probs), "test": (ids, probs) | None,
    "thresholds": (L,) array}`` with thresholds tuned on the ensemble's validation probabilities.
    """
    if test_logits is not None and len(test_logits) != len(val_logits):
        raise ValueError(f"{len(val_logits)} members on validation but {len(test_logits)} on test")
    temps = [fit_temperatures(z, val_true) if calibrate else np.ones(np.shape(z)[1]) for _, z in val_logits]

    def probs(members: Sequence[IdsAndValues]) -> tuple[list, np.ndarray]:
        # sigmoid(z / 1) == sigmoid(z): one code path whether or not members are calibrated.
        return mean_probabilities([(ids, apply_temperatures(z, t)) for (ids, z), t in zip(members, temps)])

    validation = probs(val_logits)
    return {
        "temperatures": temps,
        "validation": validation,
        "test": probs(test_logits) if test_logits is not None else None,
        "thresholds": tune_thresholds(val_true, validation[1], policy),
    }
