"""Tests for emotion_core.evaluation: agreement with scikit-learn, hand-computed cases, bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score

from emotion_core.evaluation import (
    align_labels,
    bootstrap_f1,
    bootstrap_indices,
    brier_score,
    ece,
    evaluate_split,
    paired_bootstrap,
    ranking_metrics,
)
from emotion_core.metrics import multilabel_metrics
from emotion_core.thresholds import apply_thresholds


def _random_case(n: int = 300, n_labels: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Truth with label-dependent rates and informative, noisy probabilities."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.1, 0.5, n_labels)
    y = (rng.random((n, n_labels)) < rates).astype(int)
    p = np.clip(0.35 * y + 0.65 * rng.random((n, n_labels)), 0.0, 1.0)
    return y, p


def _noisy(y: np.ndarray, flip: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(y.shape) < flip, 1 - y, y)


# --------------------------------------------------------------------------- ranking


def test_ranking_matches_scikit_learn():
    y, p = _random_case()
    names = ["a", "b", "c", "d"]
    r = ranking_metrics(y, p, names)
    for j, nm in enumerate(names):
        assert r["pr_auc"]["per_label"][nm] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-12)
        assert r["roc_auc"]["per_label"][nm] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
    assert r["pr_auc"]["macro"] == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-12)
    assert r["pr_auc"]["micro"] == pytest.approx(average_precision_score(y, p, average="micro"), abs=1e-12)
    assert r["roc_auc"]["macro"] == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-12)
    assert r["roc_auc"]["micro"] == pytest.approx(roc_auc_score(y, p, average="micro"), abs=1e-12)
    assert r["pr_auc"]["labels_left_out"] == 0 and r["roc_auc"]["labels_left_out_names"] == []


def test_ranking_hand_computed():
    # Ranked by probability: P N P N. AP = 1/2 * 1 + 1/2 * 2/3; ROC: 3 of 4 (pos, neg) pairs in order.
    y = np.array([[1], [0], [1], [0]])
    p = np.array([[0.9], [0.8], [0.7], [0.1]])
    r = ranking_metrics(y, p, ["x"])
    assert r["pr_auc"]["per_label"]["x"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert r["roc_auc"]["per_label"]["x"] == pytest.approx(0.75)


def test_undefined_labels_are_none_and_left_out_of_macro():
    y, p = _random_case(n=200, n_labels=3)
    y[:, 1] = 0  # no positives: neither AUC defined
    y[:, 2] = 1  # no negatives: AP defined (= 1), ROC not
    r = ranking_metrics(y, p, ["ok", "none", "all"])
    assert r["pr_auc"]["per_label"]["none"] is None
    assert r["pr_auc"]["per_label"]["all"] == pytest.approx(1.0)
    assert r["roc_auc"]["per_label"]["none"] is None and r["roc_auc"]["per_label"]["all"] is None
    assert r["pr_auc"]["labels_left_out"] == 1 and r["pr_auc"]["labels_left_out_names"] == ["none"]
    assert r["roc_auc"]["labels_left_out"] == 2
    ok_pr = average_precision_score(y[:, 0], p[:, 0])
    assert r["pr_auc"]["macro"] == pytest.approx((ok_pr + 1.0) / 2)
    assert r["roc_auc"]["macro"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    # Pooled cells have both classes, so micro is defined.
    assert r["roc_auc"]["micro"] == pytest.approx(roc_auc_score(y.ravel(), p.ravel()))


def test_ranking_all_undefined_gives_none_macro():
    y = np.zeros((5, 2), dtype=int)
    r = ranking_metrics(y, np.full((5, 2), 0.3), ["a", "b"])
    assert r["pr_auc"]["macro"] is None and r["pr_auc"]["micro"] is None
    assert r["roc_auc"]["macro"] is None and r["roc_auc"]["micro"] is None


# --------------------------------------------------------------------------- brier, ECE


def test_brier_matches_scikit_learn_and_hand_case():
    y, p = _random_case()
    b = brier_score(y, p)
    assert b["mean"] == pytest.approx(brier_score_loss(y.ravel(), p.ravel()), abs=1e-12)
    for j in range(y.shape[1]):
        assert b["per_label"][j] == pytest.approx(brier_score_loss(y[:, j], p[:, j]), abs=1e-12)
    # (0.2^2 + 0.3^2) / 2 on one label
    assert brier_score(np.array([[1], [0]]), np.array([[0.8], [0.3]]))["mean"] == pytest.approx(0.065)


def test_ece_constant_probability():
    # Every probability 0.8, 60 % positives: one filled bin, |0.6 - 0.8| = 0.2.
    y = np.zeros((10, 2), dtype=int)
    y[:6] = 1
    e = ece(y, np.full((10, 2), 0.8))
    assert e["flat"] == pytest.approx(0.2)
    assert e["per_label"] == pytest.approx([0.2, 0.2])
    assert e["per_label_mean"] == pytest.approx(0.2)
    assert len(e["bins"]) == 15 and e["n_bins"] == 15
    filled = [b for b in e["bins"] if b["count"] > 0]
    assert len(filled) == 1
    assert filled[0]["lower"] <= 0.8 < filled[0]["upper"] and filled[0]["count"] == 20
    assert filled[0]["confidence"] == pytest.approx(0.8) and filled[0]["accuracy"] == pytest.approx(0.6)
    assert all(b["confidence"] is None and b["accuracy"] is None for b in e["bins"] if b["count"] == 0)


def test_flat_ece_can_hide_per_label_miscalibration():
    # Label 0 under-confident (0.8, all positive), label 1 over-confident (0.8, 60 % positive):
    # each is off by 0.2, but pooled the bin holds 16/20 = 0.8 positives, so the flat ECE is 0.
    y = np.zeros((10, 2), dtype=int)
    y[:, 0] = 1
    y[:6, 1] = 1
    e = ece(y, np.full((10, 2), 0.8))
    assert e["flat"] == pytest.approx(0.0, abs=1e-12)
    assert e["per_label"] == pytest.approx([0.2, 0.2])
    assert e["per_label_mean"] == pytest.approx(0.2)


def test_ece_matches_a_slow_loop_and_bins_the_edges():
    y, p = _random_case(n=400, n_labels=3, seed=3)
    p[0, 0], p[1, 0] = 0.0, 1.0  # edges: first and last bin

    def slow(yc: np.ndarray, pc: np.ndarray, bins: int) -> float:
        total = 0.0
        for b in range(bins):
            lo, hi = b / bins, (b + 1) / bins
            inside = (pc >= lo) & ((pc < hi) if b < bins - 1 else (pc <= hi))
            if inside.any():
                total += inside.sum() / pc.size * abs(yc[inside].mean() - pc[inside].mean())
        return total

    for bins in (15, 7):
        e = ece(y, p, bins=bins)
        assert e["flat"] == pytest.approx(slow(y.ravel(), p.ravel(), bins), abs=1e-12)
        for j in range(3):
            assert e["per_label"][j] == pytest.approx(slow(y[:, j], p[:, j], bins), abs=1e-12)
        assert sum(b["count"] for b in e["bins"]) == y.size
    e = ece(y, p)
    assert e["bins"][0]["count"] >= 1 and e["bins"][-1]["count"] >= 1


def test_ece_near_zero_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(7)
    p = rng.random((20000, 2))
    y = (rng.random(p.shape) < p).astype(int)  # P(y = 1 | p) = p: calibrated by construction
    good = ece(y, p)
    assert good["flat"] < 0.02 and good["per_label_mean"] < 0.025
    bad = ece(y, p**3)  # same ranking, far too low probabilities
    assert bad["flat"] > 0.15 and bad["per_label_mean"] > 0.15


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError, match="bins"):
        ece(np.zeros((2, 1)), np.zeros((2, 1)), bins=0)
    with pytest.raises(ValueError, match="same shape"):
        ece(np.zeros((2, 1)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ece(np.zeros((2, 1)), np.full((2, 1), 1.5))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_reproducible_and_contains_estimate():
    y, p = _random_case(n=500, n_labels=5)
    pred = (p >= 0.5).astype(int)
    a = bootstrap_f1(y, pred, n=300, seed=11)
    assert a == bootstrap_f1(y, pred, n=300, seed=11)
    other = bootstrap_f1(y, pred, n=300, seed=12)
    assert (other["macro_f1"]["low"], other["macro_f1"]["high"]) != (a["macro_f1"]["low"], a["macro_f1"]["high"])
    m = multilabel_metrics(y, pred, list("abcde"))
    for key in ("macro_f1", "micro_f1"):
        ci = a[key]
        assert ci["estimate"] == pytest.approx(m[key], abs=1e-12)
        assert ci["low"] < ci["estimate"] < ci["high"]
        assert 0.0 < ci["high"] - ci["low"] < 0.2
        assert ci["confidence"] == 0.95 and ci["n_resamples"] == 300 and ci["seed"] == 11


def test_bootstrap_matches_slow_loop():
    y, p = _random_case(n=40, n_labels=4, seed=5)
    pred = (p >= 0.45).astype(int)
    n, seed, alpha = 60, 3, 0.1
    idx = bootstrap_indices(len(y), n, seed)
    macro = [f1_score(y[r], pred[r], average="macro", zero_division=0) for r in idx]
    micro = [f1_score(y[r], pred[r], average="micro", zero_division=0) for r in idx]
    fast = bootstrap_f1(y, pred, n=n, seed=seed, alpha=alpha)
    for key, values in (("macro_f1", macro), ("micro_f1", micro)):
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        assert fast[key]["low"] == pytest.approx(low, abs=1e-12)
        assert fast[key]["high"] == pytest.approx(high, abs=1e-12)


def test_paired_bootstrap_better_model_and_identical_models():
    rng = np.random.default_rng(0)
    y = (rng.random((800, 6)) < 0.3).astype(int)
    good, bad = _noisy(y, 0.05, 1), _noisy(y, 0.30, 2)
    r = paired_bootstrap(y, good, bad, n=500, seed=0)
    names = list("abcdef")
    assert r["macro_f1_a"] == pytest.approx(multilabel_metrics(y, good, names)["macro_f1"])
    assert r["delta"] == pytest.approx(r["macro_f1_a"] - r["macro_f1_b"]) and r["delta"] > 0.1
    assert r["p_value"] < 0.05 and r["low"] > 0
    assert paired_bootstrap(y, bad, good, n=500, seed=0)["p_value"] > 0.95

    same = paired_bootstrap(y, good, good.copy(), n=200, seed=0)
    assert same["delta"] == 0.0 and same["low"] == 0.0 and same["high"] == 0.0
    assert same["p_value"] == 1.0  # delta <= 0 on every resample: never promote a copy


def test_paired_bootstrap_matches_slow_loop():
    y, p = _random_case(n=50, n_labels=3, seed=9)
    a, b = (p >= 0.5).astype(int), (p >= 0.35).astype(int)
    idx = bootstrap_indices(len(y), 80, 4)
    deltas = np.array(
        [
            f1_score(y[r], a[r], average="macro", zero_division=0)
            - f1_score(y[r], b[r], average="macro", zero_division=0)
            for r in idx
        ]
    )
    fast = paired_bootstrap(y, a, b, n=80, seed=4)
    assert fast["p_value"] == pytest.approx(np.mean(deltas <= 0))
    assert fast["low"] == pytest.approx(np.quantile(deltas, 0.025), abs=1e-12)


def test_bootstrap_rejects_bad_input():
    y = np.zeros((4, 2), dtype=int)
    with pytest.raises(ValueError, match="same shape"):
        bootstrap_f1(y, np.zeros((3, 2), dtype=int))
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_f1(y, y, alpha=1.5)
    with pytest.raises(ValueError, match=">= 1"):
        bootstrap_f1(y, y, n=0)


# --------------------------------------------------------------------------- evaluate_split


def test_evaluate_split_is_complete_and_json_serialisable():
    y, p = _random_case(n=300, n_labels=3)
    names = ["joy", "anger", "fear"]
    t = np.array([0.5, 0.4, 0.6])
    out = evaluate_split(y, p, t, names, bootstrap_n=200, seed=1)
    assert set(out) == {
        "thresholds",
        "metrics",
        "macro_f1_ci",
        "micro_f1_ci",
        "jaccard_samples_ci",
        "pr_auc",
        "roc_auc",
        "brier",
        "ece",
    }
    assert out["jaccard_samples_ci"]["estimate"] == pytest.approx(out["metrics"]["jaccard_samples"])
    assert out["thresholds"] == {"joy": 0.5, "anger": 0.4, "fear": 0.6}
    assert out["metrics"] == multilabel_metrics(y, apply_thresholds(p, t), names)
    assert out["macro_f1_ci"]["estimate"] == pytest.approx(out["metrics"]["macro_f1"])
    assert out["macro_f1_ci"] == bootstrap_f1(y, apply_thresholds(p, t), n=200, seed=1)["macro_f1"]
    assert set(out["ece"]) == {"flat", "per_label_mean", "per_label", "n_bins", "bins"}
    assert list(out["ece"]["per_label"]) == names and list(out["brier"]["per_label"]) == names
    assert out["brier"]["per_label"]["anger"] == pytest.approx(brier_score_loss(y[:, 1], p[:, 1]))
    assert json.loads(json.dumps(out)) == out  # plain values only


# --------------------------------------------------------------------------- align_labels


def test_align_labels_reorders_to_logit_order():
    labels = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    out = align_labels(["c", "a", "b"], ["a", "b", "c"], labels)
    assert out.tolist() == [[1, 1], [1, 0], [0, 1]]
    assert out.dtype == np.float32


def test_align_labels_errors_name_missing_and_extra_ids():
    labels = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"1 id\(s\) of the logits are missing from the data: 'zz'"):
        align_labels(["a", "b", "zz"], ["a", "b", "c"], labels)
    with pytest.raises(ValueError, match=r"1 id\(s\) of the data are not in the logits: 'c'"):
        align_labels(["a", "b"], ["a", "b", "c"], labels)
    many = [f"x{i}" for i in range(10)]
    with pytest.raises(ValueError, match=r"10 id\(s\) of the logits are missing.*'x4', \.\.\."):
        align_labels(many, ["a", "b", "c"], labels)
    with pytest.raises(ValueError, match="duplicated"):
        align_labels(["a", "a", "b"], ["a", "b", "c"], labels)
    with pytest.raises(ValueError, match="rows"):
        align_labels(["a", "b"], ["a", "b"], labels)


def test_paired_bootstrap_on_jaccard_matches_a_slow_reference():
    from emotion_core.evaluation import bootstrap_indices

    rng = np.random.default_rng(4)
    y = (rng.random((80, 4)) < 0.3).astype(int)
    good = np.where(rng.random(y.shape) < 0.85, y, 1 - y)
    bad = np.where(rng.random(y.shape) < 0.6, y, 1 - y)
    names = list("abcd")
    r = paired_bootstrap(y, good, bad, n=150, seed=2, metric="jaccard_samples")
    assert r["metric"] == "jaccard_samples" and "macro_f1_a" not in r
    assert r["score_a"] == pytest.approx(multilabel_metrics(y, good, names)["jaccard_samples"])
    deltas = [
        multilabel_metrics(y[i], good[i], names)["jaccard_samples"]
        - multilabel_metrics(y[i], bad[i], names)["jaccard_samples"]
        for i in bootstrap_indices(80, 150, 2)
    ]
    assert r["p_value"] == pytest.approx(np.mean(np.array(deltas) <= 0))
    assert r["low"] == pytest.approx(np.quantile(deltas, 0.025)) and r["delta"] > 0.1
