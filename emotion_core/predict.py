"""Predict with a published run: a data file in, a CSV of 0/1 labels and probabilities out.

- Columns: the input's id column, one 0/1 column per label, then ``<label>_prob`` per label; written by
  ``outputs.write_output_atomically``.
- Calibrated by default (the run's ``calibration.json``: ``sigmoid(logit / T)`` and its thresholds);
  ``calibration=False``, or a run without one (logged), gives ``sigmoid(logit)`` at ``thresholds.json``.
- ``load_predictor``: a run's ``RunPredictor``, or an ``ensemble_package.EnsemblePredictor`` when the reference
  names a published ensemble (members loaded from the same store) or an exported one (``ensemble_export``):
  both have ``run``, ``thresholds``, ``predict``, ``load``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from emotion_core.data import read_prediction_input
from emotion_core.outputs import check_output_file, write_output_atomically
from emotion_core.run_model import load_run_family, run_logits
from emotion_core.runs import read_run

__all__ = [
    "RunPredictor",
    "check_output_file",
    "load_predictor",
    "load_run_family",
    "predict_file",
    "prediction_frame",
    "run_logits",
]

log = logging.getLogger(__name__)


class RunPredictor:
    """Texts -> (probabilities, 0/1 labels) of a run: what ``predict_file`` writes and ``emotion serve`` answers.

    The decision rule (``calibration.json`` or ``thresholds.json``) is read and checked at once; the model
    is loaded by ``load()`` or the first ``predict``, then kept. ``calibrated`` says which rule is used.
    """

    def __init__(self, run, *, calibration: bool = True, batch_size: int = 128) -> None:
        self.run, self.batch_size = run, batch_size
        # Both checked before any text is read: a damaged file is refused in a second.
        self.shipped = run.calibration() if calibration else None
        self.thresholds = run.thresholds()  # checked even when the calibration's thresholds replace them
        self.at_least_one = run.at_least_one()  # the same rule with either set of thresholds
        if self.shipped is not None:
            self.thresholds = self.shipped.thresholds
        elif calibration:
            log.warning(
                "run %s has no calibration.json (trained before calibration shipped with runs): "
                "probabilities are uncalibrated sigmoid(logits), labels at the run's thresholds",
                run.run_id,
            )
        self.family = None

    @property
    def calibrated(self) -> bool:
        return self.shipped is not None

    def load(self) -> RunPredictor:
        if self.family is None:
            self.family = load_run_family(self.run)
        return self

    def predict(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, predicted)``: (n, labels) float probabilities and 0/1 int labels, in input order."""
        from emotion_core.metrics import sigmoid
        from emotion_core.thresholds import apply_thresholds

        logits = run_logits(self.run, texts, self.batch_size, family=self.load().family)
        probs = self.shipped.probabilities(logits) if self.shipped is not None else sigmoid(logits)
        return probs, apply_thresholds(probs, self.thresholds, self.at_least_one)


def prediction_frame(
    names: list[str], id_name: str, ids: list[str], probs: np.ndarray, predicted: np.ndarray
) -> pl.DataFrame:
    """The output table: the id column, one 0/1 (int8) column per label, ``<label>_prob`` (6 decimals) per label."""
    if id_name in names or any(f"{n}_prob" == id_name for n in names):
        id_name = f"{id_name}_input"  # never let an id column shadow a label column
    return pl.DataFrame(
        {
            id_name: pl.Series(ids, dtype=pl.Utf8),
            **{name: predicted[:, i].astype("int8") for i, name in enumerate(names)},
            **{f"{name}_prob": probs[:, i].round(6) for i, name in enumerate(names)},
        }
    )


def load_predictor(ref, *, calibration: bool = True, batch_size: int = 128, store=None):
    """The predictor of the run or ensemble package ``ref`` (folder, ``file://``/``s3://`` URI, or an exported
    ensemble folder); an ensemble's members come from ``store``, else from the store holding it (an export: from
    the export only). ``StoreError`` if anything is missing or damaged."""
    from emotion_core.ensemble_export import exported_package
    from emotion_core.ensemble_package import is_ensemble, load_ensemble_predictor
    from emotion_core.store import resolve_run_folder

    exported = exported_package(ref)
    if exported is not None:  # self-contained: never a member from anywhere else
        folder, own = exported
        return load_ensemble_predictor(folder, folder, calibration=calibration, batch_size=batch_size, store=own)
    folder = resolve_run_folder(ref)  # verified against its manifest
    if is_ensemble(folder):
        return load_ensemble_predictor(ref, folder, calibration=calibration, batch_size=batch_size, store=store)
    return RunPredictor(read_run(folder), calibration=calibration, batch_size=batch_size)


def predict_file(
    run_ref: str | Path,
    data_path: str | Path,
    out_path: str | Path,
    *,
    text_column: str | None = None,
    id_column: str | None = None,
    batch_size: int = 128,
    calibration: bool = True,
) -> Path:
    """Write predictions of ``run_ref`` for ``data_path`` to ``out_path``; return the output path.

    ``calibration``: use the run's ``calibration.json`` (default); False: raw ``sigmoid`` at ``thresholds.json``'s.
    ``run_ref`` may name a published ensemble (``load_predictor``).
    """
    out = check_output_file(out_path, [data_path])
    predictor = load_predictor(run_ref, calibration=calibration, batch_size=batch_size)
    run = predictor.run
    id_name, ids, texts = read_prediction_input(data_path, text_column=text_column, id_column=id_column)
    probs, predicted = predictor.predict(texts)  # heavy imports (torch) only once the inputs are known to be good
    frame = prediction_frame(list(run.schema.names), id_name, ids, probs, predicted)
    write_output_atomically(out, frame.write_csv(), [data_path, run.folder])
    rule = "calibrated: calibration.json" if predictor.calibrated else "uncalibrated: sigmoid(logits), thresholds.json"
    log.info("wrote %d predictions of run %s to %s (%s)", len(ids), run.run_id, out, rule)
    return out
