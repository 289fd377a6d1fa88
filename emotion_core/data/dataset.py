"""EmotionData: one dataset, all its splits in one table, with its label schema, load report and hash.

- ``table``: ``id``, ``text``, ``split`` (train | validation | test | predict), one UInt8 column per label in
  schema order (null in the unlabelled ``predict`` rows); rows grouped by split, source order kept.
- Per split: ``split`` (frame), ``texts``, ``ids``, ``labels`` (float32 matrix, schema order).

Limits: immutable by convention only (a dataclass holding a polars frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from emotion_core.data.load_report import DataReport
from emotion_core.data.source import ROLES
from emotion_core.errors import DataError
from emotion_core.labels import LabelSchema


@dataclass
class EmotionData:
    table: pl.DataFrame
    """``id``, ``text``, ``split``, then one UInt8 column per label (schema order)."""
    schema: LabelSchema
    report: DataReport
    data_hash: str
    """``sha256:<hex>`` over the files read and the row-changing loader options."""
    id_column: str
    """The id column's name in the source: ``id`` (GoEmotions), ``ID`` (SemEval), a tabular id column or ``row``."""

    @property
    def split_names(self) -> list[str]:
        """Splits present, in table order."""
        present = set(self.table["split"].unique().to_list())
        return [name for name in ROLES if name in present]

    def split(self, name: str) -> pl.DataFrame:
        """Rows of one split (empty frame for a split this dataset does not have)."""
        if name not in ROLES:
            raise ValueError(f"unknown split {name!r}; splits are {', '.join(ROLES)}")
        return self.table.filter(pl.col("split") == name)

    def texts(self, split: str) -> list[str]:
        return self.split(split)["text"].to_list()

    def ids(self, split: str) -> list[str]:
        return self.split(split)["id"].to_list()

    def labels(self, split: str) -> np.ndarray:
        """float32 (rows, labels) 0/1 matrix in schema order."""
        if split == "predict":
            raise DataError("split 'predict' is unlabelled: it has no label matrix")
        frame = self.split(split).select(self.schema.names)
        return frame.to_numpy().astype(np.float32, copy=False).reshape(frame.height, len(self.schema))
