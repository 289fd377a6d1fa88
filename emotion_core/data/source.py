"""What every reader hands to the loader: parsed files with their row problems, and the label schema.

- ``Problem``: one bad row (file, 1-based data row, column, reason).
- ``RawFile``: one file or hub split: ids, texts, 0/1 labels (``None`` when unlabelled), row numbers, problems.
- ``SourceData``: a dataset's files in role order, its ``LabelSchema`` and id column name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from emotion_core.errors import DataError
from emotion_core.labels import LabelSchema

ROLES = ("train", "validation", "test", "predict")
"""File roles (and split names), in the order they are read, hashed and stacked."""

ROW = "__row__"
"""Frame column holding each row's 1-based data-row number in its source file."""


@dataclass(frozen=True)
class Problem:
    file: str
    row: int
    column: str | None
    reason: str

    def to_error(self) -> DataError:
        return DataError(self.reason, file=self.file, row=self.row, column=self.column)

    def to_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "column": self.column, "reason": self.reason}


@dataclass
class RawFile:
    """One file (or hub split) after parsing, before row checks."""

    role: str
    """train | validation | test | predict."""
    file: str
    """Path (or hub reference) named in errors and in the report."""
    frame: pl.DataFrame
    """Columns ``id``, ``text`` (Utf8) and ``ROW`` (Int64), one row per well-formed source row."""
    labels: np.ndarray | None
    """uint8 (rows, labels) aligned with ``frame``; ``None`` for an unlabelled file."""
    rows_read: int
    """Data rows in the file, malformed ones included."""
    id_name: str
    """The id column's name in the source (used in error messages)."""
    text_name: str
    """The text column's name in the source."""
    problems: list[Problem] = field(default_factory=list)


@dataclass
class SourceData:
    """A dataset as read: files in role order (at most one per role) and what describes them."""

    schema: LabelSchema
    raws: list[RawFile]
    id_column: str
    """The id column's name in the source ("id", "ID", a tabular id column, or "row")."""
    files: dict[str, str]
    """Role -> path (or hub reference) of every file read, including a label-names file ("labels")."""
