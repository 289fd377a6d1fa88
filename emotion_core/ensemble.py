"""Ensembles of the best runs, built from their saved logits, and fitted so that their score is honest.

Features
- ``top_k``: the ``k`` completed runs with the best validation macro-F1 (ties: name, then run id).
- ``mean_probabilities`` / ``ensemble_split``: the plain mean of temperature-scaled members, thresholds tuned
  on the same validation rows that score it (in-sample: the old ensemble, kept as the baseline).
- ``Combiner`` / ``fit_combiner``: per-member temperatures, then either a weighted mean of calibrated
  probabilities (simplex weights minimising validation log-loss) or stacking (one cross-entropy logistic layer per
  label over the members' calibrated logits, scikit-learn), then thresholds tuned on the combined probabilities.
- ``cross_fit``: the honest score. Validation is cut into ``folds``; on each, everything above (temperatures,
  weights or stacker, thresholds) is fitted on the other folds and predicts the held-out fold. The members
  alone go through the same folds (temperatures and thresholds fitted on the other folds). The ensemble is
  ``eligible`` to rank above its members only if its out-of-fold macro-F1 beats its best member's out-of-fold
  macro-F1 with a paired-bootstrap ``p < alpha``.

What is comparable: out-of-fold scores of the ensemble and of its members (same rows, nothing tuned on the
row it scores). A single run's usual validation score has its thresholds tuned on the rows it is scored on,
so it is optimistic; the ensemble's out-of-fold score, reported as its validation score, is not, so ranking it
against single runs is conservative. The shipped ensemble is refitted on all validation rows; test is never
used to fit anything.

Limits: members must have predicted the same validation rows; folds are plain shuffled k-fold (no multi-label
stratification): a label with no positive in a training part gets a constant stacker and the 0.5 threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emotion_core.calibration import apply_temperatures, fit_temperatures
from emotion_core.evaluation import paired_bootstrap
from emotion_core.metrics import sigmoid
from emotion_core.thresholds import apply_thresholds, tune_thresholds

__all__ = [
    "METHODS",
    "Combiner",
    "CrossFit",
    "cross_fit",
    "entry_name",
    "ensemble_split",
    "fit_combiner",
    "mean_probabilities",
    "top_k",
    "validation_macro_f1",
]

METHODS = ("weighted_mean", "stacking")
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] inside log-losses

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
            raise ValueError(
                f"model {m}: ids differ from model 0 at row {at} ({ids[at]!r} vs {ids0[at]!r}); "
                "members must predict the same rows in the same order"
            )
        total += p
    return ids0, total / len(prob_list)


def ensemble_split(
    val_logits: Sequence[IdsAndValues],
    val_true: np.ndarray,
    test_logits: Sequence[IdsAndValues] | None = None,
    policy: str = "per_label",
    calibrate: bool = True,
) -> dict:
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


# --------------------------------------------------------------------------- fitted combiners


@dataclass(frozen=True)
class Combiner:
    """How members' logits become one probability per label, and the thresholds applied to it.

    ``temperatures``: (M, L), member ``m``'s calibrated logits are ``z_m / T_m``. ``weighted_mean``: ``weights``
    (M,) >= 0 summing to 1 over the calibrated probabilities. ``stacking``: ``sigmoid(intercept_l +
    sum_m coef[l, m] * z_m,l / T_m,l)``, ``coef`` (L, M) and ``intercept`` (L,). ``thresholds``: (L,).
    """

    method: str
    temperatures: np.ndarray
    thresholds: np.ndarray
    weights: np.ndarray | None = None
    coef: np.ndarray | None = None
    intercept: np.ndarray | None = None

    def probabilities(self, logits: Sequence[np.ndarray]) -> np.ndarray:
        """(n, L) probabilities of the members' logits (one (n, L) array per member, member order)."""
        if len(logits) != len(self.temperatures):
            raise ValueError(f"the ensemble has {len(self.temperatures)} members, got logits of {len(logits)}")
        if self.method == "weighted_mean":
            probs = [apply_temperatures(z, t) for z, t in zip(logits, self.temperatures)]
            return np.einsum("m,mnl->nl", self.weights, np.stack(probs))
        features = np.stack([np.asarray(z, dtype=np.float64) / t[None, :] for z, t in zip(logits, self.temperatures)])
        return sigmoid(self.intercept[None, :] + np.einsum("mnl,lm->nl", features, self.coef))

    def predict(self, logits: Sequence[np.ndarray]) -> np.ndarray:
        return apply_thresholds(self.probabilities(logits), self.thresholds)


