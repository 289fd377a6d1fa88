"""``emotion runs``, ``publish``, ``export`` and ``serve``: what is in a store, and shipping a run from it."""

from __future__ import annotations

from pathlib import Path

import typer

from emotion_cli.console import err, out, run_or_exit


def runs(
    store: str | None = typer.Option(None, help="Artefact store (path, file:// or s3://); default $EMOTION_STORE."),
    dataset: str | None = typer.Option(None, help="Only runs of this dataset key (e.g. goemotions-...)."),
) -> None:
    """List the store's runs, newest first, and the champion of each dataset (marked *)."""
    from rich.table import Table

    from emotion_core import catalog
    from emotion_core.settings import default_store_uri
    from emotion_core.store import open_store

    def go():
        opened = open_store(store or default_store_uri())
        return opened.uri, catalog.list_runs(opened), catalog.champions(opened)

    uri, rows, champions = run_or_exit(go)
    rows = [row for row in rows if dataset is None or row.dataset == dataset]
    table = Table(title=f"runs in {uri}", title_justify="left")
    for column in ("", "run id", "config", "family", "dataset", "val macro-F1", "test macro-F1", "finished", "problem"):
        table.add_column(column)
    score = lambda value: "" if value is None else f"{value:.4f}"
    for row in rows:
        table.add_row(
            "*" if row.champion else "",
            row.run_id,
            row.config,
            row.family,
            row.dataset,
            score(row.validation_macro_f1),
            score(row.test_macro_f1),
            row.finished_at[:19],
            row.problem,
        )
    out.print(table)
    for key, doc in sorted(champions.items()):
        if dataset is None or key == dataset:
            out.print(
                f"champion of {key}: {doc['run_id']} (validation macro-F1 {doc['validation_macro_f1']:.4f})",
                highlight=False,
                soft_wrap=True,
            )
    if not rows:
        out.print("no runs", highlight=False)


def publish(
    folder: Path = typer.Argument(
        ..., help="A complete run folder (with manifest.json), e.g. one kept after a failed publish."
    ),
    store: str = typer.Option(..., help="Store to publish into (path, file:// or s3://)."),
) -> None:
    """Publish a complete local run folder into a store (idempotent; the folder is left as it is)."""
    import json

    from emotion_core.errors import StoreError
    from emotion_core.store import RunId, open_store, resolve_run_folder

    def go():
        run_folder = resolve_run_folder(folder)  # the manifest, its run_id and every file verified
        try:
            run_id = json.loads((run_folder / "manifest.json").read_text(encoding="utf-8")).get("run_id")
        except (ValueError, AttributeError) as exc:  # not JSON, or JSON but not an object
            raise StoreError(
                f"{run_folder / 'manifest.json'}: not a JSON object ({exc}); the run folder is damaged"
            ) from None
        run_id = RunId.parse(run_id, f"{run_folder / 'manifest.json'}: run_id")  # untrusted: it names a store folder
        target = open_store(store)
        uri = target.publish(run_folder, run_id)
        try:
            target.delete_checkpoints(run_id)  # published: its training checkpoints are not needed any more
        except StoreError:
            pass
        return uri

    out.print(f"run published: {run_or_exit(go)}", highlight=False, soft_wrap=True)


