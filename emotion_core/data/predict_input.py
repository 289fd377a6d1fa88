"""``read_prediction_input``: texts (and their ids) to predict, from any supported file format.

Features
- Format auto-detected, in this order:
  1. ``.parquet`` -> tabular (``text_column``, default ``text``).
  2. A header with ``ID`` and ``Tweet`` -> SemEval E-c (labels, if any, are ignored: 0/1 or ``NONE``).
  3. No header, three tab-separated fields with comma-separated integers in the second -> GoEmotions.
  4. Otherwise a CSV/TSV with a header (separator from ``.tsv``/``.csv``, else tab if the header has
     one) and ``text_column`` (default ``text``).
- Ids: ``id_column`` if given, else the format's (``ID``, ``id``), else a column named ``id`` in any
  case (CSV/TSV/Parquet), else 1-based row numbers named ``row``. Returned as text, in file order.
- Same strictness as training data: strict UTF-8, field counts, and empty texts, empty ids or
  duplicate ids are errors naming the file, row and column. Extra columns are allowed (kept aside).

Limits
- ``text_column``/``id_column`` name header columns; a headerless GoEmotions file always uses its
  first field as text and its third as id.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import polars as pl

from emotion_core.data.delimited import first_line, parse_delimited, read_file, separator_for
from emotion_core.data.goemotions import COLUMNS as GOEMOTIONS_COLUMNS
from emotion_core.data.hashing import DataHasher
from emotion_core.data.semeval import ID as SEMEVAL_ID
from emotion_core.data.semeval import TEXT as SEMEVAL_TEXT
from emotion_core.data.source import ROW, RawFile
from emotion_core.data.tabular import ROW_ID, read_table, require_text
from emotion_core.data.validate import check_rows
from emotion_core.errors import DataError

_LABEL_IDS = re.compile(r"\s*[0-9]+(\s*,\s*[0-9]+)*\s*")  # ASCII only: \d also matches "３"


def detect_format(path: Path, data: bytes) -> str:
    """``tabular`` | ``semeval`` | ``goemotions`` (see the module docstring for the rules)."""
    if path.suffix.lower() == ".parquet":
        return "tabular"
    line = first_line(data)
    fields = next(csv.reader([line], delimiter=separator_for(path, line)), [])
    if {SEMEVAL_ID, SEMEVAL_TEXT} <= {f.strip() for f in fields}:
        return "semeval"
    tab_fields = next(csv.reader([line], delimiter="\t"), [])
    if len(tab_fields) == 3 and _LABEL_IDS.fullmatch(tab_fields[1]):
        return "goemotions"
    return "tabular"


def default_id_column(columns: list[str], file: str) -> str | None:
    """The column named ``id`` in any case (``id``, ``ID``, ``Id``), if there is one; None if there is none.

    Several (``id`` and ``ID``) are ambiguous: a ``DataError`` asks for ``--id-column``.
    """
    found = [c for c in columns if c.strip().lower() == "id"]
    if len(found) > 1:
        raise DataError(
            f"several id columns ({', '.join(map(repr, found))}); choose one with --id-column",
            file=file,
            column=found[0],
        )
    return found[0] if found else None


def read_prediction_input(
    path: str | Path, *, text_column: str | None = None, id_column: str | None = None
) -> tuple[str, list[str], list[str]]:
    """Read texts to predict; returns ``(id_column_name, ids, texts)``."""
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise DataError("prediction input file not found", file=file)
    data = read_file(path)
    kind = detect_format(path, data)
    if kind == "goemotions":
        parsed = parse_delimited(data, file=file, sep="\t", quoted=True, names=GOEMOTIONS_COLUMNS)
        frame, columns, rows_read, problems = parsed.frame, parsed.columns, parsed.rows_read, parsed.problems
        text_name, id_name = "text", "id"
    elif kind == "semeval":
        sep = separator_for(path, first_line(data))
        parsed = parse_delimited(data, file=file, sep=sep, quoted=sep == ",")
        frame, columns, rows_read, problems = parsed.frame, parsed.columns, parsed.rows_read, parsed.problems
        text_name, id_name = text_column or SEMEVAL_TEXT, id_column or SEMEVAL_ID
    else:
        # read_table hashes what it reads; the hash is not needed for predictions.
        frame, columns, rows_read, problems = read_table(path, "predict", DataHasher())
        text_name, id_name = text_column or "text", id_column or default_id_column(columns, file)

    wanted = [text_name] + ([id_name] if id_name else [])
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(map(repr, missing))} (read as {kind}); found: {', '.join(columns)}",
            file=file,
            column=missing[0],
        )
    require_text(frame, text_name, file)
    ids = pl.col(id_name).cast(pl.Utf8) if id_name else pl.col(ROW).cast(pl.Utf8)
    raw = RawFile(
        role="predict",
        file=file,
        frame=frame.select(ids.alias("id"), pl.col(text_name).cast(pl.Utf8).alias("text"), ROW),
        labels=None,
        rows_read=rows_read,
        id_name=id_name or ROW_ID,
        text_name=text_name,
        problems=problems,
    )
    check_rows([raw], "error")  # empty texts/ids, duplicate ids, malformed rows: raise the first
    return id_name or ROW_ID, raw.frame["id"].to_list(), raw.frame["text"].to_list()
