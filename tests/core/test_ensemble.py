"""Tests for emotion_core.ensemble: member choice, probability averaging, the ensemble split."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_core.calibration import apply_temperatures, fit_temperatures
from emotion_core.ensemble import ensemble_split, mean_probabilities, top_k
from emotion_core.metrics import sigmoid
from emotion_core.thresholds import tune_thresholds


def _manifest(name: str, macro_f1: float, run_id: str) -> dict:
    return {
        "config_name": name,
        "run_id": run_id,
        "threshold_policy": "per_label",
        "summary": {"validation": {"per_label": {"macro_f1": macro_f1}, "fixed": {"macro_f1": 0.99}}},
    }


def test_top_k_best_validation_macro_f1_ties_by_name():
    entries = [
        {"config": "c", "manifest": _manifest("c", 0.40, "c-1")},
        {"config": "b", "manifest": _manifest("b", 0.55, "b-1")},
        {"config": "failed", "manifest": None, "status": "failed", "error": "OOM"},
        {"config": "a", "manifest": _manifest("a", 0.55, "a-1")},
        {"config": "d", "manifest": _manifest("d", 0.30, "d-1")},
    ]
    chosen = top_k(entries, 3)
    assert [e["config"] for e in chosen] == ["a", "b", "c"]  # 0.55 tie -> a before b; fixed 0.99 ignored
    assert [e["config"] for e in top_k(list(reversed(entries)), 2)] == ["a", "b"]  # input order irrelevant
    assert len(top_k(entries, 10)) == 4  # the failed run is never a member
    plain = [{"name": "x", "val_macro_f1": 0.2}, {"name": "y", "val_macro_f1": 0.3}]
    assert [e["name"] for e in top_k(plain, 1)] == ["y"]
    with pytest.raises(ValueError, match="k must be"):
        top_k(entries, 0)


def test_mean_probabilities_and_mismatches():
    ids = ["r1", "r2"]
    a, b = np.array([[0.2, 0.9], [0.4, 0.0]]), np.array([[0.6, 0.5], [0.0, 1.0]])
    out_ids, mean = mean_probabilities([(ids, a), (ids, b)])
    assert out_ids == ids and mean == pytest.approx(np.array([[0.4, 0.7], [0.2, 0.5]]))
    with pytest.raises(ValueError, match=r"model 1: probabilities have shape \(2, 3\)"):
        mean_probabilities([(ids, a), (ids, np.zeros((2, 3)))])
    with pytest.raises(ValueError, match=r"model 1: ids differ from model 0 at row 0 \('r2' vs 'r1'\)"):
        mean_probabilities([(ids, a), (["r2", "r1"], b)])
    with pytest.raises(ValueError, match="at least one"):
        mean_probabilities([])


def test_ensemble_of_two_models():
    rng = np.random.default_rng(0)
    n = 2000
    s = rng.normal(0.0, 1.5, size=(n, 3))
    y = (rng.random(s.shape) < sigmoid(s)).astype(int)
    ids = [f"r{i}" for i in range(n)]
    m1 = 3.0 * s + rng.normal(0, 0.5, s.shape)  # over-confident
    m2 = 0.5 * s + rng.normal(0, 0.1, s.shape)  # under-confident
    val = [(ids[:1000], m1[:1000]), (ids[:1000], m2[:1000])]
    test = [(ids[1000:], m1[1000:]), (ids[1000:], m2[1000:])]
    yv = y[:1000]

    plain = ensemble_split(val, yv, test, policy="per_label", calibrate=False)
    expected = (sigmoid(m1[:1000]) + sigmoid(m2[:1000])) / 2
    assert plain["validation"][0] == ids[:1000] and plain["validation"][1] == pytest.approx(expected)
    assert plain["thresholds"].tolist() == tune_thresholds(yv, expected, "per_label").tolist()

    cal = ensemble_split(val, yv, test, policy="per_label")
    t1, t2 = fit_temperatures(m1[:1000], yv), fit_temperatures(m2[:1000], yv)
    assert cal["temperatures"][0] == pytest.approx(t1) and cal["temperatures"][1] == pytest.approx(t2)
    assert (t1 > 2).all() and (t2 < 1).all()
    expected_test = (apply_temperatures(m1[1000:], t1) + apply_temperatures(m2[1000:], t2)) / 2
    assert cal["test"][0] == ids[1000:] and cal["test"][1] == pytest.approx(expected_test)

    with pytest.raises(ValueError, match="2 members on validation but 1 on test"):
        ensemble_split(val, yv, test[:1])
    with pytest.raises(ValueError, match="shape"):
        ensemble_split([val[0], (ids[:1000], m2[:1000, :2])], yv, calibrate=False)


# --------------------------------------------------------------------------- cross-fitting and stacking


def _synthetic(n: int = 3000, labels: int = 4, seed: int = 1):
    """Truth drawn from a latent signal; a good member sees it, a noisy one only sees noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(-1.0, 1.5, size=(n, labels))
    y = (rng.random(signal.shape) < sigmoid(signal)).astype(int)
    good = 2.0 * signal + rng.normal(0, 0.8, signal.shape)
    noise = rng.normal(0, 2.0, signal.shape)
    return y, good, noise, rng