def export(
    run: str = typer.Argument(
        ..., help="Run folder or file:// / s3:// URI (an encoder run, pooling: cls), or an ensemble package."
    ),
    dest: Path = typer.Argument(..., help="New folder to write (must not exist, or be empty)."),
    merge: bool = typer.Option(False, "--merge", help="Adapter runs: write the merged plain model."),
    calibration: bool = typer.Option(
        True,
        help="Store the run's calibration.json temperatures + thresholds (fitted on validation now for older runs).",
    ),
    base_model: str | None = typer.Option(None, help="Adapter runs: base model id/path the adapter names."),
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="Also upload to this hub repo (token: $HF_TOKEN)."
    ),
) -> None:
    """Export a run as a Hugging Face folder (transformers / peft, no remote code) with a model card; an ensemble
    package as a self-contained folder (package + member runs + card) that emotion predict / serve load."""
    from emotion_core import export as ex
    from emotion_core.runs import read_run

    def go():
        ex.check_destination(dest)  # before any model is loaded
        if _names_ensemble(run):
            return _export_ensemble(run, dest, merge, calibration, base_model, push_to_hub)
        loaded = read_run(run)
        ex.check_exportable(loaded, merge)  # before the data is read for calibration
        fitted = ex.run_calibration(loaded) if calibration else None
        result = ex.export_run(run, dest, merge=merge, base_model=base_model, calibration=fitted)
        if push_to_hub:
            result["pushed"] = ex.push_to_hub(dest, push_to_hub)
        return result

    result = run_or_exit(go)
    if "members" in result:
        out.print(
            f"exported ensemble {result['run_id']} with its {len(result['members'])} member runs to "
            f"{result['folder']} (emotion predict / serve load it with no store)",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print(
            f"exported {result['run_id']} ({result['kind']}, {result['model_type']}) to {result['folder']}; "
            f"max |logit diff| to the run: {result['max_abs_logit_diff']:.2e}",
            highlight=False,
            soft_wrap=True,
        )
    if result.get("pushed"):
        out.print(f"pushed: {result['pushed']}", highlight=False, soft_wrap=True)


def _names_ensemble(ref: str) -> bool:
    """Whether ``ref`` names a published ensemble package (verified; a bad reference: the run reader says why)."""
    from emotion_core.ensemble_package import is_ensemble
    from emotion_core.errors import StoreError
    from emotion_core.store import resolve_run_folder

    try:
        return is_ensemble(resolve_run_folder(ref))
    except StoreError:
        return False


def _export_ensemble(ref: str, dest: Path, merge: bool, calibration: bool, base_model, push_to_hub) -> dict:
    """``ensemble_export.export_ensemble``, then the same hub upload as a run's export (the whole folder)."""
    from emotion_core import export as ex
    from emotion_core.ensemble_export import export_ensemble

    refused = [
        flag
        for flag, used in (("--merge", merge), ("--no-calibration", not calibration), ("--base-model", base_model))
        if used
    ]
    if refused:
        raise ex.ExportError(
            f"{', '.join(refused)}: does not apply to an ensemble package (its members are exported as run "
            "folders, and their temperatures are part of the ensemble's fit); nothing was written"
        )
    result = export_ensemble(ref, dest)
    if push_to_hub:
        result["pushed"] = ex.push_to_hub(dest, push_to_hub)
    return result


def serve(
    source: str = typer.Argument(
        ...,
        help="Run folder, file:// or s3:// URI, or champion:<dataset> (the "
        "registry's champion, reloaded when it changes).",
    ),
    store: str | None = typer.Option(None, help="Store of champion:<dataset> (default $EMOTION_STORE)."),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to listen on; not loopback: anyone who reaches it can use the API (no authentication).",
    ),
    port: int = typer.Option(8000, min=0, max=65535, help="Port (0: any free one)."),
    max_texts: int = typer.Option(256, min=1, help="Texts per /predict request."),
    max_chars: int = typer.Option(10_000, min=1, help="Characters per text."),
    reload_every: float = typer.Option(30.0, min=0.1, help="champion:<dataset>: seconds between registry reads."),
    max_connections: int = typer.Option(
        128, min=2, help="Connections and requests in progress at once; over it a request gets 503."
    ),
    calibration: bool = typer.Option(
        True,
        "--calibration/--no-calibration",
        help="The run's calibration.json (as emotion predict); off: raw sigmoid.",
    ),
) -> None:
    """Serve a run or a dataset's champion: POST /predict, POST /explain, GET /health, /model and a page at /."""
    import ipaddress

    from emotion_core.serving.models import CHAMPION_PREFIX, ChampionSource, load_model
    from emotion_core.serving.settings import ServeSettings

    settings = ServeSettings(
        max_texts=max_texts,
        max_chars=max_chars,
        reload_every_s=reload_every,
        calibration=calibration,
        max_connections=max_connections,
    )

    def load():
        if not source.startswith(CHAMPION_PREFIX):
            return load_model(source, calibration=calibration, batch_size=settings.batch_size), None
        from emotion_core.settings import default_store_uri

        champion = ChampionSource(store or default_store_uri(), source.removeprefix(CHAMPION_PREFIX))
        return champion.load(champion.current(), calibration=calibration, batch_size=settings.batch_size), champion

    model, champion = run_or_exit(load)  # a bad run or registry: one clear line, before anything listens
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        err.print(f"warning: listening on {host}, not loopback: the API has no authentication", highlight=False)
    import uvicorn

    from emotion_core.serving.app import create_app

    out.print(
        f"serving run {model.run_id} ({'calibrated' if model.predictor.calibrated else 'uncalibrated'}) "
        f"on http://{host}:{port}/",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(
        create_app(model, settings, champion),
        host=host,
        port=port,
        log_level="info",
        limit_concurrency=settings.max_connections,
    )


def register(app: typer.Typer) -> None:
    """Add these commands to ``app`` (in the order ``emotion --help`` lists them)."""
    for command in (runs, publish, export, serve):
        app.command()(command)
