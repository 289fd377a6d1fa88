"""``emotion data push``: upload a dataset to the artefact store once, content-addressed, for workers on other machines.

- DATASET: a registered dataset with a data folder (``goemotions``, ``semeval2018-ec``, read from
  ``$EMOTION_DATA_DIR``) or a path to a data file (CSV/TSV/Parquet) or folder.
- Prints the reference a config names (``data.store_ref``); a second push of the same bytes uploads nothing.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emotion_cli.console import out, run_or_exit

app = typer.Typer(no_args_is_help=True, help="Datasets in the artefact store (for workers on other machines).")


def _source(dataset: str) -> tuple[Path, str]:
    """The local file or folder ``dataset`` names, and the ``data.dataset`` a config reading it uses."""
    import os

    from emotion_core.data.locate import ENV_VAR
    from emotion_core.data.registry import DATASETS
    from emotion_core.errors import DataError

    spec = DATASETS.get(dataset)
    if spec is not None and spec.folder is not None:
        root = os.environ.get(ENV_VAR, "").strip()
        if not root:
            raise DataError(f"dataset {dataset!r}: ${ENV_VAR} is not set (the folder holding '{spec.folder}/')")
        folder = Path(root).expanduser() / spec.folder
        if not folder.is_dir():
            raise DataError(f"dataset {dataset!r}: no data folder (set ${ENV_VAR})", file=str(folder))
        return folder, dataset
    path = Path(dataset).expanduser()
    if not path.exists():
        known = ", ".join(name for name, s in DATASETS.items() if s.folder is not None)
        raise DataError(f"unknown dataset {dataset!r}: neither a registered dataset ({known}) nor a file or folder")
    return path, "tabular" if path.is_file() else "<goemotions | semeval2018-ec | tabular>"


@app.command()
def push(
    dataset: str = typer.Argument(..., help="goemotions, semeval2018-ec, or a path to a CSV/TSV/Parquet file."),
    store: str | None = typer.Option(
        None, help="Artefact store: s3://bucket/prefix (or a path); default $EMOTION_STORE or .emotion/store."
    ),
) -> None:
    """Upload DATASET once, named by the sha256 of its files; print the data.store_ref a config names."""

    def go():
        from emotion_core.data.pushed import push_dataset
        from emotion_core.settings import create_missing_bucket, default_store_uri
        from emotion_core.store import open_store

        source, kind = _source(dataset)
        target = open_store(store or default_store_uri())
        if hasattr(target, "ensure_bucket"):  # S3: a missing bucket is a clear error naming it
            target.ensure_bucket(create=create_missing_bucket())
        return push_dataset(source, target), kind

    pushed, kind = run_or_exit(go)
    if pushed.uploaded:
        said = f"pushed {dataset}: {pushed.files} file(s), {pushed.size} bytes uploaded to {pushed.uri}"
    else:
        said = f"{dataset} is in the store already: {pushed.uri} (nothing uploaded)"
    out.print(said, highlight=False, soft_wrap=True)
    out.print(
        f"name it in a run config:\ndata:\n  dataset: {kind}\n  store_ref: sha256:{pushed.dataset_id}\n"
        f"(sha256:<id> is read from the run's store; or name this store: store_ref: {pushed.uri})",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="data")
