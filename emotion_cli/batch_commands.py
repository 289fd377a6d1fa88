"""``emotion predict-batch``: score a file in the artefact store here, or on the fleet (deployment ``predict/batch``).

- Local: ``batch_predict.predict_batch`` in this process (resumable, as the flow), one line per chunk, then the
  output's URI.
- ``--on-fleet``: a flow run of ``predict/batch`` with the same parameters (``batch_parameters``), triggered
  through the local stack's API (``stack.trigger``, not waited for); prints its id and UI URL.

Limits: ``--on-fleet`` checks nothing the worker will read (key, columns, run): the flow run reports those.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emotion_cli.console import out, run_or_exit

DEPLOYMENT = "predict/batch"


def batch_parameters(
    input_key: str,
    run: str,
    store: str | None,
    *,
    output_key: str | None = None,
    chunk_rows: int = 50_000,
    calibration: bool = True,
    text_column: str | None = None,
    id_column: str | None = None,
) -> dict:
    """The parameters of a ``predict/batch`` flow run (those of ``flows.predict_batch.predict_batch``).

    The store is resolved here (default ``$EMOTION_STORE``; a local path made absolute) and checked: a URI with a
    secret never becomes a flow-run parameter, and the worker reads the store this command names.
    """
    from emotion_core.settings import default_store_uri
    from emotion_core.store.uris import check_uri

    store = store or default_store_uri()
    if "://" not in store:
        store = Path(store).expanduser().resolve().as_uri()
    return {
        "input_key": input_key,
        "run": run,
        "store": check_uri(store, "store"),
        "chunk_rows": chunk_rows,
        "output_key": output_key,
        "calibration": calibration,
        "text_column": text_column,
        "id_column": id_column,
    }


def predict_batch(
    input_key: str = typer.Argument(..., help="Key of a CSV/TSV/Parquet file in the store, e.g. data/x.parquet."),
    run: str = typer.Option(
        ..., "--run", help="Run id of the store, run or ensemble folder / URI, or champion:<dataset>."
    ),
    store: str | None = typer.Option(None, help="Artefact store (path, file:// or s3://); default $EMOTION_STORE."),
    output_key: str | None = typer.Option(
        None, "--output", help="Key to write (.csv or .parquet); default <input stem>.predictions.<csv|parquet>."
    ),
    chunk_rows: int = typer.Option(50_000, min=1, help="Rows scored and saved at a time (resumes from the last)."),
    text_column: str | None = typer.Option(None, help="Text column (default 'text')."),
    id_column: str | None = typer.Option(None, help="Id column (default: a column named id, else row numbers)."),
    calibration: bool = typer.Option(
        True, "--calibration/--no-calibration", help="The run's calibration.json (as emotion predict); off: raw."
    ),
    on_fleet: bool = typer.Option(
        False, "--on-fleet", help="Trigger the predict/batch deployment (gpu pool) instead; do not wait for it."
    ),
    port: int = typer.Option(4200, help="--on-fleet: port of the local stack's Prefect server."),
) -> None:
    """Score a file in the store in resumable chunks (as the predict/batch flow), here or --on-fleet."""
    parameters = run_or_exit(
        batch_parameters,
        input_key,
        run,
        store,
        output_key=output_key,
        chunk_rows=chunk_rows,
        calibration=calibration,
        text_column=text_column,
        id_column=id_column,
    )
    if on_fleet:
        _trigger(parameters, port)
        return

    def progress(index: int, rows: int, reused: bool) -> None:
        what = "reused from an earlier attempt" if reused else "scored"
        out.print(f"chunk {index}: {what} ({rows} rows so far)", highlight=False)

    def go():
        from emotion_core.batch_predict import predict_batch as score
        from emotion_core.store import open_store

        local = dict(parameters)  # the flow's parameters, scored in this process
        return score(
            open_store(local.pop("store")), local.pop("input_key"), local.pop("run"), **local, on_chunk=progress
        )

    result = run_or_exit(go)
    out.print(
        f"{result.rows} predictions of run {result.run_id} written: {result.uri} "
        f"({result.computed} chunks scored, {result.reused} reused)",
        highlight=False,
        soft_wrap=True,
    )


def _trigger(parameters: dict, port: int) -> None:
    """A ``predict/batch`` flow run with ``parameters`` on the stack at ``port``; prints its id and UI URL."""
    from emotion_cli.stack import Stack, StackError, trigger

    stack = Stack(port=port)

    def go():
        try:
            return trigger(stack, DEPLOYMENT, parameters, timeout_s=0)
        except Exception as exc:  # no server, no such deployment: one line, the stack's address in it
            detail = str(exc).splitlines()[0] if str(exc) else "no detail"
            raise StackError(
                f"{DEPLOYMENT} on {stack.api_url}: no flow run created ({type(exc).__name__}: {detail}); "
                "is the stack up (emotion stack up) and deployed?"
            ) from None

    flow_run = run_or_exit(go)
    out.print(f"flow run {flow_run.id} of {DEPLOYMENT} scheduled", highlight=False)
    out.print(f"flow run in the UI: {stack.ui_url}/runs/flow-run/{flow_run.id}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``predict-batch`` to ``app``."""
    app.command("predict-batch")(predict_batch)
