"""Flow ``predict``: score a CSV/TSV/Parquet file in the artefact store with a run or a dataset's champion.

Deployed as ``predict/batch`` on the ``gpu`` work pool (prefect.yaml). The predictions are written next to
the input (``data/x.parquet`` -> ``data/x.predictions.parquet``) in one step; a rerun after a crash resumes
from the chunks already done. What it does and its limits: ``emotion_core/batch_predict.py``.
"""

from __future__ import annotations

from prefect import flow

from emotion_core.settings import default_store_uri
from emotion_core.store.uris import check_uri
from tasks.predict import predict_batch_task


@flow(name="predict", flow_run_name="predict-{input_key}")
def predict_batch(
    input_key: str,
    run: str,
    store: str | None = None,
    chunk_rows: int = 50_000,
    output_key: str | None = None,
    calibration: bool = True,
    text_column: str | None = None,
    id_column: str | None = None,
) -> dict:
    """Score ``input_key`` (a key in ``store``) with ``run`` (run id, run URI or ``champion:<dataset>``).

    ``chunk_rows``: rows scored and saved at a time (memory and redo-after-crash both scale with it);
    ``output_key``: default ``<input stem>.predictions.csv|parquet`` next to the input. Returns the output
    key and URI, the run id, rows, and the chunks scored and reused.
    """
    store = check_uri(store or default_store_uri(), "store")
    return predict_batch_task(store, input_key, run, output_key, chunk_rows, calibration, text_column, id_column)
