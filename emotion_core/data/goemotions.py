"""GoEmotions reader (Demszky et al., 2020, "simplified" TSVs): 28 labels, multi-label.

- Files: ``text<TAB>comma-separated label ids<TAB>comment id``, no header, read quote-aware.
- ``path``: a folder (``train.tsv``; ``dev.tsv`` -> validation, ``test.tsv`` -> test when present) or one
  TSV (train). Label names: ``labels.txt`` (or ``emotions.txt``) beside the TSVs, id = line index.
- A label id that is not an integer or beyond the list is a row problem; an empty label field is allowed.

Limits: a text starting with ``"`` that is not CSV-quoted would be mis-read (the released files quote them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from emotion_core.data.delimited import decode, parse_delimited, read_file
from emotion_core.data.hashing import DataHasher
from emotion_core.data.source import ROW, Problem, RawFile, SourceData
from emotion_core.errors import DataError
from emotion_core.labels import LabelSchema

COLUMNS = ["text", "labels", "id"]
"""Positional names of the three headerless fields (used in errors)."""
FILE_NAMES = {
    "train": ("train.tsv",),
    "validation": ("dev.tsv", "validation.tsv"),
    "test": ("test.tsv",),
}
LABEL_FILES = ("labels.txt", "emotions.txt")


def read_label_names(path: Path, hasher: DataHasher) -> LabelSchema:
    """One label name a line (trailing blank lines ignored; a blank line inside is an error)."""
    data = read_file(path)
    hasher.add_bytes("labels", data)
    lines = decode(data, str(path)).replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"line {number} is blank; expected one label name a line", file=str(path))
    try:
        return LabelSchema(tuple(line.strip() for line in lines))
    except DataError as exc:
        raise DataError(exc.reason, file=str(path)) from None


def parse_label_ids(
    frame: pl.DataFrame, schema: LabelSchema, file: str, labels_file: str
) -> tuple[np.ndarray, list[Problem]]:
    """``"2,27"`` strings -> uint8 multi-hot matrix; one problem per row with a bad id."""
    n, size = frame.height, len(schema)
    matrix = np.zeros((n, size), dtype=np.uint8)
    parts = (
        pl.DataFrame({"i": np.arange(n), "part": frame["labels"].str.strip_chars()})
        .filter(pl.col("part") != "")
        .with_columns(pl.col("part").str.split(","))
        .explode("part")
        .with_columns(pl.col("part").str.strip_chars())
        .with_columns(
            # ASCII digits only: polars' \d also matches "３" or "٣", which the cast then refuses (a traceback).
            pl.when(pl.col("part").str.contains(r"^[0-9]{1,9}$")).then(pl.col("part").cast(pl.Int64)).alias("label")
        )
    )
    ok = parts["label"].is_not_null() & (parts["label"] < size)
    good = parts.filter(ok)
    matrix[good["i"].to_numpy(), good["label"].to_numpy()] = 1
    problems = []
    rows = frame[ROW]
    bad = parts.filter(~ok).unique(subset="i", keep="first", maintain_order=True)
    for i, part, label in bad.iter_rows():
        if label is None:
            reason = f"label id {part!r} is not an integer (expected comma-separated ids 0-{size - 1}, ASCII digits)"
        else:
            reason = f"label id {label} is beyond the {size} labels of {labels_file} (ids 0-{size - 1})"
        problems.append(Problem(file, rows[i], "labels", reason))
    return matrix, problems


def read_goemotions_file(path: Path, role: str, schema: LabelSchema, labels_file: str, hasher: DataHasher) -> RawFile:
    data = read_file(path)
    hasher.add_bytes(role, data)
    parsed = parse_delimited(data, file=str(path), sep="\t", quoted=True, names=COLUMNS)
    labels, problems = parse_label_ids(parsed.frame, schema, parsed.file, labels_file)
    return RawFile(
        role=role,
        file=parsed.file,
        frame=parsed.frame.select("id", "text", ROW),
        labels=labels,
        rows_read=parsed.rows_read,
        id_name="id",
        text_name="text",
        problems=parsed.problems + problems,
    )


def read_goemotions(path: Path, hasher: DataHasher) -> SourceData:
    """Read a GoEmotions folder (or one TSV as train) with its label-names file."""
    if path.is_dir():
        folder = path
        files = {}
        for role, names in FILE_NAMES.items():
            found = [folder / name for name in names if (folder / name).is_file()]
            if found:
                files[role] = found[0]
        if "train" not in files:
            raise DataError(f"no train.tsv in this GoEmotions folder (found: {_listing(folder)})", file=str(folder))
    else:
        folder = path.parent
        files = {"train": path}
    labels_path = next((folder / name for name in LABEL_FILES if (folder / name).is_file()), None)
    if labels_path is None:
        raise DataError("no labels.txt (the label names, one a line) next to the GoEmotions files", file=str(folder))
    schema = read_label_names(labels_path, hasher)
    raws = [read_goemotions_file(p, role, schema, labels_path.name, hasher) for role, p in files.items()]
    paths = {role: str(p) for role, p in files.items()} | {"labels": str(labels_path)}
    return SourceData(schema=schema, raws=raws, id_column="id", files=paths)


def _listing(folder: Path, limit: int = 10) -> str:
    names = sorted(p.name for p in folder.iterdir())
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "nothing"


def hub_split(frame: pl.DataFrame, role: str, file: str, schema: LabelSchema) -> RawFile:
    """One hub split (``text``, ``labels`` id lists, ``id``) -> ``RawFile``."""
    n, size = frame.height, len(schema)
    frame = frame.with_columns(pl.int_range(1, n + 1, dtype=pl.Int64).alias(ROW))
    pairs = frame.select(pl.int_range(n).alias("i"), pl.col("labels")).explode("labels").drop_nulls()
    ok = (pairs["labels"] >= 0) & (pairs["labels"] < size)
    matrix = np.zeros((n, size), dtype=np.uint8)
    good = pairs.filter(ok)
    matrix[good["i"].to_numpy(), good["labels"].to_numpy()] = 1
    problems = [
        Problem(file, i + 1, "labels", f"label id {label} is beyond the {size} labels (ids 0-{size - 1})")
        for i, label in pairs.filter(~ok).unique(subset="i", keep="first", maintain_order=True).iter_rows()
    ]
    return RawFile(
        role,
        file,
        frame.select(pl.col("id").cast(pl.Utf8), pl.col("text").cast(pl.Utf8), ROW),
        matrix,
        n,
        "id",
        "text",
        problems,
    )
