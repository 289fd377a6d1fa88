"""``emotion``: the command line (``emotion --help``, ``emotion COMMAND --help``).

    emotion train CONFIG [--store URI] [--set KEY=VALUE ...]     one config, through the train-model flow
    emotion train-all SET [--store URI] [--set KEY=VALUE ...]    a config set, through the train-all flow
    emotion predict RUN DATA --out FILE [--no-calibration]       0/1 labels + (calibrated) probabilities as CSV
    emotion submit RUN --out FILE [--data FILE]                  a Kaggle-style SemEval E-c submission
    emotion runs [--store URI] [--dataset KEY]                   the store's runs and each dataset's champion
    emotion publish FOLDER --store URI                           publish a kept local run (after a store outage)
    emotion export RUN DIR [--merge] [--push-to-hub REPO]        a Hugging Face folder + model card (encoder runs)
    emotion serve RUN|champion:DATASET [--host H] [--port P]     HTTP JSON API + page (docs/serving.md)
    emotion check-config PATH...                                 validate run configs or config sets
    emotion stack up | down                                      the local Prefect server, pools, workers, deployments
    emotion demo [SET]                                           stack up + train-all/nightly on SET, live progress
    emotion pools                                                create/update the work pools and automations

- A user error (``EmotionError``) prints one message, no traceback, and exits 2; a set with failed runs exits 1.
- Heavy libraries are imported inside the commands, so ``emotion --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, compare and ship multi-label emotion classifiers.")
err = Console(stderr=True)
out = Console()


def _fail(exc: Exception) -> None:
    from emotion_core.errors import RunFailed

    from rich.markup import escape

    # Escaped: messages hold brackets (``s3://<bucket>[/<prefix>]``, lists) that are not markup.
    err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1 if isinstance(exc, RunFailed) else 2)


def _run(fn, *args, **kwargs):
    import flows  # noqa: F401  (sets Prefect's environment defaults first)
    from emotion_core.errors import EmotionError

    try:
        return fn(*args, **kwargs)
    except EmotionError as exc:
        _fail(exc)


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


SET_HELP = "Override a config field, e.g. --set training.epochs=1 --set data.max_train_samples=2000 (repeatable)."


@app.command()
def train(config: Path = typer.Argument(..., help="Run config YAML."),
          store: Optional[str] = typer.Option(None, help="Artefact store: a path, file:// URI or s3://bucket/prefix; default $EMOTION_STORE or .emotion/store."),
          set_: list[str] = typer.Option([], "--set", help=SET_HELP),
          run_id: Optional[str] = typer.Option(None, "--run-id", help="Publish under this run id; if the store holds a training checkpoint of it (an interrupted run), training resumes from there.")) -> None:
    """Train one config and publish its run."""
    from emotion_core.config import parse_overrides

    overrides = _run(parse_overrides, set_)

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

    uri = _run(go)
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
        raise RunIdConflict(f"--run-id {run_id}: run id {run_id} exists in the store {target.uri} already; "
                            f"choose another run id (a published run is never replaced)")


@app.command("train-all")
def train_all(config_set: Path = typer.Argument(..., help="Config set YAML, e.g. deployments/sets/cpu-demo.yaml."),
              store: Optional[str] = typer.Option(None, help="Artefact store: a path, file:// URI or s3://bucket/prefix; default $EMOTION_STORE or .emotion/store."),
              set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Train every config of a set, then evaluate, calibrate, explain and compare them (HTML report, markdown, CSV)."""
    from emotion_core.config import parse_overrides

    overrides = _run(parse_overrides, set_)

    def go():
        from emotion_core.settings import default_store_uri
        from emotion_core.store.uris import check_uri
        from flows.train_all import train_all as flow

        check_uri(store or default_store_uri(), "store")  # a URI with a secret never becomes a flow-run parameter
        _console_without_user_tracebacks()
        return flow(config_set=str(config_set), store=store, overrides=overrides)

    summary = _run(go)
    out.print(summary["table"], highlight=False, soft_wrap=True)
    out.print(f"report: {summary['html']}\ncomparison: {summary['markdown']}\n            {summary['csv']}", highlight=False,
              soft_wrap=True)


