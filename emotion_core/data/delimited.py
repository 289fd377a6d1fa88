"""Strict reading of delimited text files (TSV/CSV): UTF-8, field counts, row numbers.

- Strict UTF-8 (BOM skipped): an undecodable file stops naming the row and column of its first bad byte.
- CRLF or LF; quote-aware (CSV rules) or raw (every character literal), per format.
- A row with the wrong number of fields is a row problem with its row number; trailing blank lines are not rows.
- Returns a polars frame of ``Utf8`` columns plus each row's 1-based data-row number.

Limits: row numbers count records, not lines; the whole file is held in memory.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from emotion_core.data.source import ROW, Problem
from emotion_core.errors import DataError
from emotion_core.files import not_regular

_ESCAPED = re.compile("[\udc80-\udcff]")
MAX_FIELD_CHARS = 1_000_000
"""Longest field (text) a delimited file may hold; csv's own default (131,072) is lower than some real texts."""


@dataclass
class Delimited:
    """A parsed delimited file."""

    file: str
    columns: list[str]
    """Header names, or the given positional names for a headerless file."""
    frame: pl.DataFrame
    """One Utf8 column per entry of ``columns`` plus ``ROW``; well-formed rows only."""
    rows_read: int
    """Data rows in the file, malformed ones included."""
    problems: list[Problem] = field(default_factory=list)


def read_file(path: Path) -> bytes:
    """The bytes of a data file; a ``DataError`` naming it if it is not a regular file or cannot be read."""
    try:
        kind = not_regular(path)  # checked before opening: open() on a FIFO blocks until a writer comes
        if kind:
            raise DataError(f"is {kind}, not a data file", file=str(path))
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", file=str(path)) from None
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror or exc})", file=str(path)) from None


def separator_for(path: Path, first_line: str) -> str:
    """``.tsv`` -> tab, ``.csv`` -> comma, otherwise tab if the first line has one, else comma."""
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    return "\t" if "\t" in first_line else ","


def first_line(data: bytes) -> str:
    """The first line, decoded leniently (only used to sniff a format; the real decode is strict)."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    return line.decode("utf-8", errors="replace").removeprefix("\ufeff")


def _records(text: str, file: str, sep: str, quoted: bool, has_header: bool) -> list[list[str]]:
    # csv ends records on CRLF by itself; normalising first also keeps "\r" out of quoted multi-line texts.
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=sep,
        quotechar='"',
        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        strict=False,
    )
    records: list[list[str]] = []
    last_line = 0  # the source line the previous record ended on
    limit = csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        for record in reader:
            records.append(record)
            last_line = reader.line_num
    except csv.Error as exc:
        row = len(records) + 1 - int(has_header)
        raise DataError(
            _csv_problem(exc, reader.line_num - last_line, last_line + 1), file=file, row=row if row > 0 else None
        ) from None
    finally:
        csv.field_size_limit(limit)
    while records and not records[-1]:
        records.pop()
    return records


def _csv_problem(exc: csv.Error, lines: int, first_line: int) -> str:
    """Word a csv error; a field past the size limit is either a long text or an unclosed quote joining lines."""
    if "field larger" not in str(exc):
        return f"malformed line: {exc}"
    long = f"a field is longer than {MAX_FIELD_CHARS} characters (the most one field may hold)"
    if lines > 1:
        return f'{long}; it runs over {lines} lines from line {first_line}: an unclosed quote (") there?'
    return long


def _undecodable(
    data: bytes, exc: UnicodeDecodeError, file: str, sep: str, quoted: bool, has_header: bool, names: list[str] | None
) -> DataError:
    # Error path only: decode with surrogateescape (bad bytes become lone surrogates), parse the same
    # way, and report the first field holding one. Falls back to counting lines if parsing fails.
    byte = data[exc.start]
    reason = f"not valid UTF-8 (byte 0x{byte:02x} at offset {exc.start}); save the file as UTF-8"
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    try:
        records = _records(text, file, sep, quoted, has_header)
    except DataError:
        records = []
    header = records[0] if has_header and records else names or []
    for index, record in enumerate(records):
        for j, value in enumerate(record):
            if _ESCAPED.search(value):
                if has_header and index == 0:
                    return DataError(f"header is {reason}", file=file)
                column = header[j] if j < len(header) else f"field {j + 1}"
                return DataError(reason, file=file, row=index + 1 - int(has_header), column=column)
    line = data.count(b"\n", 0, exc.start) + 1 - int(has_header)
    return DataError(reason, file=file, row=line if line > 0 else None)


def decode(data: bytes, file: str) -> str:
    """Strict UTF-8 (BOM skipped); bad bytes raise naming the line (for files that are not delimited)."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8", file=file
        ) from None


def parse_delimited(data: bytes, *, file: str, sep: str, quoted: bool, names: list[str] | None = None) -> Delimited:
    """Parse ``data``: with a header row when ``names`` is None, else headerless with those names."""
    has_header = names is None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise _undecodable(data, exc, file, sep, quoted, has_header, names) from None
    records = _records(text, file, sep, quoted, has_header)
    if has_header:
        if not records:
            raise DataError("the file is empty (no header, no data rows)", file=file)
        columns = [name.strip() for name in records[0]]
        records = records[1:]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise DataError(f"header repeats column(s) {', '.join(map(repr, repeated))}", file=file, column=repeated[0])
    else:
        columns = list(names)
    if not records:
        raise DataError("no data rows", file=file)

    width = len(columns)
    sep_name = "tab" if sep == "\t" else repr(sep)
    problems: list[Problem] = []
    if all(len(record) == width for record in records):  # the common case: no per-row bookkeeping
        good, rows = records, range(1, len(records) + 1)
    else:
        good, rows = [], []
        for row, record in enumerate(records, start=1):
            if len(record) == width:
                good.append(record)
                rows.append(row)
            else:
                found = f"expected {width} {sep_name}-separated fields, found {len(record)}"
                problems.append(Problem(file, row, None, "blank line" if not record else found))
    values = list(zip(*good)) if good else [()] * width
    frame = pl.DataFrame(
        [pl.Series(name, col, dtype=pl.Utf8) for name, col in zip(columns, values)]
        + [pl.Series(ROW, list(rows), dtype=pl.Int64)]
    )
    return Delimited(file=file, columns=columns, frame=frame, rows_read=len(records), problems=problems)
