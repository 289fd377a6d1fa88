"""Shared by the batch inference tests (imported as ``batch_helpers``): a tiny FFNN run and input files."""

from __future__ import annotations

from pathlib import Path

import helpers
import polars as pl


def train_tiny_run(folder: Path, store) -> str:
    """Train and publish one tiny FFNN run (labels joy, anger; seconds) into ``store``; returns its run id."""
    return helpers.train_tiny_run(folder, store, "tiny-batch").rstrip("/").rsplit("/", 1)[-1]


def texts_frame(rows: int) -> pl.DataFrame:
    """``rows`` varied texts with ids ``t0``, ``t1``...: some joyful, some angry, some with commas and quotes."""
    words = ["happy lovely", "calm", "furious mad", "fine", 'say "hi", then', "day", "sunny, warm", "grr"]
    return pl.DataFrame(
        {
            "id": [f"t{i}" for i in range(rows)],
            "text": [f"{words[i % 8]} {words[(i * 7 + 3) % 8]} {i % 97}" for i in range(rows)],
        }
    )


def promote(store, run_id: str) -> None:
    """Record ``run_id`` as its dataset's champion in ``store``'s registry, as the nightly champion step does."""
    from emotion_core.registry import Decision, Registry, dataset_key_of

    Registry(store).record(
        Decision(
            dataset_key=dataset_key_of(store.read_manifest(run_id)),
            promoted=True,
            reason="test: promoted by hand",
            challenger_run_id=run_id,
            challenger_name="tiny-batch",
            challenger_macro_f1=0.9,
            champion_run_id=None,
            champion_name=None,
            champion_macro_f1=None,
            margin=0.005,
            alpha=0.05,
            p_value=None,
            delta=None,
            test_rows=None,
        )
    )