def _log_loss(q: np.ndarray, y: np.ndarray) -> float:
    q = np.clip(q, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def fit_weights(probs: Sequence[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Simplex weights (M,) of the members' probabilities minimising the mean log-loss of their weighted mean.

    Convex in the weights; SLSQP from equal weights. One weight per member (not per label: rare labels
    would overfit).
    """
    from scipy.optimize import minimize

    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probs])  # (M, n, L)
    y = np.asarray(y, dtype=np.float64)
    members = stacked.shape[0]
    if members == 1:
        return np.ones(1)

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.clip(np.einsum("m,mnl->nl", w, stacked), _EPS, 1 - _EPS)
        dq = -(y / q - (1 - y) / (1 - q)) / q.size
        return _log_loss(q, y), np.einsum("nl,mnl->m", dq, stacked)

    result = minimize(
        loss_and_grad,
        np.full(members, 1 / members),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
    )
    weights = np.clip(result.x, 0.0, None)
    return weights / weights.sum()


def fit_stacker(features: np.ndarray, y: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per label, ``LogisticRegression(C=c)`` over the members' calibrated logits of that label.

    ``features``: (M, n, L). Returns ``coef`` (L, M) and ``intercept`` (L,); a label with one class in ``y``
    gets zero coefficients and the logit of its (clipped) rate.
    """
    from sklearn.linear_model import LogisticRegression

    members, _, labels = features.shape
    coef, intercept = np.zeros((labels, members)), np.zeros(labels)
    for label in range(labels):
        target = np.asarray(y[:, label])
        if target.min() == target.max():
            rate = np.clip(target.mean(), _EPS, 1 - _EPS)
            intercept[label] = np.log(rate / (1 - rate))
            continue
        model = LogisticRegression(C=c, max_iter=1000).fit(features[:, :, label].T, target)
        coef[label], intercept[label] = model.coef_[0], model.intercept_[0]
    return coef, intercept


def fit_combiner(
    logits: Sequence[np.ndarray],
    y: np.ndarray,
    method: str = "weighted_mean",
    policy: str = "per_label",
    metric: str = "macro_f1",
) -> Combiner:
    """Temperatures per member, then weights or a stacker, then thresholds (tuned for ``metric``): all fitted on
    ``(logits, y)``. ``global_at_least_one`` is tuned as ``global``: the combiner's rule is thresholds only."""
    policy = "global" if policy == "global_at_least_one" else policy
    if method not in METHODS:
        raise ValueError(f"ensemble method must be one of {', '.join(METHODS)}, got {method!r}")
    temps = np.stack([fit_temperatures(z, y) for z in logits])
    if method == "weighted_mean":
        weights = fit_weights([apply_temperatures(z, t) for z, t in zip(logits, temps)], y)
        combiner = Combiner(method, temps, np.zeros(temps.shape[1]), weights=weights)
    else:
        features = np.stack([np.asarray(z, dtype=np.float64) / t[None, :] for z, t in zip(logits, temps)])
        coef, intercept = fit_stacker(features, y)
        combiner = Combiner(method, temps, np.zeros(temps.shape[1]), coef=coef, intercept=intercept)
    thresholds = tune_thresholds(y, combiner.probabilities(logits), policy, metric=metric)
    return Combiner(method, temps, thresholds, combiner.weights, combiner.coef, combiner.intercept)


# --------------------------------------------------------------------------- cross-fitting


@dataclass(frozen=True)
class CrossFit:
    """The out-of-fold evidence of an ensemble and the ensemble refitted on all validation rows."""

    combiner: Combiner
    """Fitted on every validation row: what ships and what predicts test."""
    oof_score: float
    """``metric`` of the out-of-fold predictions: the ensemble's honest validation score."""
    member_oof_scores: list[float]
    """Each member's out-of-fold score (its temperatures and thresholds fitted on the other folds)."""
    best_member: int
    """Index of the member with the best out-of-fold score."""
    paired: dict
    """``paired_bootstrap`` of the out-of-fold ``metric``, ensemble (a) minus its best member (b)."""
    eligible: bool
    """The ensemble beats its best member out of fold (``delta > 0`` and ``p_value < alpha``)."""
    folds: int
    metric: str = "macro_f1"
    """The dataset's official metric: what tunes the thresholds and scores the folds."""

    def summary(self) -> dict:
        """JSON-able facts for the report and the package (no arrays but the weights)."""
        c = self.combiner
        return {
            "method": c.method,
            "folds": self.folds,
            "metric": self.metric,
            "oof_score": self.oof_score,
            "member_oof_scores": self.member_oof_scores,
            "best_member": self.best_member,
            "paired_vs_best_member": self.paired,
            "eligible": self.eligible,
            "weights": None if c.weights is None else [float(w) for w in c.weights],
        }


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint held-out index sets covering ``range(n)`` (shuffled k-fold)."""
    from sklearn.model_selection import KFold

    if folds < 2 or n < 2 * folds:
        raise ValueError(f"cross-fitting needs at least 2 folds of 2 rows: {n} rows, {folds} folds")
    return [held for _, held in KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.arange(n))]


def cross_fit(
    logits: Sequence[np.ndarray],
    y: np.ndarray,
    names: Sequence[str],
    *,
    method: str = "weighted_mean",
    policy: str = "per_label",
    folds: int = 5,
    alpha: float = 0.05,
    bootstrap_n: int = 1000,
    seed: int = 0,
    metric: str = "macro_f1",
) -> CrossFit:
    """Out-of-fold predictions of the ensemble and of each member alone, the paired test, and the refit.

    ``logits``: one (n, L) validation array per member, rows aligned with ``y``. See the module docstring.
    """
    from emotion_core.metrics import metric_score

    policy = "global" if policy == "global_at_least_one" else policy
    y = np.asarray(y)
    logits = [np.asarray(z, dtype=np.float64) for z in logits]
    oof = np.zeros(y.shape, dtype=np.int64)
    member_oof = [np.zeros(y.shape, dtype=np.int64) for _ in logits]
    for held in fold_indices(len(y), folds, seed):
        train = np.setdiff1d(np.arange(len(y)), held)
        combiner = fit_combiner([z[train] for z in logits], y[train], method, policy, metric)
        oof[held] = combiner.predict([z[held] for z in logits])
        for m, z in enumerate(logits):  # the member alone, through the same folds
            temps = fit_temperatures(z[train], y[train])
            cuts = tune_thresholds(y[train], apply_temperatures(z[train], temps), policy, metric=metric)
            member_oof[m][held] = apply_thresholds(apply_temperatures(z[held], temps), cuts)
    scores = [float(metric_score(y, p, metric)) for p in member_oof]
    best = int(np.argmax(scores))
    paired = paired_bootstrap(y, oof, member_oof[best], n=bootstrap_n, seed=seed, metric=metric)
    eligible = bool(paired["delta"] > 0 and paired["p_value"] < alpha)
    return CrossFit(
        fit_combiner(logits, y, method, policy, metric),
        float(paired["score_a"]),
        scores,
        best,
        paired,
        eligible,
        folds,
        metric,
    )
