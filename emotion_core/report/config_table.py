"""Comparison table of a config set from its run manifests: one row per config, completed or failed.

Features
- Headline metrics at each run's threshold policy (named in a column), validation and test; ranked by the
  validation score on each run's official metric (``metric``, ``val_score``); a failed config is a row with its
  error. Markdown (people, artifacts) and CSV (tools), written atomically.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from emotion_core.files import atomic_write_text

COLUMNS = [
    "config",
    "status",
    "family",
    "model",
    "thresholds",
    "metric",
    "val_score",
    "val_macro_f1",
    "val_micro_f1",
    "test_macro_f1",
    "test_micro_f1",
    "test_jaccard",
    "trainable_params",
    "train_rows",
    "epochs",
    "train_samples_per_s",
    "train_seconds",
    "peak_rss_mb",
    "peak_gpu_mb",
    "flags",
    "worker",
    "run_id",
    "error",
]


def _row(entry: dict) -> dict:
    manifest = entry.get("manifest")
    if manifest is None:
        return {
            "config": entry["config"],
            "status": entry.get("status", "failed"),
            "run_id": entry.get("run_id"),
            "error": entry.get("error", ""),
        }
    where = manifest.get("orchestration") or {}
    policy = manifest["threshold_policy"]
    summary = manifest["summary"]
    test = summary.get("test", {}).get(policy, {})
    return {
        "config": manifest["config_name"],
        "status": manifest["status"],
        "family": manifest["family"],
        "model": manifest["model"],
        "thresholds": policy,
        "metric": manifest.get("metric", "macro_f1"),
        "val_score": summary["validation"][policy].get(manifest.get("metric", "macro_f1")),
        "val_macro_f1": summary["validation"][policy]["macro_f1"],
        "val_micro_f1": summary["validation"][policy]["micro_f1"],
        "test_macro_f1": test.get("macro_f1"),
        "test_micro_f1": test.get("micro_f1"),
        "test_jaccard": test.get("jaccard_samples"),
        "trainable_params": manifest["parameters"]["trainable"],
        "train_rows": manifest["data"]["rows"]["train"],
        "epochs": manifest["timing"]["epochs_completed"],
        "train_samples_per_s": manifest["timing"]["train_samples_per_second"],
        "train_seconds": manifest["timing"]["train_seconds"],
        "peak_rss_mb": manifest["memory"]["peak_rss_mb"],
        "peak_gpu_mb": manifest["memory"]["peak_gpu_allocated_mb"],
        "flags": "; ".join(f["code"] for f in manifest["flags"]),
        "worker": where.get("worker") or where.get("host"),
        "run_id": manifest["run_id"],
        "error": "",
    }


def comparison_table(entries: list[dict]) -> pl.DataFrame:
    """``entries``: ``{"config", "manifest"}`` for completed runs, ``{"config", "status", "error"}`` for failed ones.

    Completed rows are sorted by validation score on their official metric (best first); failed rows follow.
    """
    rows = [_row(e) for e in entries]
    frame = pl.DataFrame(
        [{c: r.get(c) for c in COLUMNS} for r in rows],
        schema_overrides={
            "metric": pl.Utf8,
            "val_score": pl.Float64,
            "val_macro_f1": pl.Float64,
            "val_micro_f1": pl.Float64,
            "test_macro_f1": pl.Float64,
            "test_micro_f1": pl.Float64,
            "test_jaccard": pl.Float64,
            "trainable_params": pl.Int64,
            "train_rows": pl.Int64,
            "epochs": pl.Float64,
            "train_samples_per_s": pl.Float64,
            "train_seconds": pl.Float64,
            "peak_rss_mb": pl.Float64,
            "peak_gpu_mb": pl.Float64,
        },
        infer_schema_length=None,
    )
    return frame.sort(["status", "val_score"], descending=[False, True], nulls_last=True)


def format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1:
            return f"{int(value):,}"  # epochs, counts: no spurious decimals
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(frame: pl.DataFrame, columns: list[str] | None = None) -> str:
    columns = columns or [c for c in frame.columns if c not in ("run_id",)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.select(columns).iter_rows():
        lines.append("| " + " | ".join(format_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(frame: pl.DataFrame, folder: Path, title: str) -> dict[str, Path]:
    """Write ``comparison.md`` and ``comparison.csv`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown = f"# {title}\n\nMetrics at each run's threshold policy (tuned on validation only).\n\n" + to_markdown(
        frame
    )
    md, csv = folder / "comparison.md", folder / "comparison.csv"
    atomic_write_text(md, markdown)
    atomic_write_text(csv, frame.write_csv())
    return {"markdown": md, "csv": csv}
