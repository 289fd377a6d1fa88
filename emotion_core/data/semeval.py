"""SemEval-2018 Task 1 E-c (English) reader: 11 emotions, multi-label, tweets.

- Official files: tab-separated, header ``ID Tweet anger ... trust``, 0/1 labels, read raw (no quoting);
  Kaggle-style CSVs with the same columns are read quote-aware.
- ``path``: one file (train) or a folder: ``train.txt``, ``dev.txt`` -> validation, ``test.txt`` -> test,
  ``test-unlabelled.txt`` -> predict (also ``.tsv``/``.csv`` and the official ``2018-E-c-En-*.txt`` names).
  A test file whose labels are all ``NONE`` (or absent) is the unlabelled ``predict`` split.
- Label columns are matched by name; the schema order is the official one (``LABELS``).

Limits: tab-separated files are not unquoted (a tweet keeps its ``"`` characters).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from emotion_core.data.delimited import first_line, parse_delimited, read_file, separator_for
from emotion_core.data.hashing import DataHasher
from emotion_core.data.source import ROW, RawFile, SourceData
from emotion_core.data.validate import all_none, binary_label_matrix
from emotion_core.errors import DataError
from emotion_core.labels import LabelSchema

LABELS = (
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "love",
    "optimism",
    "pessimism",
    "sadness",
    "surprise",
    "trust",
)
ID, TEXT = "ID", "Tweet"
FILE_NAMES = {
    "train": ("train.txt", "train.tsv", "train.csv", "2018-E-c-En-train.txt"),
    "validation": ("dev.txt", "dev.tsv", "dev.csv", "validation.txt", "validation.csv", "2018-E-c-En-dev.txt"),
    "test": ("test.txt", "test.tsv", "test.csv", "2018-E-c-En-test-gold.txt"),
    "predict": ("test-unlabelled.txt", "test-unlabelled.tsv", "test-unlabelled.csv", "2018-E-c-En-test.txt"),
}


def check_columns(columns: list[str], file: str, *, labels_optional: bool) -> bool:
    """Raise naming missing or unexpected columns; return whether the label columns are present."""
    required = [ID, TEXT] + ([] if labels_optional and not set(LABELS) & set(columns) else list(LABELS))
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(map(repr, missing))}; found: {', '.join(columns)}",
            file=file,
            column=missing[0],
        )
    extra = [c for c in columns if c not in (ID, TEXT, *LABELS)]
    if extra:
        raise DataError(
            f"unexpected column(s) {', '.join(map(repr, extra))}; a SemEval E-c file has ID, Tweet and the "
            f"11 emotion columns ({', '.join(LABELS)})",
            file=file,
            column=extra[0],
        )
    return set(LABELS) <= set(columns)


def read_semeval_file(path: Path, role: str, hasher: DataHasher) -> RawFile:
    data = read_file(path)
    hasher.add_bytes(role, data)
    sep = separator_for(path, first_line(data))
    # The official TSVs are not CSV-quoted (a tweet may start with a quote); Kaggle CSVs are.
    parsed = parse_delimited(data, file=str(path), sep=sep, quoted=sep == ",")
    has_labels = check_columns(parsed.columns, parsed.file, labels_optional=role in ("test", "predict"))
    frame = parsed.frame.rename({ID: "id", TEXT: "text"})
    problems = list(parsed.problems)
    labels = None
    if role == "predict" or (role == "test" and (not has_labels or all_none(frame, list(LABELS)))):
        role = "predict"  # unlabelled: whatever the label columns hold is not read
    else:
        labels, label_problems = binary_label_matrix(frame, list(LABELS), parsed.file)
        problems += label_problems
    return RawFile(
        role=role,
        file=parsed.file,
        frame=frame.select("id", "text", ROW),
        labels=labels,
        rows_read=parsed.rows_read,
        id_name=ID,
        text_name=TEXT,
        problems=problems,
    )


def read_semeval(path: Path, hasher: DataHasher) -> SourceData:
    """Read a SemEval E-c folder or a single (training) file."""
    if path.is_dir():
        files = {}
        for role, names in FILE_NAMES.items():
            found = [path / name for name in names if (path / name).is_file()]
            if found:
                files[role] = found[0]
        if "train" not in files:
            names = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise DataError(f"no train.txt in this SemEval E-c folder (found: {names})", file=str(path))
    else:
        files = {"train": path}
    raws = [read_semeval_file(p, role, hasher) for role, p in files.items()]
    predict = [raw for raw in raws if raw.role == "predict"]
    if len(predict) > 1:
        raise DataError(
            f"two unlabelled test files ({predict[0].file} and {predict[1].file}); keep one", file=predict[1].file
        )
    return SourceData(schema=LabelSchema(LABELS), raws=raws, id_column=ID, files={raw.role: raw.file for raw in raws})


def hub_split(frame: pl.DataFrame, role: str, file: str) -> RawFile:
    """One hub split (``ID``, ``Tweet``, 0/1 label columns) -> ``RawFile``."""
    check_columns(frame.columns, file, labels_optional=False)
    frame = frame.with_columns(pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias(ROW))
    matrix, problems = binary_label_matrix(frame, list(LABELS), file)
    frame = frame.select(pl.col(ID).cast(pl.Utf8).alias("id"), pl.col(TEXT).cast(pl.Utf8).alias("text"), ROW)
    return RawFile(role, file, frame, matrix, frame.height, ID, TEXT, problems)
