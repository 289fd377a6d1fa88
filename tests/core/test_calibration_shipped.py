"""Issue 16, item 1: calibration travels with the run (``calibration.json``), and predict/submit/export use it.

One tiny real FFNN run for the module; copies of it are damaged or aged (calibration.json removed) and
resealed the way a writer of the store could, then read through ``Run.calibration`` and the real CLI.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import TINY_FFNN, write_tiny_tabular

from emotion_core.errors import StoreError
from emotion_core.metrics import sigmoid
from emotion_core.runs import read_run
from emotion_core.store import LocalStore
from emotion_core.thresholds import apply_thresholds

pytestmark = pytest.mark.slow  # one tiny training run for the module, a few CLI calls

EMOTION = str(Path(sys.executable).with_name("emotion"))
NAMES = ["joy", "anger"]
TINY = TINY_FFNN
TEXTS = ["what a happy day", "so mad at this", "calm fine day", "happy and mad", "nothing at all"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from emotion_core.config import parse_run_config
    from emotion_core.pipeline import train_config

    folder = tmp_path_factory.mktemp("tiny-calibration")
    write_tiny_tabular(folder / "train.csv", rows=120)
    cfg = parse_run_config(
        {
            "name": "tiny-calibration",
            **TINY,
            "data": {"dataset": "tabular", "id_column": "id", "path": str(folder / "train.csv")},
        }
    )
    return Path(train_config(cfg, LocalStore(folder / "store")).removeprefix("file://"))


@pytest.fixture
def copy(tiny_run, tmp_path):
    """A copy of the tiny run to change; ``reseal`` it afterwards."""
    target = tmp_path / "run"
    shutil.copytree(tiny_run, target)
    return target


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.csv"
    path.write_text("id,text\n" + "".join(f"t{i},{t}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    return path


def reseal(run: Path) -> None:
    """Rewrite the manifest's file inventory, as a writer of the store could: only checks past sha256 remain."""
    from emotion_core.runs import file_inventory

    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"] = file_inventory(run)
    (run / "manifest.json").write_text(json.dumps(manifest))


def rewrite_calibration(run: Path, change) -> None:
    payload = json.loads((run / "calibration.json").read_text())
    change(payload)
    (run / "calibration.json").write_text(json.dumps(payload))
    reseal(run)


