"""Task: score a file in the store with a run or a champion (``emotion_core.batch_predict.predict_batch``).

Not retried as a task: a rerun of the flow resumes from the parts already published, so nothing is lost.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.storage import open_task_store


@task(name="predict-batch")
def predict_batch_task(
    store: str,
    input_key: str,
    run: str,
    output_key: str | None,
    chunk_rows: int,
    calibration: bool,
    text_column: str | None,
    id_column: str | None,
) -> dict:
    """Run ``predict_batch`` on the task's store (its credentials block, if any); returns what was written."""
    from dataclasses import asdict

    from emotion_core.batch_predict import predict_batch

    result = predict_batch(
        open_task_store(store),
        input_key,
        run,
        output_key=output_key,
        chunk_rows=chunk_rows,
        calibration=calibration,
        text_column=text_column,
        id_column=id_column,
    )
    get_run_logger().info(
        "%d predictions of run %s at %s (%d chunks scored, %d reused from an earlier attempt)",
        result.rows,
        result.run_id,
        result.uri,
        result.computed,
        result.reused,
    )
    return asdict(result)
