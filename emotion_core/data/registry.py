"""Dataset registry: each named dataset's reader, default location, hub source, label names and official metric.

- ``DATASETS``: name -> ``DatasetSpec``. ``load_data``, ``locate``, the hub fallback and ``DataConfig``'s check
  of ``data.dataset`` all read it, so a new format is a reader module plus one entry here (CONTRIBUTING.md).
- ``official_metric(data_cfg)``: the metric that tunes thresholds, chooses checkpoints, ranks runs and gates the
  champion: the dataset's (GoEmotions macro-F1, SemEval E-c Jaccard), or ``data.metric`` for ``tabular``.

Limits: metrics are keys of ``metrics.multilabel_metrics`` listed in ``metrics.RANKING_METRICS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emotion_core.labels import LabelSchema

if TYPE_CHECKING:  # the readers need polars; the registry is read where polars is not installed (GPU ranks)
    import polars as pl

    from emotion_core.data.hashing import DataHasher
    from emotion_core.data.source import RawFile, SourceData


def _imported(module: str, function: str) -> Callable:
    """``module.function``, imported at the first call, so reading the registry imports no reader."""

    def call(*args):
        return getattr(importlib.import_module(module), function)(*args)

    return call


DEFAULT_METRIC = "macro_f1"
"""Official metric of a dataset that declares none (``tabular`` without ``data.metric``)."""


@dataclass(frozen=True)
class HubSource:
    """Where the hub fallback finds a dataset, and how one hub split becomes a ``RawFile``."""

    hub_id: str
    config: str
    schema: Callable[[object], LabelSchema]
    """The loaded ``DatasetDict`` -> label schema."""
    to_raw: Callable[[pl.DataFrame, str, str, LabelSchema], RawFile]
    """(split frame, role, file name for errors, schema) -> ``RawFile``."""
    id_column: str


@dataclass(frozen=True)
class DatasetSpec:
    """One named dataset format."""

    name: str
    read: Callable[[Path, object, DataHasher], SourceData]
    """(path, ``DataConfig``, hasher) -> ``SourceData``."""
    folder: str | None
    """Folder under ``$EMOTION_DATA_DIR``; None: the dataset needs ``data.path``."""
    hub: HubSource | None
    labels: str
    """Where the label names come from (shown in docs and ``emotion show-config``)."""
    metric: str | None
    """Official metric (a ``multilabel_metrics`` key); None: chosen by ``data.metric``."""
    also_report: tuple[str, ...] = ()
    """Other metrics the task's papers report, shown next to the official one."""


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="goemotions",
            read=lambda path, cfg, hasher: _imported("emotion_core.data.goemotions", "read_goemotions")(path, hasher),
            folder="goemotions",
            hub=HubSource(
                "google-research-datasets/go_emotions",
                "simplified",
                schema=lambda loaded: LabelSchema(tuple(loaded["train"].features["labels"].feature.names)),
                to_raw=_imported("emotion_core.data.goemotions", "hub_split"),
                id_column="id",
            ),
            labels="labels.txt beside the TSVs (hub: the dataset's label feature)",
            metric="macro_f1",
            also_report=("micro_f1",),
        ),
        DatasetSpec(
            name="semeval2018-ec",
            read=lambda path, cfg, hasher: _imported("emotion_core.data.semeval", "read_semeval")(path, hasher),
            folder="semeval2018-ec",
            hub=HubSource(
                "SemEvalWorkshop/sem_eval_2018_task_1",
                "subtask5.english",
                schema=lambda loaded: LabelSchema(importlib.import_module("emotion_core.data.semeval").LABELS),
                to_raw=lambda frame, role, file, schema: _imported("emotion_core.data.semeval", "hub_split")(
                    frame, role, file
                ),
                id_column="ID",  # semeval.ID
            ),
            labels="the 11 official emotions (fixed order)",
            metric="jaccard_samples",  # the task's official score (Mohammad et al., 2018), micro/macro-F1 beside it
            also_report=("micro_f1", "macro_f1"),
        ),
        DatasetSpec(
            name="tabular",
            read=_imported("emotion_core.data.tabular", "read_tabular"),
            folder=None,
            hub=None,
            labels="data.label_columns, else every column but text and id",
            metric=None,
        ),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def official_metric(data_cfg) -> str:
    """The metric ``data_cfg``'s runs are tuned, selected and ranked on (see the module docstring)."""
    spec = dataset_spec(data_cfg.dataset)
    return spec.metric or getattr(data_cfg, "metric", None) or DEFAULT_METRIC


def reported_metrics(data_cfg) -> tuple[str, ...]:
    """The official metric first, then the others the dataset's task reports."""
    official = official_metric(data_cfg)
    return (official,) + tuple(m for m in dataset_spec(data_cfg.dataset).also_report if m != official)
