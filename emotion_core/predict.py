"""Predict with a published run: a data file in, a CSV of 0/1 labels and probabilities out.

- Columns: the input's id column, one 0/1 column per label, then ``<label>_prob`` per label; written by
  ``outputs.write_output_atomically``.
- Calibrated by default (the run's ``calibration.json``: ``sigmoid(logit / T)`` and its thresholds);
  ``calibration=False``, or a run without one (logged), gives ``sigmoid(logit)`` at ``thresholds.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from emotion_core.data import read_prediction_input
from emotion_core.errors import EmotionError, StoreError
from emotion_core.outputs import check_output_file, write_output_atomically
from emotion_core.runs import read_run

__all__ = ["check_output_file", "predict_file", "run_logits"]

log = logging.getLogger(__name__)


def run_logits(run, texts, batch_size: int = 128):
    """Logits (n_texts, labels) of a run's saved model for ``texts``, in input order."""
    from emotion_core.models import load_family
    from emotion_core.training.batch_logits import predict_logits

    try:
        family = load_family(run.config, run.schema, run.folder / "model")
    except EmotionError:
        raise
    except Exception as exc:  # a missing or damaged file under model/: torch, safetensors and json raise many types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "size mismatch" in str(exc):
            detail = f"its weights do not fit the {len(run.schema)} labels of labels.json"
        raise StoreError(f"run '{run.folder}': cannot load the model in model/ ({detail}); "
                         f"the run folder is incomplete or damaged") from None
    logits = predict_logits(family, list(texts), batch_size)
    if logits.ndim != 2 or logits.shape[1] != len(run.schema):
        raise StoreError(f"run '{run.folder}': the model gives {logits.shape[-1]} scores per text but labels.json "
                         f"lists {len(run.schema)} labels; the run folder is damaged")
    return logits


def predict_file(run_ref: str | Path, data_path: str | Path, out_path: str | Path, *, text_column: str | None = None,
                 id_column: str | None = None, batch_size: int = 128, calibration: bool = True) -> Path:
    """Write predictions of ``run_ref`` for ``data_path`` to ``out_path``; return the output path.

    ``calibration``: use the run's ``calibration.json`` (default); False: raw ``sigmoid`` at ``thresholds.json``'s.
    """
    out = check_output_file(out_path, [data_path])
    run = read_run(run_ref)
    # Both checked before any text is read: a damaged file is refused in a second.
    shipped = run.calibration() if calibration else None
    thresholds = run.thresholds()  # checked even when the calibration's thresholds replace them
    if calibration and shipped is None:
        log.warning("run %s has no calibration.json (trained before calibration shipped with runs): "
                    "probabilities are uncalibrated sigmoid(logits), labels at the run's thresholds", run.run_id)
    id_name, ids, texts = read_prediction_input(data_path, text_column=text_column, id_column=id_column)
    # Heavy imports (torch, scikit-learn) only once the inputs are known to be good.
    from emotion_core.metrics import sigmoid
    from emotion_core.thresholds import apply_thresholds

    logits = run_logits(run, texts, batch_size)
    probs = shipped.probabilities(logits) if shipped is not None else sigmoid(logits)
    if shipped is not None:
        thresholds = shipped.thresholds
    predicted = apply_thresholds(probs, thresholds)
    names = list(run.schema.names)
    if id_name in names or any(f"{n}_prob" == id_name for n in names):
        id_name = f"{id_name}_input"  # never let an id column shadow a label column
    frame = pl.DataFrame({
        id_name: ids,
        **{name: predicted[:, i].astype("int8") for i, name in enumerate(names)},
        **{f"{name}_prob": probs[:, i].round(6) for i, name in enumerate(names)},
    })
    write_output_atomically(out, frame.write_csv(), [data_path, run.folder])
    log.info("wrote %d predictions of run %s to %s (%s)", len(ids), run.run_id, out,
             "calibrated: calibration.json" if shipped is not None else "uncalibrated: sigmoid(logits), thresholds.json")
    return out