@app.command()
def predict(run: str = typer.Argument(..., help="Run folder, file:// or s3:// URI."),
            data: Path = typer.Argument(..., help="CSV/TSV/Parquet, GoEmotions TSV or SemEval E-c file."),
            out_path: Path = typer.Option(..., "--out", help="CSV to write."),
            text_column: Optional[str] = typer.Option(None, help="Text column (tabular files; default 'text')."),
            id_column: Optional[str] = typer.Option(None, help="Id column to copy (default: the format's, else a column named id, else row numbers)."),
            batch_size: int = typer.Option(128, min=1, help="Texts per forward pass."),
            calibration: bool = typer.Option(True, "--calibration/--no-calibration",
                                             help="Use the run's calibration.json (sigmoid(logit/T), calibrated "
                                                  "thresholds); off: raw sigmoid at thresholds.json's.")) -> None:
    """Predict labels and probabilities for a data file (calibrated by the run's calibration.json by default)."""
    from emotion_core.predict import predict_file

    path = _run(predict_file, run, data, out_path, text_column=text_column, id_column=id_column, batch_size=batch_size,
                calibration=calibration)
    out.print(f"predictions written: {path}", highlight=False, soft_wrap=True)


@app.command()
def submit(run: str = typer.Argument(..., help="Run folder, file:// or s3:// URI of the chosen run, or "
                                               "champion:<dataset> (the registry's champion, e.g. "
                                               "champion:semeval2018-ec)."),
           store: str | None = typer.Option(None, help="Store of champion:<dataset> (default $EMOTION_STORE)."),
           out_path: Path = typer.Option(..., "--out", help="Submission CSV to write (ID + one 0/1 column per label)."),
           data: Optional[Path] = typer.Option(None, help="File to predict; default: the dataset's unlabelled test split (SemEval E-c)."),
           calibrated: bool = typer.Option(True, "--calibration/--no-calibration", "--calibrated/--no-calibrated",
                                           help="The run's calibration.json (temperatures + re-tuned thresholds; "
                                                "fitted on validation now for older runs); off: thresholds.json."),
           text_column: Optional[str] = typer.Option(None, help="Text column of --data (tabular files; default 'text')."),
           id_column: Optional[str] = typer.Option(None, help="Id column of --data (default: the format's, else a column named id, else row numbers)."),
           batch_size: int = typer.Option(128, min=1, help="Texts per forward pass.")) -> None:
    """Write a Kaggle-style submission (SemEval E-c: ID,anger,...,trust) from a run, at its calibrated thresholds."""
    from emotion_core.submission import submit_run

    def go():
        try:
            return submit_run(run, out_path, data_path=data, calibrated=calibrated, batch_size=batch_size,
                              text_column=text_column, id_column=id_column, store=store)
        except ValueError as exc:  # rows that cannot be written (duplicate ids, a label named like the id column)
            from emotion_core.errors import DataError

            raise DataError(str(exc)) from None

    result = _run(go)
    kind = {"shipped": "calibrated thresholds (calibration.json)",
            "fitted": "calibrated thresholds (fitted now: the run has no calibration.json)"}
    thresholds = kind.get(result.get("calibration"), "run thresholds")
    out.print(f"submission written: {result['path']} ({result['rows']} rows, {thresholds}, "
              f"{result['rows_without_label']} rows with no label)", highlight=False, soft_wrap=True)


@app.command()
def runs(store: Optional[str] = typer.Option(None, help="Artefact store (path, file:// or s3://); default $EMOTION_STORE."),
         dataset: Optional[str] = typer.Option(None, help="Only runs of this dataset key (e.g. goemotions-...).")) -> None:
    """List the store's runs, newest first, and the champion of each dataset (marked *)."""
    from rich.table import Table

    from emotion_core import catalog
    from emotion_core.settings import default_store_uri
    from emotion_core.store import open_store

    def go():
        opened = open_store(store or default_store_uri())
        return opened.uri, catalog.list_runs(opened), catalog.champions(opened)

    uri, rows, champions = _run(go)
    rows = [row for row in rows if dataset is None or row.dataset == dataset]
    table = Table(title=f"runs in {uri}", title_justify="left")
    for column in ("", "run id", "config", "family", "dataset", "val macro-F1", "test macro-F1", "finished", "problem"):
        table.add_column(column)
    score = lambda value: "" if value is None else f"{value:.4f}"
    for row in rows:
        table.add_row("*" if row.champion else "", row.run_id, row.config, row.family, row.dataset,
                      score(row.validation_macro_f1), score(row.test_macro_f1), row.finished_at[:19], row.problem)
    out.print(table)
    for key, doc in sorted(champions.items()):
        if dataset is None or key == dataset:
            out.print(f"champion of {key}: {doc['run_id']} (validation macro-F1 {doc['validation_macro_f1']:.4f})",
                      highlight=False, soft_wrap=True)
    if not rows:
        out.print("no runs", highlight=False)


