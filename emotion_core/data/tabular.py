"""Tabular reader: any CSV, TSV or Parquet file with a text column and 0/1 label columns.

- ``path``: one file (validation and test carved from it) or a folder with ``train.*`` and optional
  ``validation.*``/``dev.*`` and ``test.*``; a test file without label columns is the ``predict`` split.
- Columns: ``text_column``, ``id_column`` (unset: row numbers, prefixed with the role when several files are
  read), ``label_columns`` (unset: every other column), ``ignore_columns``; any other column is an error.
- Separator from the extension (``.tsv`` tab, ``.csv`` comma); Parquet labels may be int, float, bool or text.

Limits: labels must be 0/1 columns (one-hot encode a multi-class column first).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Protocol

import polars as pl

from emotion_core.data.delimited import first_line, parse_delimited, read_file, separator_for
from emotion_core.data.hashing import DataHasher
from emotion_core.data.source import ROW, RawFile, SourceData
from emotion_core.data.validate import binary_label_matrix
from emotion_core.errors import DataError
from emotion_core.labels import LabelSchema

EXTENSIONS = (".csv", ".tsv", ".parquet")
STEMS = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
ROW_ID = "row"
RESERVED = ("id", "text", "split")


class TableColumns(Protocol):
    """The column settings the reader uses: ``config.DataConfig`` has them (typed structurally so that the
    config, which validates dataset names against the registry of readers, is not imported back here)."""

    text_column: str
    id_column: str | None
    label_columns: tuple[str, ...] | None
    ignore_columns: tuple[str, ...]


"""Column names of ``EmotionData.table`` that a label may not take."""


def read_table(path: Path, role: str, hasher: DataHasher) -> tuple[pl.DataFrame, list[str], int, list]:
    """Any supported file -> (frame with ``ROW``, column names, rows read, row problems)."""
    data = read_file(path)
    hasher.add_bytes(role, data)
    if path.suffix.lower() == ".parquet":
        try:
            frame = pl.read_parquet(io.BytesIO(data))
        except Exception as exc:  # polars raises several types for a corrupt file
            raise DataError(f"cannot read as Parquet: {exc}", file=str(path)) from None
        if frame.height == 0:
            raise DataError("no data rows", file=str(path))
        columns = frame.columns
        frame = frame.with_columns(pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias(ROW))
        return frame, columns, frame.height, []
    parsed = parse_delimited(data, file=str(path), sep=separator_for(path, first_line(data)), quoted=True)
    return parsed.frame, parsed.columns, parsed.rows_read, parsed.problems


def require_text(frame: pl.DataFrame, column: str, file: str) -> None:
    """A text column must hold text: a Parquet column of numbers (or lists...) is an error, never cast."""
    dtype = frame.schema[column]
    if not (dtype == pl.Utf8 or dtype == pl.Null or isinstance(dtype, (pl.Categorical, pl.Enum))):
        raise DataError(f"the text column holds {dtype} values, not text (strings)", file=file, column=column)


def _require(columns: list[str], wanted: list[str], file: str, what: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(
            f"missing {what} column(s) {', '.join(map(repr, missing))}; found: {', '.join(columns)}",
            file=file,
            column=missing[0],
        )


def read_tabular_file(
    path: Path, role: str, cfg: TableColumns, labels: list[str] | None, row_prefix: str, hasher: DataHasher
) -> tuple[RawFile, list[str]]:
    """Read one file; ``labels`` None means infer them from this (train) file. Returns the labels used."""
    file = str(path)
    frame, columns, rows_read, problems = read_table(path, role, hasher)
    if "" in columns and "" not in cfg.ignore_columns:
        raise DataError(
            f"header column {columns.index('') + 1} has no name (a pandas index written by to_csv? save with "
            f'index=False, or add "" to data.ignore_columns)',
            file=file,
        )
    keys = [cfg.text_column] + ([cfg.id_column] if cfg.id_column else [])
    _require(columns, keys, file, "text/id" if cfg.id_column else "text")
    if labels is None:
        labels = [c for c in columns if c not in keys and c not in cfg.ignore_columns]
        if not labels:
            raise DataError(f"no label columns: every column is text, id or ignored ({', '.join(columns)})", file=file)
    present = [c for c in labels if c in columns]
    unlabelled = role == "test" and not present
    if not unlabelled:
        _require(columns, labels, file, "label")
    extra = [c for c in columns if c not in keys and c not in labels and c not in cfg.ignore_columns]
    if extra:
        raise DataError(
            f"unexpected column(s) {', '.join(map(repr, extra))}: not the text, id or a label column; "
            f"list them in data.ignore_columns (or data.label_columns)",
            file=file,
            column=extra[0],
        )
    clash = [c for c in labels if c in RESERVED]
    if clash:
        raise DataError(
            f"a label column may not be named {clash[0]!r} (reserved); rename it", file=file, column=clash[0]
        )

    if cfg.id_column:
        ids = pl.col(cfg.id_column).cast(pl.Utf8)
    else:
        ids = pl.format(f"{row_prefix}{{}}", pl.col(ROW)) if row_prefix else pl.col(ROW).cast(pl.Utf8)
    require_text(frame, cfg.text_column, file)
    label_matrix = None
    if not unlabelled:
        # When the labels were inferred, a stray non-label column is the likely cause of a bad value.
        hint = "" if cfg.label_columns else " (if {column!r} is not a label, add it to data.ignore_columns)"
        label_matrix, label_problems = binary_label_matrix(frame, labels, file, hint=hint)
        problems = problems + label_problems
    raw = RawFile(
        role="predict" if unlabelled else role,
        file=file,
        frame=frame.select(ids.alias("id"), pl.col(cfg.text_column).cast(pl.Utf8).alias("text"), ROW),
        labels=label_matrix,
        rows_read=rows_read,
        id_name=cfg.id_column or ROW_ID,
        text_name=cfg.text_column,
        problems=problems,
    )
    return raw, labels


def find_tabular_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for role, stems in STEMS.items():
        found = [p for p in sorted(folder.iterdir()) if p.stem in stems and p.suffix.lower() in EXTENSIONS]
        if len(found) > 1:
            raise DataError(f"several {role} files ({', '.join(p.name for p in found)}); keep one", file=str(folder))
        if found:
            files[role] = found[0]
    if "train" not in files:
        names = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise DataError(f"no train.csv, train.tsv or train.parquet in this folder (found: {names})", file=str(folder))
    return files


def read_tabular(path: Path, cfg: TableColumns, hasher: DataHasher) -> SourceData:
    """Read a tabular file (train only) or folder (train + optional validation/test)."""
    if path.is_dir():
        files = find_tabular_files(path)
    else:
        if path.suffix.lower() not in EXTENSIONS + (".txt",):
            raise DataError(f"unsupported file type {path.suffix!r}; use .csv, .tsv or .parquet", file=str(path))
        files = {"train": path}
    labels = list(cfg.label_columns) if cfg.label_columns else None
    raws = []
    for role, file_path in files.items():
        prefix = f"{role}:" if len(files) > 1 and not cfg.id_column else ""
        raw, labels = read_tabular_file(file_path, role, cfg, labels, prefix, hasher)
        raws.append(raw)
    return SourceData(
        schema=LabelSchema(tuple(labels)),
        raws=raws,
        id_column=cfg.id_column or ROW_ID,
        files={raw.role: raw.file for raw in raws},
    )
