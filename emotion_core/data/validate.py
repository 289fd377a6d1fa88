"""Row checks, and the ``invalid_rows`` policy that turns bad rows into an error or dropped rows.

- Readers and checks collect ``Problem``s: ``invalid_rows: drop`` removes and records every bad row,
  ``error`` raises the first one (file order, then row).
- ``binary_label_matrix``: 0/1 label columns -> uint8 matrix + problems.
- ``check_rows``: empty texts and ids, duplicate ids across files, then the policy.

Limits: one problem kept per row; file-level problems (columns, encoding, no rows) are raised by the readers.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from emotion_core.data.source import ROW, Problem, RawFile
from emotion_core.errors import DataError


def empty_value_problems(raw: RawFile) -> list[Problem]:
    """Rows whose text (or id) is missing, empty or whitespace only."""
    problems = []
    for column, name, what in (("text", raw.text_name, "text"), ("id", raw.id_name, "id")):
        values = raw.frame[column]
        blank = values.is_null() | (values.str.strip_chars() == "")
        if blank.any():
            rows = raw.frame.filter(blank)[ROW].to_list()
            problems += [Problem(raw.file, r, name, f"empty {what}") for r in rows]
    return problems


def duplicate_id_problems(raws: list[RawFile], skip: list[set[int]]) -> list[tuple[int, Problem]]:
    """``(file index, problem)`` for each repeat of an id already seen (this file or an earlier one).

    Rows in ``skip`` (already bad for another reason) are left out, so a dropped row never makes a
    good row look like its duplicate.
    """
    parts = []
    for index, (raw, bad_rows) in enumerate(zip(raws, skip)):
        part = raw.frame.select("id", ROW).with_columns(pl.lit(index).alias("__file__"))
        if bad_rows:
            part = part.filter(~pl.col(ROW).is_in(list(bad_rows)))
        parts.append(part.filter(pl.col("id").str.strip_chars() != ""))
    ids = pl.concat(parts)
    repeats = ids.filter(~pl.col("id").is_first_distinct())
    if repeats.is_empty():
        return []
    # Python only for the (usually few) repeats, to word the messages.
    first = ids.filter(pl.col("id").is_first_distinct()).rename({ROW: "first_row", "__file__": "first_file"})
    repeats = repeats.join(first, on="id", how="left")
    problems = []
    for rec in repeats.iter_rows(named=True):
        raw = raws[rec["__file__"]]
        if rec["first_file"] == rec["__file__"]:
            where = f"row {rec['first_row']}"
        else:
            where = f"{raws[rec['first_file']].file} row {rec['first_row']}"
        reason = f"duplicate id {rec['id']!r} (first at {where})"
        problems.append((rec["__file__"], Problem(raw.file, rec[ROW], raw.id_name, reason)))
    return problems


def check_rows(raws: list[RawFile], policy: str) -> list[Problem]:
    """Run the shared row checks, then apply ``policy``; returns the dropped problems (empty for ``error``).

    ``error``: raises the first problem (file order, then row). ``drop``: removes every problem row from
    its ``RawFile`` in place.
    """
    per_file: list[dict[int, Problem]] = []
    for raw in raws:
        found: dict[int, Problem] = {}
        for problem in raw.problems + empty_value_problems(raw):
            found.setdefault(problem.row, problem)
        per_file.append(found)
    for index, problem in duplicate_id_problems(raws, [set(found) for found in per_file]):
        per_file[index].setdefault(problem.row, problem)

    if policy == "error":
        for found in per_file:
            if found:
                raise found[min(found)].to_error()
        return []

    dropped: list[Problem] = []
    for raw, found in zip(raws, per_file):
        if not found:
            continue
        dropped += [found[row] for row in sorted(found)]
        keep = ~raw.frame[ROW].is_in(list(found)).to_numpy()
        raw.frame = raw.frame.filter(pl.Series(keep))
        if raw.labels is not None:
            raw.labels = raw.labels[keep]
    return dropped


def binary_label_matrix(
    frame: pl.DataFrame, columns: list[str], file: str, *, hint: str = ""
) -> tuple[np.ndarray, list[Problem]]:
    """0/1 label columns -> uint8 matrix, plus one problem per row holding a value other than 0 or 1.

    Accepts integers and floats equal to 0/1, booleans, and text ``0``/``1`` (also ``0.0``/``1.0``,
    ``true``/``false``, any case, surrounding spaces ignored). A bad row's matrix entries are 0: the row
    is either dropped or the load stops.
    """
    n = frame.height
    matrix = np.zeros((n, len(columns)), dtype=np.uint8)
    rows = frame[ROW].to_numpy()
    found: dict[int, Problem] = {}
    for j, column in enumerate(columns):
        values = frame[column]
        _require_scalar_labels(values, file)
        if values.dtype == pl.Boolean:
            ok = values.is_not_null()
            positive = values.fill_null(False)
        elif values.dtype.is_numeric():
            ok = ((values == 0) | (values == 1)).fill_null(False)  # is_in would need matching dtypes
            positive = (values == 1).fill_null(False)
        else:
            text = values.cast(pl.Utf8).str.strip_chars().str.to_lowercase()
            ok = text.is_in(["0", "1", "0.0", "1.0", "true", "false"]).fill_null(False)
            positive = text.is_in(["1", "1.0", "true"]).fill_null(False)
        matrix[:, j] = positive.to_numpy()
        for i in np.flatnonzero(~ok.to_numpy()):
            if rows[i] in found:
                continue
            value = values[int(i)]
            if value is None or (isinstance(value, str) and not value.strip()):
                reason = "missing label value (expected 0 or 1)"
            elif isinstance(value, str) and value.strip() == "NONE":
                reason = (
                    "label value 'NONE' is not 0 or 1 (NONE is accepted only in a test file whose every label is NONE)"
                )
            else:
                reason = f"label value {value!r} is not 0 or 1{hint.format(column=column)}"
            found[int(rows[i])] = Problem(file, int(rows[i]), column, reason)
    return matrix, list(found.values())


def _require_scalar_labels(values: pl.Series, file: str) -> None:
    """A label column holds one 0/1 value a row: a Parquet list or struct column is a file-level error."""
    dtype = values.dtype
    if dtype.is_nested() or dtype == pl.Object or dtype.is_temporal() or dtype == pl.Binary:
        raise DataError(
            f"the label column holds {dtype} values, not 0/1 (one 0/1 column per label)", file=file, column=values.name
        )


def all_none(frame: pl.DataFrame, columns: list[str]) -> bool:
    """True when every label cell is the text ``NONE`` (SemEval's marker of an unlabelled test file)."""
    if frame.height == 0 or not columns:
        return False
    for column in columns:
        values = frame[column]
        if values.dtype != pl.Utf8 or not (values.str.strip_chars() == "NONE").fill_null(False).all():
            return False
    return True
