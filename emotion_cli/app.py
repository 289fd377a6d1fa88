"""``emotion``: the command line (``emotion --help``, ``emotion COMMAND --help``).

    emotion train CONFIG [--store URI] [--set KEY=VALUE ...]     one config, through the train-model flow
    emotion train-all SET [--store URI] [--set KEY=VALUE ...]    a config set, through the train-all flow
    emotion predict RUN DATA --out FILE [--no-calibration]       0/1 labels + (calibrated) probabilities as CSV
    emotion submit RUN --out FILE [--data FILE]                  a Kaggle-style SemEval E-c submission
    emotion predict-batch KEY --run REF [--on-fleet]             score a file in the store in resumable chunks
    emotion runs [--store URI] [--dataset KEY]                   the store's runs and each dataset's champion
    emotion publish FOLDER --store URI                           publish a kept local run (after a store outage)
    emotion export RUN DIR [--merge] [--push-to-hub REPO]        HF folder + card (encoder runs); an ensemble: portable
    emotion serve RUN|champion:DATASET [--host H] [--port P]     HTTP JSON API + page (docs/serving.md)
    emotion check-config PATH...                                 validate run configs or config sets
    emotion stack up | down                                      the local Prefect server, pools, workers, deployments
    emotion demo [SET]                                           stack up + train-all/nightly on SET, live progress
    emotion pools                                                create/update the work pools and automations
    emotion data push DATASET [--store URI]                      upload a dataset once (sha256), for remote workers

- A user error (``EmotionError``) prints one message, no traceback, and exits 2; a set with failed runs exits 1.
- Heavy libraries are imported inside the commands, so ``emotion --help`` answers at once.
- Training commands are here; ``ship_commands`` holds runs/publish/export/serve, ``batch_commands`` predict-batch,
  ``stack_commands`` stack/demo/pools.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from emotion_cli import batch_commands, data_commands, ship_commands, stack_commands
from emotion_cli.console import fail, out, run_or_exit

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Train, compare and ship multi-label emotion classifiers."
)


@app.callback()
def _store_credentials() -> None:
    """With ``$EMOTION_AWS_CREDENTIALS_BLOCK`` set, every command (predict, submit, serve, export, runs...) reaches
    ``s3://`` stores with that Prefect block's keys and endpoint, as training does; never printed."""
    import os

    if not os.environ.get("EMOTION_AWS_CREDENTIALS_BLOCK"):
        return
    from emotion_core.errors import StoreError
    from tasks.storage import BLOCK_ENV, block_store_env

    try:
        os.environ.update(block_store_env("s3://"))  # this process only
    except Exception as exc:  # no API, no such block: say which, not how
        name = os.environ[BLOCK_ENV]
        fail(StoreError(f"${BLOCK_ENV}={name}: the AwsCredentials block could not be loaded ({type(exc).__name__})"))


def _console_without_user_tracebacks() -> None:
    """Prefect logs a failed task or flow run with its traceback. For a user error (``EmotionError``: the
    message already names the file, row or field) the console shows the message only; handlers that
    run before the console's (the run's logs sent to the Prefect API) still get the traceback."""
    import logging

    from emotion_core.errors import EmotionError

    class UserErrorWithoutTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], EmotionError):
                record.exc_info, record.exc_text = None, None
            return True

    for handler in logging.getLogger().handlers:  # Prefect's console handler is the root logger's
        if not any(isinstance(f, UserErrorWithoutTraceback) for f in handler.filters):
            handler.addFilter(UserErrorWithoutTraceback())


STORE_HELP = "Artefact store: a path, file:// URI or s3://bucket/prefix; default $EMOTION_STORE or .emotion/store."
ID_COLUMN_HELP = "(default: the format's, else a column named id, else row numbers)."
SET_HELP = "Override a config field, e.g. --set training.epochs=1 --set data.max_train_samples=2000 (repeatable)."