def test_cross_fit_gives_a_noise_member_no_weight_and_does_not_rank_it_above_the_good_one():
    from emotion_core.ensemble import cross_fit

    y, good, noise, _ = _synthetic()
    names = [f"l{i}" for i in range(y.shape[1])]
    fit = cross_fit([good, noise], y, names, folds=5, bootstrap_n=300)
    weights = fit.combiner.weights
    assert weights[1] < 0.05 and weights[0] > 0.95 and weights.sum() == pytest.approx(1.0)
    assert fit.best_member == 0 and fit.member_oof_scores[0] > fit.member_oof_scores[1] + 0.1
    # ~ the good member alone: no significant gain out of fold, so the ensemble is not ranked above it
    assert abs(fit.oof_score - fit.member_oof_scores[0]) < 0.02
    assert not fit.eligible and fit.paired["p_value"] >= 0.05
    assert fit.summary()["eligible"] is False and fit.summary()["weights"] == pytest.approx(list(weights))


def test_cross_fit_ranks_an_ensemble_of_two_independent_views_that_beats_both():
    from emotion_core.ensemble import cross_fit

    rng = np.random.default_rng(3)
    n, labels = 4000, 4
    signal = rng.normal(-1.0, 1.5, size=(n, labels))
    y = (rng.random(signal.shape) < sigmoid(3 * signal)).astype(int)
    a, b = signal + rng.normal(0, 1.0, signal.shape), signal + rng.normal(0, 1.0, signal.shape)
    fit = cross_fit([a, b], y, [f"l{i}" for i in range(labels)], folds=5, bootstrap_n=300)
    assert fit.combiner.weights == pytest.approx([0.5, 0.5], abs=0.1)
    assert fit.eligible and fit.paired["delta"] > 0.01 and fit.paired["p_value"] < 0.05


def test_out_of_fold_score_is_not_the_in_sample_score():
    """Thresholds tuned on the rows they score flatter a model: the out-of-fold score is lower on pure noise."""
    from emotion_core.ensemble import cross_fit, fit_combiner
    from emotion_core.metrics import multilabel_metrics

    rng = np.random.default_rng(5)
    y = (rng.random((400, 6)) < 0.1).astype(int)
    members = [rng.normal(0, 1, y.shape), rng.normal(0, 1, y.shape)]
    names = [f"l{i}" for i in range(6)]
    in_sample = multilabel_metrics(y, fit_combiner(members, y).predict(members), names)["macro_f1"]
    fit = cross_fit(members, y, names, folds=4, bootstrap_n=200)
    assert fit.oof_score < in_sample - 0.01 and not fit.eligible