def emotion(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EMOTION, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


def predicted(path: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pl.read_csv(path)
    assert frame["id"].to_list() == [f"t{i}" for i in range(len(TEXTS))]
    return frame.select(NAMES).to_numpy(), frame.select([f"{n}_prob" for n in NAMES]).to_numpy()


def run_logits_of(run_folder: Path) -> np.ndarray:
    from emotion_core.predict import run_logits

    return run_logits(read_run(run_folder), TEXTS).astype(np.float64)


# -- what training writes -------------------------------------------------------------------------


def test_a_run_ships_its_calibration_fitted_on_validation_and_listed_in_the_manifest(tiny_run):
    from emotion_core.analysis import DataCache, run_data
    from emotion_core.calibration import calibrate_run
    from emotion_core.files import sha256_file

    run = read_run(tiny_run)
    payload = json.loads((tiny_run / "calibration.json").read_text())
    assert run.manifest["files"]["calibration.json"]["sha256"] == sha256_file(tiny_run / "calibration.json")
    assert {k: payload[k] for k in ("version", "method", "fitted_on", "policy")} == {
        "version": 1,
        "method": "temperature",
        "fitted_on": "validation",
        "policy": run.manifest["threshold_policy"],
    }
    assert list(payload["temperatures"]) == NAMES and list(payload["thresholds"]) == NAMES
    assert payload["rows"] == run.manifest["data"]["rows"]["validation"] > 0
    for key in ("ece_before", "ece_after"):
        assert set(payload[key]) == {"flat", "per_label_mean"} and 0 <= payload[key]["flat"] <= 1
    # Fitting on validation is the cheapest NLL check: scaling can only lower the validation NLL.
    assert payload["nll_after"] <= payload["nll_before"] + 1e-9
    # The same numbers as fitting now on the run's stored validation logits and the data's labels.
    arrays = run_data(run, DataCache().for_run(run))
    again = calibrate_run(
        arrays.logits["validation"],
        arrays.truth["validation"],
        None,
        None,
        arrays.names,
        policy=run.manifest["threshold_policy"],
    )
    assert payload["temperatures"] == pytest.approx(again["temperatures"], rel=1e-6)
    assert payload["thresholds"] == again["thresholds"]
    shipped = run.calibration()
    np.testing.assert_allclose(shipped.temperatures, [payload["temperatures"][n] for n in NAMES])
    assert np.abs(shipped.temperatures - 1).max() > 1e-3  # else "calibrated" and raw could not be told apart


# -- predict and submit use it ------------------------------------------------------------------------


def test_predict_is_calibrated_by_default_and_raw_with_no_calibration(tiny_run, texts, tmp_path):
    run = read_run(tiny_run)
    shipped, z = run.calibration(), run_logits_of(tiny_run)
    calibrated = emotion("predict", tiny_run, texts, "--out", tmp_path / "cal.csv")
    raw = emotion("predict", tiny_run, texts, "--out", tmp_path / "raw.csv", "--no-calibration")
    assert calibrated.returncode == 0 and raw.returncode == 0, calibrated.stderr[-2000:] + raw.stderr[-2000:]

    labels, probs = predicted(tmp_path / "cal.csv")
    expected = sigmoid(z / shipped.temperatures[None, :])
    np.testing.assert_allclose(probs, expected, atol=2e-6)  # the CSV rounds to 6 decimals
    np.testing.assert_array_equal(labels, apply_thresholds(expected, shipped.thresholds))

    raw_labels, raw_probs = predicted(tmp_path / "raw.csv")
    np.testing.assert_allclose(raw_probs, sigmoid(z), atol=2e-6)
    np.testing.assert_array_equal(raw_labels, apply_thresholds(sigmoid(z), run.thresholds()))
    assert np.abs(probs - raw_probs).max() > 1e-3


def test_predict_labels_follow_the_calibrated_thresholds(copy, texts, tmp_path):
    """Thresholds 0 and 1 make every label decision visible: joy always, anger never, whatever the texts."""

    def change(payload):
        payload["temperatures"] = {"joy": 0.5, "anger": 4.0}
        payload["thresholds"] = {"joy": 0.0, "anger": 1.0}

    rewrite_calibration(copy, change)
    z = run_logits_of(copy)
    result = emotion("predict", copy, texts, "--out", tmp_path / "p.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    labels, probs = predicted(tmp_path / "p.csv")
    np.testing.assert_allclose(probs, sigmoid(z / np.array([[0.5, 4.0]])), atol=2e-6)
    assert labels[:, 0].tolist() == [1] * len(TEXTS) and labels[:, 1].tolist() == [0] * len(TEXTS)


def test_submit_uses_the_shipped_calibration_without_reading_the_dataset(copy, texts, tmp_path):
    rewrite_calibration(copy, lambda p: p.update(thresholds={"joy": 0.0, "anger": 1.0}))
    # The training data is gone: with --data and a shipped calibration, submit must not need it.
    (Path(read_run(copy).config.data.path)).rename(tmp_path / "moved.csv")
    try:
        result = emotion("submit", copy, "--out", tmp_path / "s.csv", "--data", texts)
        alias = emotion("submit", copy, "--out", tmp_path / "raw.csv", "--data", texts, "--no-calibrated")
    finally:
        (tmp_path / "moved.csv").rename(read_run(copy).config.data.path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "calibrated thresholds (calibration.json)" in result.stdout
    frame = pl.read_csv(tmp_path / "s.csv")
    assert frame["joy"].to_list() == [1] * len(TEXTS) and frame["anger"].to_list() == [0] * len(TEXTS)
    assert alias.returncode == 0 and "run thresholds" in alias.stdout, alias.stderr[-2000:]


# -- damaged or missing ----------------------------------------------------------------------------------

DAMAGES = {
    "zero-temperature": (lambda p: p["temperatures"].update(joy=0.0), "'temperatures' must be finite numbers > 0"),
    "negative-temperature": (lambda p: p["temperatures"].update(anger=-1.5), "'temperatures' must be finite"),
    "nan-temperature": (lambda p: p["temperatures"].update(joy=math.nan), "'temperatures' must be finite"),
    "text-temperature": (lambda p: p["temperatures"].update(joy="1.0"), "non-number for joy"),
    "wrong-labels": (lambda p: p.update(temperatures={"joy": 1.0, "fear": 1.0}), "labels of 'temperatures'"),
    "extra-label": (lambda p: p["thresholds"].update(fear=0.5), "labels of 'thresholds'"),
    "threshold-above-1": (lambda p: p["thresholds"].update(anger=1.5), "'thresholds' must be numbers in [0, 1]"),
    "unknown-version": (lambda p: p.update(version=2), "version 2"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_calibration_is_a_store_error_naming_the_run_and_file(copy, damage):
    change, message = DAMAGES[damage]
    rewrite_calibration(copy, change)
    with pytest.raises(StoreError) as info:
        read_run(copy).calibration()
    assert str(copy) in str(info.value) and "calibration.json" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("command", ["predict", "submit", "predict-no-calibration"])
def test_the_cli_refuses_a_damaged_calibration_and_writes_nothing(copy, texts, tmp_path, command):
    (copy / "calibration.json").write_text('{"version": 1, "method": "temperature", "temperatures": [1, 1]}')
    reseal(copy)
    out = tmp_path / "out.csv"
    if command == "submit":
        result = emotion("submit", copy, "--out", out, "--data", texts)
    else:
        result = emotion("predict", copy, texts, "--out", out, *(["--no-calibration"] if "no-" in command else []))
    if command == "predict-no-calibration":  # opting out does not read the file
        assert result.returncode == 0, result.stderr[-2000:]
        return
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert str(copy) in result.stderr and "calibration.json" in result.stderr and "'temperatures'" in result.stderr
    assert not out.exists()


def test_an_old_run_without_calibration_predicts_uncalibrated_and_says_so(copy, texts, tmp_path, caplog):
    from emotion_core.export import run_calibration
    from emotion_core.predict import predict_file

    shipped = read_run(copy).calibration()
    (copy / "calibration.json").unlink()
    reseal(copy)
    run = read_run(copy)
    assert run.calibration() is None
    with caplog.at_level("WARNING", logger="emotion_core.predict"):
        out = predict_file(copy, texts, tmp_path / "old.csv")
    assert any("no calibration.json" in r.getMessage() and "uncalibrated" in r.getMessage() for r in caplog.records)
    z = run_logits_of(copy)
    labels, probs = predicted(out)
    np.testing.assert_allclose(probs, sigmoid(z), atol=2e-6)
    np.testing.assert_array_equal(labels, apply_thresholds(sigmoid(z), run.thresholds()))
    # Through the CLI too (exit 0); and export falls back to fitting on validation: the same numbers as shipped.
    result = emotion("predict", copy, texts, "--out", tmp_path / "cli.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "has no calibration.json" in result.stderr and "uncalibrated" in result.stderr
    fitted = run_calibration(run)
    assert fitted["temperatures"] == pytest.approx(dict(zip(NAMES, shipped.temperatures)), rel=1e-6)


def test_export_takes_the_shipped_calibration(copy):
    from emotion_core.export import run_calibration

    rewrite_calibration(copy, lambda p: p.update(temperatures={"joy": 0.25, "anger": 3.0}))
    report = run_calibration(read_run(copy))  # the file's numbers, not a new fit
    assert report["temperatures"] == {"joy": 0.25, "anger": 3.0} and report["source"] == "calibration.json"
    assert set(report["ece"]["validation"]) == {"before", "after"}