@app.command()
def train(
    config: Path = typer.Argument(..., help="Run config YAML."),
    store: str | None = typer.Option(None, help=STORE_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    run_id: str | None = typer.Option(
        None,
        "--run-id",
        help="Publish under this run id; if the store holds a "
        "training checkpoint of it (an interrupted run), training resumes from "
        "there.",
    ),
) -> None:
    """Train one config and publish its run."""
    from emotion_core.config import parse_overrides

    overrides = run_or_exit(parse_overrides, set_)

    def go():
        from emotion_core.config import load_run_config
        from emotion_core.models import preflight
        from emotion_core.settings import default_store_uri
        from emotion_core.store.uris import check_uri

        check_uri(store or default_store_uri(), "store")  # a URI with a secret never becomes a flow-run parameter
        if run_id is not None:
            _check_new_run_id(run_id, store)
        preflight.check(load_run_config(config, overrides), str(config))  # in a second, before Prefect starts
        from flows.train_model import train_model

        _console_without_user_tracebacks()
        return train_model(config=str(config), store=store, overrides=overrides, run_id=run_id)

    uri = run_or_exit(go)
    out.print(f"run published: {uri}", highlight=False, soft_wrap=True)


def _check_new_run_id(run_id: str, store: str | None) -> None:
    """``--run-id`` must be a plain name not yet published in the store: checked before any work."""
    from emotion_core.errors import StoreError
    from emotion_core.settings import default_store_uri
    from emotion_core.store import RunId, RunIdConflict
    from tasks.storage import open_task_store

    RunId.parse(run_id, "--run-id")
    target = open_task_store(store or default_store_uri())
    try:
        published = target.has_run(run_id)
    except StoreError:  # unreachable now: training goes ahead, publishing checks again (and keeps the run)
        return
    if published:
        raise RunIdConflict(
            f"--run-id {run_id}: run id {run_id} exists in the store {target.uri} already; "
            f"choose another run id (a published run is never replaced)"
        )


@app.command("train-all")
def train_all(
    config_set: Path = typer.Argument(..., help="Config set YAML, e.g. deployments/sets/cpu-demo.yaml."),
    store: str | None = typer.Option(None, help=STORE_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Train every config of a set, then evaluate, calibrate, explain and compare them (HTML report, markdown, CSV)."""
    from emotion_core.config import parse_overrides

    overrides = run_or_exit(parse_overrides, set_)

    def go():
        from emotion_core.settings import default_store_uri
        from emotion_core.store.uris import check_uri
        from flows.train_all import train_all as flow

        check_uri(store or default_store_uri(), "store")  # a URI with a secret never becomes a flow-run parameter
        _console_without_user_tracebacks()
        return flow(config_set=str(config_set), store=store, overrides=overrides)

    summary = run_or_exit(go)
    out.print(summary["table"], highlight=False, soft_wrap=True)
    out.print(
        f"report: {summary['html']}\ncomparison: {summary['markdown']}\n            {summary['csv']}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def predict(
    run: str = typer.Argument(..., help="Run folder, file:// or s3:// URI."),
    data: Path = typer.Argument(..., help="CSV/TSV/Parquet, GoEmotions TSV or SemEval E-c file."),
    out_path: Path = typer.Option(..., "--out", help="CSV to write."),
    text_column: str | None = typer.Option(None, help="Text column (tabular files; default 'text')."),
    id_column: str | None = typer.Option(None, help=f"Id column to copy {ID_COLUMN_HELP}"),
    batch_size: int = typer.Option(128, min=1, help="Texts per forward pass."),
    calibration: bool = typer.Option(
        True,
        "--calibration/--no-calibration",
        help="Use the run's calibration.json (sigmoid(logit/T), calibrated "
        "thresholds); off: raw sigmoid at thresholds.json's.",
    ),
) -> None:
    """Predict labels and probabilities for a data file (calibrated by the run's calibration.json by default)."""
    from emotion_core.predict import predict_file

    path = run_or_exit(
        predict_file,
        run,
        data,
        out_path,
        text_column=text_column,
        id_column=id_column,
        batch_size=batch_size,
        calibration=calibration,
    )
    out.print(f"predictions written: {path}", highlight=False, soft_wrap=True)


@app.command()
def submit(
    run: str = typer.Argument(
        ...,
        help="Run folder, file:// or s3:// URI of the chosen run or ensemble package (or an exported ensemble "
        "folder), or champion:<dataset> (the registry's champion, e.g. champion:semeval2018-ec).",
    ),
    store: str | None = typer.Option(None, help="Store of champion:<dataset> (default $EMOTION_STORE)."),
    out_path: Path = typer.Option(..., "--out", help="Submission CSV to write (ID + one 0/1 column per label)."),
    data: Path | None = typer.Option(
        None, help="File to predict; default: the dataset's unlabelled test split (SemEval E-c)."
    ),
    calibrated: bool = typer.Option(
        True,
        "--calibration/--no-calibration",
        "--calibrated/--no-calibrated",
        help="The run's calibration.json (temperatures + re-tuned thresholds; "
        "fitted on validation now for older runs); off: thresholds.json.",
    ),
    text_column: str | None = typer.Option(None, help="Text column of --data (tabular files; default 'text')."),
    id_column: str | None = typer.Option(None, help=f"Id column of --data {ID_COLUMN_HELP}"),
    batch_size: int = typer.Option(128, min=1, help="Texts per forward pass."),
) -> None:
    """Write a Kaggle-style submission (SemEval E-c: ID,anger,...,trust) from a run, at its calibrated thresholds
    (an ensemble package: at its own thresholds; --no-calibration does not apply to it)."""
    from emotion_core.submission import submit_run

    def go():
        try:
            return submit_run(
                run,
                out_path,
                data_path=data,
                calibrated=calibrated,
                batch_size=batch_size,
                text_column=text_column,
                id_column=id_column,
                store=store,
            )
        except ValueError as exc:  # rows that cannot be written (duplicate ids, a label named like the id column)
            from emotion_core.errors import DataError

            raise DataError(str(exc)) from None

    result = run_or_exit(go)
    kind = {
        "shipped": "calibrated thresholds (calibration.json)",
        "fitted": "calibrated thresholds (fitted now: the run has no calibration.json)",
        "ensemble": "the ensemble's thresholds (ensemble.json)",
    }
    thresholds = kind.get(result.get("calibration"), "run thresholds")
    out.print(
        f"submission written: {result['path']} ({result['rows']} rows, {thresholds}, "
        f"{result['rows_without_label']} rows with no label)",
        highlight=False,
        soft_wrap=True,
    )


ship_commands.register(app)  # runs, publish, export, serve
batch_commands.register(app)  # predict-batch


@app.command("check-config")
def check_config(paths: list[Path] = typer.Argument(..., help="Run configs or config sets.")) -> None:
    """Validate configs without training; prints each resolved config name, family and model."""
    import yaml

    from emotion_core.config import load_config_set, load_run_config, load_yaml
    from emotion_core.errors import EmotionError

    for path in paths:
        try:
            try:  # only to tell a set from a run config: the loaders below report what is wrong, naming the line
                raw = load_yaml(path.read_text(encoding="utf-8")) if path.is_file() else None
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                raw = None
            if isinstance(raw, dict) and "configs" in raw:
                spec, entries = load_config_set(path)
                out.print(f"{path}: set '{spec.name}', {len(entries)} configs", highlight=False)
                configs = [e.config for e in entries]
            else:
                configs = [load_run_config(path)]
        except (EmotionError, yaml.YAMLError, OSError) as exc:
            if not isinstance(exc, EmotionError):
                from emotion_core.errors import ConfigError

                exc = ConfigError(f"{path}: {exc}")
            fail(exc)
        for cfg in configs:
            try:
                from emotion_core.models import preflight

                preflight.check(cfg, str(path))
            except EmotionError as exc:
                fail(exc)
            out.print(
                f"  ok  {cfg.name}: {cfg.model.family} {getattr(cfg.model, 'model', '')} on {cfg.data.dataset}",
                highlight=False,
            )


stack_commands.register(app)  # demo, pools, stack up | down
data_commands.register(app)  # data push


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