def test_stacking_learns_a_logistic_layer_and_is_cross_fitted():
    from emotion_core.ensemble import Combiner, cross_fit, fit_combiner

    y, good, noise, _ = _synthetic(n=2000)
    names = [f"l{i}" for i in range(y.shape[1])]
    stacked = fit_combiner([good, noise], y, method="stacking")
    assert stacked.coef.shape == (y.shape[1], 2) and stacked.intercept.shape == (y.shape[1],)
    # the noise member's share of the stacked logit is negligible (coefficient x spread of its calibrated logit)
    spread = [np.std(m / t, axis=0) for m, t in zip((good, noise), stacked.temperatures)]
    assert (np.abs(stacked.coef[:, 1]) * spread[1] < 0.05 * np.abs(stacked.coef[:, 0]) * spread[0]).all()
    # the layer is sigmoid(b + sum_m w_m z_m / T_m), per label
    z = [good[:5] / stacked.temperatures[0], noise[:5] / stacked.temperatures[1]]
    by_hand = sigmoid(stacked.intercept + z[0] * stacked.coef[:, 0] + z[1] * stacked.coef[:, 1])
    assert stacked.probabilities([good[:5], noise[:5]]) == pytest.approx(by_hand)
    fit = cross_fit([good, noise], y, names, method="stacking", folds=4, bootstrap_n=200)
    assert fit.combiner.method == "stacking" and 0.3 < fit.oof_score <= 1 and not fit.eligible
    # a label with one class gets a constant stacker, not an error
    y_const = y.copy()
    y_const[:, 0] = 0
    const = fit_combiner([good, noise], y_const, method="stacking")
    assert isinstance(const, Combiner) and (const.coef[0] == 0).all()
    with pytest.raises(ValueError, match="ensemble method"):
        fit_combiner([good], y, method="median")


def _run_data(name: str, ids: list[str], logits: np.ndarray, truth: np.ndarray, names=("a", "b", "c", "d")):
    from emotion_core.run_scores import RunData

    return RunData(
        name,
        {"validation": ids, "test": ids},
        {"validation": logits, "test": logits},
        {"validation": truth, "test": truth},
        np.full(len(names), 0.5),
        list(names),
    )


def _entries(scores: dict[str, float], dataset_key=lambda name: None) -> list:
    """Completed ffnn report entries with these validation macro-F1 scores (per-label thresholds)."""
    from emotion_core.records import ReportEntry

    return [
        ReportEntry(
            name=n,
            status="completed",
            family="ffnn",
            run_id=f"id-{n}",
            validation_macro_f1=s,
            threshold_policy="per_label",
            dataset_key=dataset_key(n),
        )
        for n, s in scores.items()
    ]


def test_members_share_the_full_validation_set_and_an_unproven_ensemble_never_ranks_best(tmp_path):
    from emotion_core.analysis import ensemble_of, rankable, with_paired_tests
    from emotion_core.records import ReportEntry
    from emotion_core.report.summary import ranked_entries

    y, good, noise, rng = _synthetic(n=600)
    ids = [f"r{i}" for i in range(600)]
    other = good + rng.normal(0, 0.3, good.shape)
    arrays = {
        "good": _run_data("good", ids, good, y),
        "noise": _run_data("noise", ids, noise, y),
        "subset": _run_data("subset", ids[:500], other[:500], y[:500]),
        "relabelled": _run_data("relabelled", ids, other, 1 - y),
        "other-labels": _run_data("other-labels", ids, other, y, names=("a", "b", "c", "e")),
    }
    scores = {"good": 0.6, "subset": 0.59, "relabelled": 0.58, "other-labels": 0.57, "noise": 0.2}
    entries = _entries(scores)
    entry, data, combiner = ensemble_of(entries, arrays, tmp_path, top_k=2, folds=4, bootstrap_samples=200)
    assert entry.members == ["good", "noise"]  # the three better runs do not share good's validation set
    excluded = {e["name"]: e["reason"] for e in entry.ensemble["excluded"]}
    assert "100 missing" in excluded["subset"] and "labels differ" in excluded["relabelled"]
    assert "its labels differ" in excluded["other-labels"]
    assert entry.ensemble["eligible"] is False and not rankable(entry)
    assert entry.validation_macro_f1 == entry.ensemble["oof_score"]

    # even with a higher (out-of-fold) validation score than every run, it is not the best, nor listed first
    entry = ReportEntry(**{**entry.__dict__, "validation_macro_f1": 0.99})
    arrays[entry.name] = data
    rows, best = with_paired_tests([*entries, entry], arrays, bootstrap_samples=100)
    assert best == "good" and rows[-1].paired_vs_best["best"] == "good"
    order = [e["name"] for e in ranked_entries([r.to_dict() for r in rows])]
    assert order[0] == "good" and order[-1] == entry.name
    proven = ReportEntry(**{**entry.__dict__, "ensemble": {**entry.ensemble, "eligible": True}})
    assert with_paired_tests([*entries, proven], arrays, bootstrap_samples=100)[1] == entry.name


