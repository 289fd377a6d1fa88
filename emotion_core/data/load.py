"""``load_data``: locate, read, validate, split and subset a dataset into one ``EmotionData``.

- Steps: locate (``data.path``, a pushed ``data.store_ref`` fetched and verified, the data folder, the hub) ->
  read (the dataset's registered reader) -> row checks and the ``invalid_rows`` policy -> tweet preprocessing
  (``data.preprocess``) -> carve missing splits (test, then validation, each a share of the original train rows)
  -> seeded subsets (``max_*_samples``) -> table, report and hash.
- Nothing is silent: dropped rows, carved splits and subsets are recorded in ``data.report``.

Limits: everything is held in memory (GoEmotions, 49k rows, loads in about 2 s).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import polars as pl

from emotion_core.config import DataConfig
from emotion_core.data.dataset import EmotionData
from emotion_core.data.hashing import DataHasher
from emotion_core.data.load_report import DataReport
from emotion_core.data.locate import locate
from emotion_core.data.preprocess import preprocess_texts
from emotion_core.data.registry import dataset_spec
from emotion_core.data.source import ROLES, SourceData
from emotion_core.data.splits import carve, carved_size, subset
from emotion_core.data.validate import check_rows
from emotion_core.errors import DataError
from emotion_core.labels import LabelSchema

log = logging.getLogger(__name__)

Part = tuple[pl.DataFrame, "np.ndarray | None"]


def _read(cfg: DataConfig, hasher: DataHasher, location) -> SourceData:
    if location.path is None:
        from emotion_core.data.hub import read_hub

        return read_hub(cfg.dataset, location.tried, hasher)
    return dataset_spec(cfg.dataset).read(location.path, cfg, hasher)


def _texts(frame: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """``id`` and ``text``, the text normalised when ``data.preprocess`` is set (after the row checks)."""
    frame = frame.select("id", "text")
    if cfg.preprocess is None:
        return frame
    return frame.with_columns(
        pl.Series("text", preprocess_texts(frame["text"].to_list(), cfg.preprocess), dtype=pl.Utf8)
    )


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _carve_missing(parts: dict[str, Part], cfg: DataConfig, report: DataReport) -> None:
    n_train = parts["train"][0].height
    for name, fraction in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
        if name in parts:
            continue
        frame, labels = parts["train"]
        # Each carved split is `fraction` of the original train rows, not of what is left.
        kept, carved = carve(labels, carved_size(fraction, n_train), cfg.seed, what=name)
        parts[name] = (frame[carved], labels[carved])
        parts["train"] = (frame[kept], labels[kept])
        report.carved[name] = (
            f"{_percent(fraction)} of train ({len(carved)} of {n_train} rows), "
            f"seeded multi-label stratified (seed {cfg.seed})"
        )


def _subset(parts: dict[str, Part], cfg: DataConfig, report: DataReport) -> None:
    limits = (
        ("train", cfg.max_train_samples),
        ("validation", cfg.max_validation_samples),
        ("test", cfg.max_test_samples),
    )
    for stream, (name, limit) in enumerate(limits):
        frame, labels = parts[name]
        if limit is None or limit >= frame.height:
            continue
        keep = subset(frame.height, limit, cfg.seed, stream)
        parts[name] = (frame[keep], labels[keep])
        report.subsets[name] = f"{limit} of {frame.height} rows, seeded (seed {cfg.seed})"


def _split_frame(name: str, frame: pl.DataFrame, labels: np.ndarray | None, schema: LabelSchema) -> pl.DataFrame:
    n = frame.height
    if labels is None:
        columns = [pl.Series(label, [None] * n, dtype=pl.UInt8) for label in schema.names]
    else:
        columns = [pl.Series(label, labels[:, j], dtype=pl.UInt8) for j, label in enumerate(schema.names)]
    return frame.select("id", "text").with_columns(pl.lit(name, dtype=pl.Utf8).alias("split")).hstack(columns)


def load_data(cfg: DataConfig, store=None) -> EmotionData:
    """Read, validate, split and subset the data ``cfg`` describes (see the module docstring).

    ``store``: the run's artefact store, where a bare ``data.store_ref`` is read (default ``$EMOTION_STORE``).
    """
    started = time.perf_counter()
    hasher = DataHasher()
    location = locate(cfg, store)
    source = _read(cfg, hasher, location)
    rows_read = {raw.role: raw.rows_read for raw in source.raws}
    dropped = check_rows(source.raws, cfg.invalid_rows)
    report = DataReport(
        files=dict(source.files), rows_read=rows_read, dropped=[p.to_dict() for p in dropped], pushed=location.pushed
    )
    for raw in source.raws:
        if raw.frame.height == 0:
            raise DataError(f"no rows left: all {raw.rows_read} row(s) were invalid and dropped", file=raw.file)

    parts: dict[str, Part] = {raw.role: (_texts(raw.frame, cfg), raw.labels) for raw in source.raws}
    _carve_missing(parts, cfg, report)
    _subset(parts, cfg, report)

    frames = []
    for name in ROLES:
        if name not in parts:
            continue
        frame, labels = parts[name]
        frames.append(_split_frame(name, frame, labels, source.schema))
        report.rows_used[name] = frame.height
        if labels is not None:
            report.label_counts[name] = {
                label: int(count) for label, count in zip(source.schema.names, labels.sum(axis=0, dtype=np.int64))
            }
            report.rows_without_labels[name] = int((labels.sum(axis=1) == 0).sum())
    table = pl.concat(frames, how="vertical")

    # Options that change which rows are used; where the bytes come from is left out on purpose (same bytes, same
    # hash: a pushed copy of a local file hashes like the file).
    hasher.add_options(cfg.model_dump(mode="json", exclude={"path", "store_ref"}))
    data = EmotionData(
        table=table, schema=source.schema, report=report, data_hash=hasher.hexdigest(), id_column=source.id_column
    )
    log.info(
        "loaded %s: %s in %.2f s (%d dropped)",
        cfg.dataset,
        report.rows_used,
        time.perf_counter() - started,
        len(dropped),
    )
    return data
