"""Tests for emotion_core.thresholds: known optima, tie rule, policy ordering, no test leakage."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from emotion_core.metrics import multilabel_metrics
from emotion_core.thresholds import (
    DEFAULT_GRID,
    POLICIES,
    apply_thresholds,
    evaluate_policies,
    requires_one_label,
    tune_thresholds,
)


def _constructed():
    """3 labels with known optima (default grid 0.01..0.99).

    label 0: positives {0.30, 0.45, 0.90}, negatives {0.05, 0.10, 0.25}: F1 = 1 exactly for
             t in (0.25, 0.30] -> grid 0.26..0.30; closest to 0.5 is 0.30.
    label 1: positives {0.70, 0.80}, negatives {0.20, 0.60, 0.15, 0.55}: F1 = 1 for t in (0.60, 0.70]
             -> grid 0.61..0.70; closest to 0.5 is 0.61.
    label 2: no positives -> 0.5 (cannot be tuned).
    """
    y = np.zeros((6, 3), dtype=int)
    p = np.zeros((6, 3))
    y[:, 0] = [1, 1, 1, 0, 0, 0]
    p[:, 0] = [0.30, 0.45, 0.90, 0.05, 0.10, 0.25]
    y[:, 1] = [1, 1, 0, 0, 0, 0]
    p[:, 1] = [0.70, 0.80, 0.20, 0.60, 0.15, 0.55]
    p[:, 2] = [0.9, 0.1, 0.2, 0.3, 0.4, 0.6]
    return y, p


def test_default_grid():
    assert DEFAULT_GRID.shape == (99,)
    assert DEFAULT_GRID[0] == 0.01 and DEFAULT_GRID[-1] == 0.99
    assert 0.5 in DEFAULT_GRID and 0.3 in DEFAULT_GRID  # exact doubles, so thresholds print cleanly


def test_per_label_finds_known_optimum():
    y, p = _constructed()
    t = tune_thresholds(y, p, "per_label")
    assert t.dtype == np.float64 and t.shape == (3,)
    assert t.tolist() == [0.30, 0.61, 0.5]
    m = multilabel_metrics(y, apply_thresholds(p, t), ["x", "y", "z"])
    assert m["per_label"]["x"]["f1"] == 1.0
    assert m["per_label"]["y"]["f1"] == 1.0


def test_fixed_is_half():
    y, p = _constructed()
    assert tune_thresholds(y, p, "fixed").tolist() == [0.5, 0.5, 0.5]


def test_global_maximises_macro_f1_over_grid_brute_force():
    # Independent check: macro-F1 from scikit-learn at every grid value. Macro over all 3 labels;
    # label 2 (no positives) contributes 0 everywhere. Labels 0 and 1 are both perfect nowhere at
    # once, so the best is a compromise computed here by brute force.
    y, p = _constructed()
    macro = np.array([f1_score(y, (p >= g).astype(int), average="macro", zero_division=0) for g in DEFAULT_GRID])
    best = macro.max()
    t = tune_thresholds(y, p, "global")
    assert np.unique(t).size == 1
    got = multilabel_metrics(y, apply_thresholds(p, t), ["x", "y", "z"])["macro_f1"]
    assert got == pytest.approx(best, abs=1e-12)
    # tie rule: of all grid values reaching the best, the one closest to 0.5
    candidates = DEFAULT_GRID[macro >= best - 1e-12]
    expected = candidates[np.argmin(np.round(np.abs(candidates - 0.5), 9))]
    assert t[0] == expected


def test_per_label_matches_brute_force_on_random_data():
    rng = np.random.default_rng(3)
    n, n_labels = 120, 5
    y = (rng.random((n, n_labels)) < [0.05, 0.1, 0.3, 0.5, 0.2]).astype(int)
    p = np.clip(0.35 * y + rng.random((n, n_labels)) * 0.7, 0, 1).round(2)  # rounded: many exact ties
    grid = np.arange(5, 100, 5) / 100
    t = tune_thresholds(y, p, "per_label", grid=grid)
    for j in range(n_labels):
        f1s = np.array([f1_score(y[:, j], (p[:, j] >= g).astype(int), zero_division=0) for g in grid])
        candidates = grid[f1s >= f1s.max() - 1e-12]
        expected = candidates[np.argmin(np.round(np.abs(candidates - 0.5), 9))]
        assert t[j] == expected, j


def test_equal_distance_tie_goes_to_lower():
    y = np.array([[1], [0]])
    p = np.array([[0.9], [0.1]])  # perfect at 0.4 and at 0.6
    assert tune_thresholds(y, p, "per_label", grid=[0.6, 0.4]).tolist() == [0.4]
    assert tune_thresholds(y, p, "global", grid=[0.6, 0.4]).tolist() == [0.4]


def test_all_negative_labels_get_half():
    y = np.zeros((4, 2), dtype=int)
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.3], [0.7, 0.6]])
    for policy in POLICIES:
        assert tune_thresholds(y, p, policy).tolist() == [0.5, 0.5], policy
    # With a grid lacking 0.5 the tie rule alone would pick 0.4; per_label must still give 0.5 to a
    # label without positives, while a label with positives gets a grid value. global keeps one
    # shared grid value (here the flat-F1 tie winner closest to 0.5).
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    assert tune_thresholds(y, p, "per_label", grid=[0.2, 0.4, 0.7]).tolist() == [0.4, 0.5]
    assert tune_thresholds(y, p, "global", grid=[0.2, 0.4, 0.7]).tolist() == [0.4, 0.4]


def test_apply_thresholds_is_greater_or_equal():
    p = np.array([[0.3, 0.29999], [0.5, 0.7]])
    out = apply_thresholds(p, np.array([0.3, 0.7]))
    assert out.dtype == np.uint8
    assert out.tolist() == [[1, 0], [1, 1]]


def _synthetic_split(rng, n, n_labels=6):
    """Imbalanced labels; per-label calibration is deliberately off so tuning matters."""
    rates = np.array([0.03, 0.08, 0.15, 0.3, 0.45, 0.1])[:n_labels]
    y = (rng.random((n, n_labels)) < rates).astype(int)
    shift = np.array([-2.5, -1.5, -0.5, 0.5, 1.0, -1.0])[:n_labels]  # miscalibration per label
    logits = 2.0 * (2 * y - 1) + shift + rng.normal(0, 1.5, size=(n, n_labels))
    return y, 1 / (1 + np.exp(-logits))


def test_evaluate_policies_ordering_and_no_leakage():
    rng = np.random.default_rng(7)
    names = [f"e{i}" for i in range(6)]
    val_y, val_p = _synthetic_split(rng, 400)
    test_y, test_p = _synthetic_split(rng, 300)
    report = evaluate_policies(names, val_y, val_p, test_y, test_p)

    assert set(report) == {"thresholds", "validation", "test"}
    for split in ("validation", "test"):
        assert list(report[split]) == list(POLICIES)
        for policy in POLICIES:
            m = report[split][policy]
            assert m["threshold_policy"] == policy
            assert m["thresholds_tuned_on"] == (None if policy == "fixed" else "validation")

    val = report["validation"]
    # 0.5 is in the grid, so tuning can only match or beat the untuned choice on its own split.
    assert val["global"]["macro_f1"] >= val["fixed"]["macro_f1"]
    assert val["per_label"]["macro_f1"] >= val["global"]["macro_f1"]
    # ...and on this miscalibrated data it must strictly help, or the tuner is doing nothing.
    assert val["per_label"]["macro_f1"] > val["fixed"]["macro_f1"] + 0.01

    for policy in POLICIES:
        thr = np.array(report["thresholds"][policy])
        # thresholds come from validation only ...
        assert thr.tolist() == tune_thresholds(val_y, val_p, policy).tolist()
        assert all(type(x) is float for x in report["thresholds"][policy])
        # ... and the test numbers are exactly those thresholds applied to test.
        expected_test = multilabel_metrics(test_y, apply_thresholds(test_p, thr, requires_one_label(policy)), names)
        got = {k: v for k, v in report["test"][policy].items() if k not in ("threshold_policy", "thresholds_tuned_on")}
        assert got == expected_test
    assert len(set(report["thresholds"]["per_label"])) > 1  # per-label really differs per label

    # Changing the test split changes no threshold.
    other = evaluate_policies(names, val_y, val_p, test_y[:50], 1 - test_p[:50])
    assert other["thresholds"] == report["thresholds"]


def test_evaluate_policies_without_test():
    y, p = _constructed()
    report = evaluate_policies(["x", "y", "z"], y, p)
    assert set(report) == {"thresholds", "validation"}
    assert report["thresholds"]["per_label"] == [0.3, 0.61, 0.5]
    assert report["validation"]["per_label"]["per_label"]["x"]["f1"] == 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda y, p: tune_thresholds(y, p, "best"), "unknown threshold policy"),
        (lambda y, p: tune_thresholds(y[:5], p, "global"), "same shape"),
        (lambda y, p: tune_thresholds(y, p[:, 0], "global"), "2-D"),
        (lambda y, p: tune_thresholds(y * 3, p, "per_label"), "only 0 and 1"),
        (lambda y, p: tune_thresholds(y, p * 2, "per_label"), r"\[0, 1\]"),
        (lambda y, p: tune_thresholds(y, np.where(p > 0.5, np.nan, p), "per_label"), "NaN"),
        (lambda y, p: tune_thresholds(y, p, "per_label", grid=[]), "non-empty"),
        (lambda y, p: tune_thresholds(y, p, "per_label", grid=[0.2, 1.5]), "grid values"),
        (lambda y, p: apply_thresholds(p, [0.5, 0.5]), r"shape \(3,\)"),
        (lambda y, p: apply_thresholds(p, [0.5, np.nan, 0.5]), "NaN"),
        (lambda y, p: evaluate_policies(["x", "y", "z"], y, p, test_true=y), "both"),
        (lambda y, p: evaluate_policies(["x", "y"], y, p), "label_names"),
        (lambda y, p: evaluate_policies(["x", "y", "z"], y, p, y[:, :2], p[:, :2]), "label columns"),
    ],
)
def test_bad_input_raises(call, match):
    y, p = _constructed()
    with pytest.raises(ValueError, match=match):
        call(y, p)


# --- policies for each dataset's metric: shrinkage, at-least-one, the auto choice ---------------------------------


def test_shrunk_pulls_a_rare_label_towards_the_global_threshold():
    rng = np.random.default_rng(5)
    n = 400
    y = np.zeros((n, 4), dtype=int)
    y[:200, :3] = 1  # three common labels (200 positives each) whose best threshold is low (~0.3)
    probs = np.where(y == 1, 0.3 + rng.random((n, 4)) * 0.7, rng.random((n, 4)) * 0.25)
    rare = rng.choice(n, 3, replace=False)
    y[:, 3] = 0
    y[rare, 3] = 1  # a rare label: 3 positives above all its negatives (its own best threshold is ~0.9)
    probs[:, 3] = rng.random(n) * 0.88
    probs[rare, 3] = 0.95
    own = tune_thresholds(y, probs, "per_label")
    pooled = tune_thresholds(y, probs, "global")[0]
    shrunk = tune_thresholds(y, probs, "shrunk", shrinkage=20.0)
    for j, positives in ((0, 200), (3, 3)):
        assert shrunk[j] == pytest.approx((positives * own[j] + 20.0 * pooled) / (positives + 20.0))
    assert own[3] - pooled > 0.5  # the rare label's own threshold really differs, or the test shows nothing
    # The rare label keeps 3/23 of its own distance from the global value, a common one 200/220.
    assert abs(shrunk[3] - pooled) == pytest.approx(abs(own[3] - pooled) * 3 / 23)
    assert abs(shrunk[0] - own[0]) <= abs(own[0] - pooled) * 20 / 220 + 1e-12


def test_shrunk_gives_a_label_without_positives_the_global_threshold():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.1, 0.7], [0.8, 0.1], [0.3, 0.6]])
    shrunk = tune_thresholds(y, probs, "shrunk")
    assert shrunk[1] == tune_thresholds(y, probs, "global")[1]


def test_at_least_one_gives_an_empty_row_its_most_probable_label():
    probs = np.array([[0.2, 0.4, 0.1], [0.9, 0.1, 0.8], [0.3, 0.3, 0.1]])
    t = np.full(3, 0.5)
    assert apply_thresholds(probs, t).tolist() == [[0, 0, 0], [1, 0, 1], [0, 0, 0]]
    assert apply_thresholds(probs, t, at_least_one=True).tolist() == [[0, 1, 0], [1, 0, 1], [1, 0, 0]]


def test_global_at_least_one_maximises_jaccard_over_the_grid():
    rng = np.random.default_rng(8)
    y = (rng.random((120, 4)) < 0.3).astype(int)
    y[y.sum(axis=1) == 0, 0] = 1  # every row has a label, as in SemEval E-c (almost)
    probs = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1)
    tuned = tune_thresholds(y, probs, "global_at_least_one", metric="jaccard_samples")
    best = multilabel_metrics(y, apply_thresholds(probs, tuned, True), list("abcd"))["jaccard_samples"]
    for value in DEFAULT_GRID:
        preds = apply_thresholds(probs, np.full(4, value), True)
        assert multilabel_metrics(y, preds, list("abcd"))["jaccard_samples"] <= best + 1e-12
    plain = tune_thresholds(y, probs, "global", metric="jaccard_samples")
    plain_score = multilabel_metrics(y, apply_thresholds(probs, plain), list("abcd"))["jaccard_samples"]
    assert best > plain_score  # on rows that all have a label, the rule helps


def test_choose_policy_scores_held_out_folds_and_never_sees_test():
    from emotion_core.thresholds import choose_policy

    rng = np.random.default_rng(9)
    y = (rng.random((300, 3)) < 0.25).astype(int)
    y[y.sum(axis=1) == 0, 1] = 1
    probs = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1)
    chosen = choose_policy(y, probs, "jaccard_samples", seed=1)
    assert chosen["policy"] in ("global", "per_label", "shrunk", "global_at_least_one")
    assert chosen["scores"][chosen["policy"]] == max(chosen["scores"].values())
    assert chosen["folds"] == 5 and chosen["metric"] == "jaccard_samples"
    # In-sample, per_label always wins macro-F1; on held-out folds the score is honest and lower.
    in_sample = multilabel_metrics(y, apply_thresholds(probs, tune_thresholds(y, probs, "per_label")), list("abc"))
    assert choose_policy(y, probs, "macro_f1", seed=1)["scores"]["per_label"] < in_sample["macro_f1"]
    assert choose_policy(y, probs, "jaccard_samples", seed=1) == chosen  # seeded folds: the same choice


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        tune_thresholds(np.array([[1], [0]]), np.array([[0.7], [0.2]]), "global", metric="accuracy")