def test_a_set_over_two_datasets_gets_one_ensemble_per_dataset(tmp_path):
    from emotion_core.comparison import _Models, add_ensembles

    y, good, noise, rng = _synthetic(n=400)
    ids = [f"r{i}" for i in range(400)]
    other = good + rng.normal(0, 0.5, good.shape)
    arrays = {
        "go-a": _run_data("go-a", ids, good, y),
        "go-b": _run_data("go-b", ids, other, y),
        "se-a": _run_data("se-a", ids[:300], other[:300], y[:300], names=("w", "x", "y", "z")),
        "se-b": _run_data("se-b", ids[:300], good[:300], y[:300], names=("w", "x", "y", "z")),
        "lone": _run_data("lone", ids, noise, y),
    }
    keys = {"go": "goemotions-aaaaaaaaaaaa", "se": "semeval2018-ec-bbbbbbbbbbbb", "lo": "tabular-cccccccccccc"}
    # validation scores on different metrics: the highest belongs to SemEval, yet GoEmotions gets its own ensemble
    scores = {"go-a": 0.5, "go-b": 0.45, "se-a": 0.7, "se-b": 0.65, "lone": 0.9}
    rows = _entries(scores, dataset_key=lambda name: keys[name[:2]])
    models = _Models(rows=list(rows), compared=[], arrays=dict(arrays), evaluated=set(scores))
    made = add_ensembles(models, tmp_path, run_id="r-ensemble", top_k=3, bootstrap_samples=100, seed=0, store=None)
    assert {e.name: e.members for e in made} == {
        "ensemble-top2-goemotions": ["go-a", "go-b"],
        "ensemble-top2-semeval2018-ec": ["se-a", "se-b"],
    }
    assert [r.name for r in models.rows[-2:]] == ["ensemble-top2-goemotions", "ensemble-top2-semeval2018-ec"]
    assert made[1].rows == {"validation": 300, "test": 300} and made[1].dataset_key == keys["se"]
    # The report lists each ensemble with its own dataset's runs (its dict carries no dataset key of its own).
    from emotion_core.report.summary import ranked_entries

    order = [e["name"] for e in ranked_entries([r.to_dict() for r in models.rows])]
    assert set(order[:3]) == {"go-a", "go-b", "ensemble-top2-goemotions"}
    assert set(order[3:6]) == {"se-a", "se-b", "ensemble-top2-semeval2018-ec"} and order[6] == "lone"

    one = _Models(rows=rows[:2], compared=[], arrays=dict(arrays), evaluated=set(scores))  # one dataset: as before
    assert [e.name for e in add_ensembles(one, tmp_path, run_id="r", top_k=3, bootstrap_samples=100, seed=0)] == [
        "ensemble-top2"
    ]
