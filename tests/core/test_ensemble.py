"""Tests for emotion_core.ensemble: member choice, probability averaging, the ensemble split."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_core.calibration import apply_temperatures, fit_temperatures
from emotion_core.ensemble import ensemble_split, mean_probabilities, top_k
from emotion_core.metrics import sigmoid
from emotion_core.thresholds import tune_thresholds


def _manifest(name: str, macro_f1: float, run_id: str) -> dict:
    return {"config_name": name, "run_id": run_id, "threshold_policy": "per_label",
            "summary": {"validation": {"per_label": {"macro_f1": macro_f1}, "fixed": {"macro_f1": 0.99}}}}


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
