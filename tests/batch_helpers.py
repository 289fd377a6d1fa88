"""Shared by the batch inference tests (imported as ``batch_helpers``): a tiny FFNN run and input files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from helpers import write_tiny_tabular

TINY = {"model": {"family": "ffnn", "max_features": 200, "hidden_size": 8, "min_df": 1},
        "training": {"epochs": 3, "batch_size": 8, "early_stopping_patience": None, "checkpoint_every_steps": 0},
        "resources": {"gpu_memory_gb": 2}}


def train_tiny_run(folder: Path, store) -> str:
    """Train and publish one tiny FFNN run (labels joy, anger; seconds) into ``store``; returns its run id."""
    from emotion_core.config import parse_run_config
    from emotion_core.pipeline import train_config

    write_tiny_tabular(folder / "train.csv", rows=120)
    raw = {"name": "tiny-batch", **TINY, "data": {"dataset": "tabular", "id_column": "id",
                                                  "path": str(folder / "train.csv")}}
    return train_config(parse_run_config(raw), store).rstrip("/").rsplit("/", 1)[-1]


def texts_frame(rows: int) -> pl.DataFrame:
    """``rows`` varied texts with ids ``t0``, ``t1``...: some joyful, some angry, some with commas and quotes."""
    words = ["happy lovely", "calm", "furious mad", "fine", 'say "hi", then', "day", "sunny, warm", "grr"]
    return pl.DataFrame({"id": [f"t{i}" for i in range(rows)],
                         "text": [f"{words[i % 8]} {words[(i * 7 + 3) % 8]} {i % 97}" for i in range(rows)]})


def promote(store, run_id: str) -> None:
    """Record ``run_id`` as its dataset's champion in ``store``'s registry, as the nightly champion step does."""
    from emotion_core.registry import Decision, Registry, dataset_key_of

    Registry(store).record(Decision(
        dataset_key=dataset_key_of(store.read_manifest(run_id)), promoted=True, reason="test: promoted by hand",
        challenger_run_id=run_id, challenger_name="tiny-batch", challenger_macro_f1=0.9, champion_run_id=None,
        champion_name=None, champion_macro_f1=None, margin=0.005, alpha=0.05, p_value=None, delta=None,
        test_rows=None))