@app.command()
def publish(folder: Path = typer.Argument(..., help="A complete run folder (with manifest.json), e.g. one kept after a failed publish."),
            store: str = typer.Option(..., help="Store to publish into (path, file:// or s3://).")) -> None:
    """Publish a complete local run folder into a store (idempotent; the folder is left as it is)."""
    import json

    from emotion_core.errors import StoreError
    from emotion_core.store import RunId, open_store, resolve_run_folder

    def go():
        run_folder = resolve_run_folder(folder)  # the manifest, its run_id and every file verified
        try:
            run_id = json.loads((run_folder / "manifest.json").read_text(encoding="utf-8")).get("run_id")
        except (ValueError, AttributeError) as exc:  # not JSON, or JSON but not an object
            raise StoreError(f"{run_folder / 'manifest.json'}: not a JSON object ({exc}); the run folder is damaged") from None
        run_id = RunId.parse(run_id, f"{run_folder / 'manifest.json'}: run_id")  # untrusted: it names a store folder
        target = open_store(store)
        uri = target.publish(run_folder, run_id)
        try:
            target.delete_checkpoints(run_id)  # published: its training checkpoints are not needed any more
        except StoreError:
            pass
        return uri

    out.print(f"run published: {_run(go)}", highlight=False, soft_wrap=True)


@app.command()
def export(run: str = typer.Argument(..., help="Run folder or file:// / s3:// URI (an encoder run, pooling: cls)."),
           dest: Path = typer.Argument(..., help="New folder to write (must not exist, or be empty)."),
           merge: bool = typer.Option(False, "--merge", help="Adapter runs: write the merged plain model."),
           calibration: bool = typer.Option(True, help="Store the run's calibration.json temperatures + thresholds "
                                                       "(fitted on validation now for older runs)."),
           base_model: Optional[str] = typer.Option(None, help="Adapter runs: base model id/path the adapter names."),
           push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub",
                                                     help="Also upload to this hub repo (token: $HF_TOKEN).")) -> None:
    """Export a run as a Hugging Face folder (transformers / peft, no remote code) with a model card."""
    from emotion_core import export as ex
    from emotion_core.runs import read_run

    def go():
        ex.check_destination(dest)  # before any model is loaded
        loaded = read_run(run)
        ex.check_exportable(loaded, merge)  # before the data is read for calibration
        fitted = ex.run_calibration(loaded) if calibration else None
        result = ex.export_run(run, dest, merge=merge, base_model=base_model, calibration=fitted)
        if push_to_hub:
            result["pushed"] = ex.push_to_hub(dest, push_to_hub)
        return result

    result = _run(go)
    out.print(f"exported {result['run_id']} ({result['kind']}, {result['model_type']}) to {result['folder']}; "
              f"max |logit diff| to the run: {result['max_abs_logit_diff']:.2e}", highlight=False, soft_wrap=True)
    if result.get("pushed"):
        out.print(f"pushed: {result['pushed']}", highlight=False, soft_wrap=True)


@app.command()
def serve(source: str = typer.Argument(..., help="Run folder, file:// or s3:// URI, or champion:<dataset> (the "
                                                  "registry's champion, reloaded when it changes)."),
          store: str | None = typer.Option(None, help="Store of champion:<dataset> (default $EMOTION_STORE)."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on; not loopback: anyone who reaches it "
                                                     "can use the API (no authentication)."),
          port: int = typer.Option(8000, min=0, max=65535, help="Port (0: any free one)."),
          max_texts: int = typer.Option(256, min=1, help="Texts per /predict request."),
          max_chars: int = typer.Option(10_000, min=1, help="Characters per text."),
          reload_every: float = typer.Option(30.0, min=0.1, help="champion:<dataset>: seconds between registry reads."),
          calibration: bool = typer.Option(True, "--calibration/--no-calibration",
                                           help="The run's calibration.json (as emotion predict); "
                                                "off: raw sigmoid.")) -> None:
    """Serve a run or a dataset's champion: POST /predict, POST /explain, GET /health, /model and a page at /."""
    import ipaddress

    from emotion_core.serving.models import CHAMPION_PREFIX, ChampionSource, load_model
    from emotion_core.serving.settings import ServeSettings

    settings = ServeSettings(max_texts=max_texts, max_chars=max_chars, reload_every_s=reload_every,
                             calibration=calibration)

    def load():
        if not source.startswith(CHAMPION_PREFIX):
            return load_model(source, calibration=calibration, batch_size=settings.batch_size), None
        from emotion_core.settings import default_store_uri

        champion = ChampionSource(store or default_store_uri(), source.removeprefix(CHAMPION_PREFIX))
        return champion.load(champion.current(), calibration=calibration, batch_size=settings.batch_size), champion

    model, champion = _run(load)  # a bad run or registry: one clear line, before anything listens
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        err.print(f"warning: listening on {host}, not loopback: the API has no authentication", highlight=False)
    import uvicorn

    from emotion_core.serving.app import create_app

    out.print(f"serving run {model.run_id} ({'calibrated' if model.predictor.calibrated else 'uncalibrated'}) "
              f"on http://{host}:{port}/", highlight=False, soft_wrap=True)
    uvicorn.run(create_app(model, settings, champion), host=host, port=port, log_level="info")


