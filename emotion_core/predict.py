"""Predict with a published run: a data file in, a CSV of 0/1 labels and probabilities out.

Output columns: the input's id column, then one 0/1 column per label (at the run's tuned
thresholds), then ``<label>_prob`` for each label. Written atomically (temporary file + rename).
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from emotion_core.data import read_prediction_input
from emotion_core.metrics import sigmoid
from emotion_core.models import load_family
from emotion_core.runs import read_run
from emotion_core.store.base import atomic_write_text
from emotion_core.thresholds import apply_thresholds
from emotion_core.training.predict import predict_logits

log = logging.getLogger(__name__)


def predict_file(run_ref: str | Path, data_path: str | Path, out_path: str | Path, *, text_column: str | None = None,
                 id_column: str | None = None, batch_size: int = 128) -> Path:
    """Write predictions of ``run_ref`` for ``data_path`` to ``out_path``; return the output path."""
    run = read_run(run_ref)
    id_name, ids, texts = read_prediction_input(data_path, text_column=text_column, id_column=id_column)
    family = load_family(run.config, run.schema, run.folder / "model")
    probs = sigmoid(predict_logits(family, texts, batch_size))
    predicted = apply_thresholds(probs, run.thresholds())
    names = list(run.schema.names)
    if id_name in names or any(f"{n}_prob" == id_name for n in names):
        id_name = f"{id_name}_input"  # never let an id column shadow a label column
    frame = pl.DataFrame({
        id_name: ids,
        **{name: predicted[:, i].astype("int8") for i, name in enumerate(names)},
        **{f"{name}_prob": probs[:, i].round(6) for i, name in enumerate(names)},
    })
    out = Path(out_path)
    atomic_write_text(out, frame.write_csv())
    log.info("wrote %d predictions of run %s to %s", len(ids), run.run_id, out)
    return out
