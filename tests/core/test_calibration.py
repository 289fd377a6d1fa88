"""Tests for emotion_core.calibration: temperature recovery, ECE/NLL improvement, the PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emotion_core.calibration import (
    apply_temperatures,
    bce_from_logits,
    calibrate_run,
    fit_temperatures,
)
from emotion_core.evaluation import ece
from emotion_core.metrics import multilabel_metrics, sigmoid
from emotion_core.report.plots import reliability_diagram
from emotion_core.thresholds import apply_thresholds, tune_thresholds

NAMES = ["over", "under", "right", "absent"]


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits with known miscalibration: true log-odds s, truth ~ Bernoulli(sigmoid(s)).

    over: logits = 3 s (T should be 3); under: logits = s / 2 (T 0.5); right: logits = s (T 1);
    absent: never positive (T kept at 1).
    """
    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, 1.5, size=(n, 3)) + np.array([-1.0, 0.0, 0.5])
    y = (rng.random(s.shape) < sigmoid(s)).astype(int)
    logits = np.column_stack([3.0 * s[:, 0], 0.5 * s[:, 1], s[:, 2], rng.normal(-4.0, 1.0, n)])
    return logits, np.column_stack([y, np.zeros(n, dtype=int)])


def test_fit_temperatures_recovers_known_temperatures():
    z, y = _split(20000, seed=0)
    t = fit_temperatures(z, y)
    assert t.shape == (4,) and t.dtype == np.float64
    assert t[0] == pytest.approx(3.0, rel=0.05)
    assert t[1] == pytest.approx(0.5, rel=0.05)
    assert t[2] == pytest.approx(1.0, rel=0.05)
    assert t[3] == 1.0  # no positive in validation: not fitted


def test_fitted_temperature_is_the_nll_minimum():
    z, y = _split(3000, seed=1)
    t = fit_temperatures(z, y)[0]
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nll = [bce_from_logits(z[:, :1] / g, y[:, :1]) for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=0.01)


def test_label_with_only_positives_keeps_t1():
    z, y = _split(500, seed=2)
    y[:, 0] = 1
    assert fit_temperatures(z, y)[0] == 1.0


def test_apply_temperatures():
    z = np.array([[3.0, -2.0], [0.0, 4.0]])
    out = apply_temperatures(z, np.array([3.0, 0.5]))
    assert out == pytest.approx(sigmoid(np.array([[1.0, -4.0], [0.0, 8.0]])))
    with pytest.raises(ValueError, match="shape"):
        apply_temperatures(z, np.array([1.0]))
    with pytest.raises(ValueError, match="> 0"):
        apply_temperatures(z, np.array([1.0, 0.0]))


def test_calibrate_run_improves_calibration_and_reports_everything():
    zv, yv = _split(6000, seed=3)
    zt, yt = _split(6000, seed=4)
    out = calibrate_run(zv, yv, zt, yt, NAMES, policy="per_label")
    assert set(out) == {
        "method",
        "policy",
        "temperatures",
        "labels_kept_at_1",
        "thresholds",
        "ece",
        "nll",
        "reliability",
        "test_metrics",
    }
    assert out["temperatures"]["over"] == pytest.approx(3.0, rel=0.1)
    assert out["labels_kept_at_1"] == ["absent"] and out["temperatures"]["absent"] == 1.0
    for split in ("validation", "test"):
        for kind in ("flat", "per_label_mean"):
            assert out["ece"][split]["after"][kind] < out["ece"][split]["before"][kind]
        assert out["nll"][split]["after"] < out["nll"][split]["before"]
        assert len(out["reliability"][split]["before"]) == 15
    assert out["ece"]["test"]["before"]["flat"] == pytest.approx(ece(yt, sigmoid(zt))["flat"])
    assert out["nll"]["validation"]["before"] == pytest.approx(bce_from_logits(zv, yv))

    temps = np.array([out["temperatures"][nm] for nm in NAMES])
    expected_t = tune_thresholds(yv, apply_temperatures(zv, temps), "per_label")
    assert [out["thresholds"][nm] for nm in NAMES] == expected_t.tolist()
    expected = multilabel_metrics(yt, apply_thresholds(apply_temperatures(zt, temps), expected_t), NAMES)
    assert out["test_metrics"] == expected
    assert json.loads(json.dumps(out)) == out


def test_calibrate_run_without_test():
    zv, yv = _split(500, seed=5)
    out = calibrate_run(zv, yv, None, None, NAMES, policy="global")
    assert out["test_metrics"] is None and out["ece"]["test"] is None and out["nll"]["test"] is None
    assert len(set(out["thresholds"].values())) == 1
    with pytest.raises(ValueError, match="both"):
        calibrate_run(zv, yv, zv, None, NAMES)


def test_reliability_diagram_writes_a_png_atomically(tmp_path):
    zv, yv = _split(2000, seed=6)
    out = calibrate_run(zv, yv, zv, yv, NAMES)
    path = tmp_path / "plots" / "reliability.png"
    written = reliability_diagram(
        out["reliability"]["test"]["before"],
        out["reliability"]["test"]["after"],
        path,
        "test: before vs after temperature scaling",
    )
    assert written == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000  # a drawn figure, not an empty canvas
    assert [p.name for p in path.parent.iterdir()] == ["reliability.png"]  # no temporary file left