@app.command("check-config")
def check_config(paths: list[Path] = typer.Argument(..., help="Run configs or config sets.")) -> None:
    """Validate configs without training; prints each resolved config name, family and model."""
    from emotion_core.config import load_config_set, load_run_config, load_yaml
    from emotion_core.errors import EmotionError

    import yaml

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
            _fail(exc)
        for cfg in configs:
            try:
                from emotion_core.models import preflight

                preflight.check(cfg, str(path))
            except EmotionError as exc:
                _fail(exc)
            out.print(f"  ok  {cfg.name}: {cfg.model.family} {getattr(cfg.model, 'model', '')} on {cfg.data.dataset}", highlight=False)


stack_app = typer.Typer(no_args_is_help=True, help="The embedded default: local Prefect server, pools, workers, deployments.")
app.add_typer(stack_app, name="stack")
PORT_HELP = "Port of the local Prefect server and UI (127.0.0.1)."
DATABASE_HELP = ("Database of the Prefect server, e.g. postgresql+asyncpg://prefect@127.0.0.1:5432/prefect "
                 "(password: ~/.pgpass or this variable, never the command line); default SQLite.")


def _database_option():
    return typer.Option(None, "--database", envvar="PREFECT_SERVER_DATABASE_CONNECTION_URL", show_envvar=True,
                        show_default=False, help=DATABASE_HELP)


@stack_app.command("up")
def stack_up(port: int = typer.Option(4200, help=PORT_HELP),
             cpu_workers: int = typer.Option(1, min=1, help="gpu-pool workers on a machine without GPUs."),
             database: Optional[str] = _database_option()) -> None:
    """Start the local server, pools, workers and deployments (reuses what already runs)."""
    from emotion_cli.stack import Stack

    stack = _run(Stack, port=port, cpu_workers=cpu_workers, database=database)
    for line in _run(stack.up):
        out.print(line, highlight=False, soft_wrap=True)
    out.print("stop it with: emotion stack down  (or: make stop)", highlight=False)


@stack_app.command("down")
def stack_down(port: int = typer.Option(4200, help=PORT_HELP)) -> None:
    """Stop the workers and the server that `stack up` started."""
    from emotion_cli.stack import Stack

    stopped = _run(Stack(port=port).down)
    out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"), highlight=False)


@app.command()
def demo(config_set: Path = typer.Argument(Path("deployments/sets/cpu-demo.yaml"), help="Config set to run."),
         port: int = typer.Option(4200, help=PORT_HELP),
         cpu_workers: int = typer.Option(1, min=1, help="gpu-pool workers on a machine without GPUs."),
         database: Optional[str] = _database_option()) -> None:
    """The main job: stack up, run train-all/nightly on a config set, wait, print the summary and UI URL."""
    from emotion_cli.stack import Stack, latest_artifact, trigger

    stack = _run(Stack, port=port, cpu_workers=cpu_workers, database=database)
    for line in _run(stack.up):
        out.print(line, highlight=False, soft_wrap=True)
    _run(stack.wait_for_workers, {"orchestration": 1, "gpu": 1})
    from emotion_core.config import load_config_set

    spec, _ = _run(load_config_set, config_set)
    out.print(f"running train-all/nightly on {config_set} ...", highlight=False)
    run = _run(trigger, stack, "train-all/nightly", {"config_set": str(config_set.resolve())}, timeout_s=0)
    run = _run(stack.run_with_api, _watch_progress, run.id)
    from tasks.artifacts import artifact_key

    artifact = _run(latest_artifact, stack, f"comparison-{artifact_key(spec.name)}", run.id)
    if artifact is not None:
        out.print(artifact.data, highlight=False, soft_wrap=True)
    out.print(f"train-all/nightly: {run.state.name} ({run.state.message or ''})".rstrip(" ()"), highlight=False, soft_wrap=True)
    out.print(f"flow run in the UI: {stack.ui_url}/runs/flow-run/{run.id}", highlight=False)
    out.print(f"Prefect UI: {stack.ui_url}   stop everything: emotion stack down  (or: make stop)", highlight=False)
    if not run.state.is_completed():
        raise typer.Exit(1)


def _watch_progress(flow_run_id):
    """One line per config (state, step/total, validation macro-F1, ETA) until the flow run is final."""
    from prefect import get_client

    from emotion_cli.progress import watch

    with get_client(sync_client=True) as client:
        return watch(client, flow_run_id, out)


@app.command()
def pools() -> None:
    """Create or update the work pools and queues of deployments/pools/pools.yaml on $PREFECT_API_URL."""
    from emotion_cli.pools import apply_pools

    for line in _run(apply_pools):
        out.print(line, highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
