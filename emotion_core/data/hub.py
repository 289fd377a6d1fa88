"""Hub fallback: GoEmotions and SemEval E-c from the Hugging Face hub via ``datasets``.

- ``datasets`` is imported only here, only when no local data is found.
- Hub splits map to the same roles and go through the same row checks as local files.
- Any failure is a ``DataError`` naming the three ways out: ``data.path``, ``$EMOTION_DATA_DIR``, or going online.

Limits: the data hash covers the rows as loaded, not the hub's files.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from emotion_core.data.hashing import DataHasher
from emotion_core.data.locate import ENV_VAR, FOLDERS, HUB
from emotion_core.data.semeval import ID, LABELS, TEXT, check_columns
from emotion_core.data.source import ROW, Problem, RawFile, SourceData
from emotion_core.data.validate import binary_label_matrix
from emotion_core.errors import DataError
from emotion_core.labels import LabelSchema

SPLITS = {"train": "train", "validation": "validation", "test": "test"}
"""Role -> hub split name."""


def _to_polars(split) -> pl.DataFrame:
    if hasattr(split, "to_polars"):
        return split.to_polars()
    return pl.from_arrow(split.with_format("arrow")[:])


def _goemotions(frame: pl.DataFrame, role: str, file: str, schema: LabelSchema) -> RawFile:
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
    return RawFile(role, file, frame.select(pl.col("id").cast(pl.Utf8), pl.col("text").cast(pl.Utf8), ROW),
                   matrix, n, "id", "text", problems)


def _semeval(frame: pl.DataFrame, role: str, file: str) -> RawFile:
    check_columns(frame.columns, file, labels_optional=False)
    frame = frame.with_columns(pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias(ROW))
    matrix, problems = binary_label_matrix(frame, list(LABELS), file)
    frame = frame.select(pl.col(ID).cast(pl.Utf8).alias("id"), pl.col(TEXT).cast(pl.Utf8).alias("text"), ROW)
    return RawFile(role, file, frame, matrix, frame.height, ID, TEXT, problems)


def read_hub(dataset: str, tried: str, hasher: DataHasher) -> SourceData:
    hub_id, config = HUB[dataset]
    try:
        import datasets  # lazy: only the hub path needs it

        loaded = datasets.load_dataset(hub_id, config)
    except Exception as exc:  # offline, missing package, hub errors: all end the same way for the user
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"no local {dataset} data ({tried}), and the hub dataset {hub_id!r} (config {config!r}) could not be "
            f"loaded ({type(exc).__name__}: {detail[:300]}). Either set data.path to the data's file or folder, "
            f"or set {ENV_VAR} to a folder holding '{FOLDERS[dataset]}/', or go online so the hub can be reached."
        ) from None

    hasher.add_bytes("hub", f"{hub_id}/{config}".encode())
    raws: list[RawFile] = []
    schema = LabelSchema(LABELS)
    if dataset == "goemotions":
        schema = LabelSchema(tuple(loaded["train"].features["labels"].feature.names))
    for role, split_name in SPLITS.items():
        if split_name not in loaded:
            continue
        file = f"hub:{hub_id}/{config}:{split_name}"
        frame = _to_polars(loaded[split_name])
        if frame.height == 0:
            raise DataError("no data rows", file=file)
        hasher.add_bytes(role, frame.write_ndjson().encode())  # NDJSON: GoEmotions labels are lists
        if dataset == "goemotions":
            raws.append(_goemotions(frame, role, file, schema))
        else:
            raws.append(_semeval(frame, role, file))
    if not raws or raws[0].role != "train":
        raise DataError(f"the hub dataset has no train split (splits: {', '.join(loaded)})", file=f"hub:{hub_id}")
    return SourceData(
        schema=schema,
        raws=raws,
        id_column="id" if dataset == "goemotions" else ID,
        files={raw.role: raw.file for raw in raws},
    )
