"""Summary table of a config set's model entries (``records.ReportEntry`` as dicts).

Features
- ``summary_table``: one row per entry (``SUMMARY_COLUMNS``), best validation score on the official metric first
  (``metric``: the dataset's, e.g. Jaccard for SemEval E-c; test is only reported), failed entries last with
  their error: test F1s and Jaccard with 95 % CIs, subset accuracy,
  PR/ROC-AUC, Brier, ECE before/after temperature scaling, the paired delta vs the best model.
- ``to_markdown`` and ``display_columns``: the same formatted cells for the Markdown and the HTML report.

Limits
- Reads the entries only; a missing block (``test``, ``calibration``) gives empty cells. Without a
  calibration block "ECE before" falls back to ``test.ece`` (the same number).
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from emotion_core.metrics import METRIC_NAMES
from emotion_core.report.config_table import format_cell

__all__ = [
    "SUMMARY_COLUMNS",
    "display_columns",
    "display_rows",
    "format_ci",
    "ranked_entries",
    "ranking_metrics",
    "summary_row",
    "summary_table",
    "to_markdown",
]

SUMMARY_COLUMNS = [
    "model",
    "method",
    "family",
    "base_model",
    "trainable_params",
    "total_params",
    "trainable_pct",
    "train_seconds",
    "train_samples_per_s",
    "peak_memory_mb",
    "metric",
    "val_score",
    "val_held_out",
    "val_macro_f1",
    "test_macro_f1",
    "test_macro_f1_low",
    "test_macro_f1_high",
    "test_micro_f1",
    "test_micro_f1_low",
    "test_micro_f1_high",
    "test_jaccard",
    "test_jaccard_low",
    "test_jaccard_high",
    "test_subset_accuracy",
    "ece_flat_before",
    "ece_flat_after",
    "ece_label_mean_before",
    "ece_label_mean_after",
    "pr_auc_macro",
    "roc_auc_macro",
    "brier",
    "delta_vs_best",
    "delta_low",
    "delta_high",
    "p_vs_best",
    "status",
    "error",
    "run_id",
    "dataset",
]

_INTS = ["trainable_params", "total_params"]
_TEXT = {"model", "method", "family", "base_model", "metric", "status", "error", "run_id", "dataset"}
_FLOATS = [c for c in SUMMARY_COLUMNS if c not in _TEXT and c not in _INTS]


def _is_failed(entry: dict) -> bool:
    return entry.get("status") != "completed"


def validation_score(entry: dict) -> float | None:
    """What ranks an entry: validation score on its official metric (entries from before: validation macro-F1)."""
    score = entry.get("validation_score")
    return entry.get("validation_macro_f1") if score is None else score


def ranking_metrics(entries: list[dict]) -> list[str]:
    """The metrics the completed entries are ranked on, as the report names them (one, unless datasets mix)."""
    found = {entry.get("metric") or "macro_f1" for entry in entries if not _is_failed(entry)}
    return [METRIC_NAMES.get(m, m) for m in sorted(found)]


def dataset_of(entries: list[dict]) -> Callable[[dict], str | None]:
    """``entry -> dataset key``: a run's own; an ensemble's dict carries none, it takes its first member's."""
    of_name = {entry.get("name"): entry.get("dataset_key") for entry in entries}

    def dataset(entry: dict) -> str | None:
        if entry.get("dataset_key") is None and entry.get("members"):
            return of_name.get(entry["members"][0])
        return entry.get("dataset_key")

    return dataset


def ranked_entries(entries: list[dict]) -> list[dict]:
    """Completed entries by validation score on the official metric (best first; a missing score after the
    scored; an ensemble that did not beat its best member out of fold after the runs), then failed ones, each group
    otherwise in input order (stable), so every view agrees."""

    # A set over several datasets (the gpu set: GoEmotions and SemEval E-c): each dataset ranked on its own,
    # datasets in order of first appearance (an ensemble, without a dataset key, joins its members' dataset).
    dataset = dataset_of(entries)
    order: dict = {}
    for entry in entries:
        order.setdefault(dataset(entry), len(order))

    def key(item: tuple[int, dict]) -> tuple:
        position, entry = item
        score = validation_score(entry)
        unranked = entry.get("family") == "ensemble" and (entry.get("ensemble") or {}).get("eligible") is False
        return (_is_failed(entry), order[dataset(entry)], unranked, score is None, -(score or 0.0), position)

    return [e for _, e in sorted(enumerate(entries), key=key)]


def _get(block: dict | None, *path: str):
    for step in path:
        if not isinstance(block, dict):
            return None
        block = block.get(step)
    return block


def summary_row(entry: dict) -> dict:
    """The ``SUMMARY_COLUMNS`` values of one entry (``None`` where unknown)."""
    test = entry.get("test")
    cal = entry.get("calibration")
    paired = entry.get("paired_vs_best")
    trainable, total = entry.get("trainable_params"), entry.get("total_params")
    pct = 100.0 * trainable / total if trainable is not None and total else None

    ece_before = _get(cal, "ece", "test", "before")
    if ece_before is None and test is not None:
        # Same number: calibrate_run's "before" is the ECE of the raw test probabilities.
        ece_before = test.get("ece")
    ece_after = _get(cal, "ece", "test", "after")
    failed = _is_failed(entry)
    return {
        "model": entry.get("name"),
        "method": entry.get("method"),
        "family": entry.get("family"),
        "base_model": entry.get("model"),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": pct,
        "train_seconds": entry.get("train_seconds"),
        "train_samples_per_s": entry.get("train_samples_per_s"),
        "peak_memory_mb": entry.get("peak_memory_mb"),
        "metric": entry.get("metric") or "macro_f1",
        "val_score": validation_score(entry),
        "val_held_out": entry.get("validation_held_out"),
        "val_macro_f1": entry.get("validation_macro_f1"),
        "test_macro_f1": _get(test, "macro_f1_ci", "estimate"),
        "test_macro_f1_low": _get(test, "macro_f1_ci", "low"),
        "test_macro_f1_high": _get(test, "macro_f1_ci", "high"),
        "test_micro_f1": _get(test, "micro_f1_ci", "estimate"),
        "test_micro_f1_low": _get(test, "micro_f1_ci", "low"),
        "test_micro_f1_high": _get(test, "micro_f1_ci", "high"),
        "test_jaccard": _get(test, "metrics", "jaccard_samples"),
        "test_jaccard_low": _get(test, "jaccard_samples_ci", "low"),
        "test_jaccard_high": _get(test, "jaccard_samples_ci", "high"),
        "test_subset_accuracy": _get(test, "metrics", "subset_accuracy"),
        "ece_flat_before": _get(ece_before, "flat"),
        "ece_flat_after": _get(ece_after, "flat"),
        "ece_label_mean_before": _get(ece_before, "per_label_mean"),
        "ece_label_mean_after": _get(ece_after, "per_label_mean"),
        "pr_auc_macro": _get(test, "pr_auc", "macro"),
        "roc_auc_macro": _get(test, "roc_auc", "macro"),
        "brier": _get(test, "brier", "mean"),
        "delta_vs_best": _get(paired, "delta"),
        "delta_low": _get(paired, "low"),
        "delta_high": _get(paired, "high"),
        "p_vs_best": _get(paired, "p_value"),
        "status": "failed" if failed else "completed",
        # A failed entry always says why, even when the producer forgot to.
        "error": (entry.get("error") or "unknown error") if failed else "",
        "run_id": entry.get("run_id"),
    }


def summary_table(entries: list[dict]) -> pl.DataFrame:
    """One row per entry (``SUMMARY_COLUMNS``), ordered as ``ranked_entries``: best validation
    macro-F1 first, failed rows last with their error."""
    dataset = dataset_of(entries)
    rows = [summary_row(e) | {"dataset": dataset(e)} for e in ranked_entries(entries)]
    schema = {c: pl.Float64 if c in _FLOATS else pl.Int64 if c in _INTS else pl.String for c in SUMMARY_COLUMNS}
    # Built column-wise with an explicit schema: an all-failed set (every number None) still has typed columns.
    return pl.DataFrame({c: [r[c] for r in rows] for c in SUMMARY_COLUMNS}, schema=schema)


# --------------------------------------------------------------------------- display


def format_ci(estimate: float | None, low: float | None, high: float | None, digits: int = 3) -> str:
    """``0.512 [0.498, 0.526]``; the bare estimate when the interval is unknown, ``""`` without one."""
    if estimate is None:
        return ""
    if low is None or high is None:
        return f"{estimate:.{digits}f}"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _plain(column: str) -> Callable[[dict], str]:
    # Numbers through config_table.format_cell (same look as the run comparison); text stays raw here and is
    # escaped once by the renderer (Markdown pipes, or html.escape), never twice.
    return lambda row: row[column] if isinstance(row[column], str) else format_cell(row[column])


def _before_after(before: str, after: str) -> Callable[[dict], str]:
    def fmt(row: dict) -> str:
        b, a = row[before], row[after]
        if b is None:
            return ""
        return f"{b:.4f} → {a:.4f}" if a is not None else f"{b:.4f}"

    return fmt


def _delta(row: dict) -> str:
    if row["delta_vs_best"] is None:
        # The best model is the reference of every paired test; a failed one has none.
        return "reference" if row["status"] == "completed" and row.get("_rank") == 1 else ""  # 1 per dataset
    d, lo, hi = row["delta_vs_best"], row["delta_low"], row["delta_high"]
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else f"{d:+.3f}"


def _pct(row: dict) -> str:
    pct = row["trainable_pct"]
    return "" if pct is None else f"{pct:.3g} %"


QUALITY = [
    ("model", _plain("model")),
    ("method", _plain("method")),
    ("ranked by (validation)", lambda r: f"{METRIC_NAMES.get(r['metric'], r['metric'])} {format_cell(r['val_score'])}"),
    ("held out (5 folds)", _plain("val_held_out")),
    ("val macro-F1", _plain("val_macro_f1")),
    (
        "test macro-F1 [95% CI]",
        lambda r: format_ci(r["test_macro_f1"], r["test_macro_f1_low"], r["test_macro_f1_high"]),
    ),
    (
        "test micro-F1 [95% CI]",
        lambda r: format_ci(r["test_micro_f1"], r["test_micro_f1_low"], r["test_micro_f1_high"]),
    ),
    ("test Jaccard [95% CI]", lambda r: format_ci(r["test_jaccard"], r["test_jaccard_low"], r["test_jaccard_high"])),
    ("subset acc", _plain("test_subset_accuracy")),
    ("PR-AUC", _plain("pr_auc_macro")),
    ("ROC-AUC", _plain("roc_auc_macro")),
    ("Δ ranking metric vs best [95% CI]", _delta),
    # Not format_cell: it prints 1.0 as "1", and a p-value reads best at one fixed precision.
    ("p (vs best)", lambda r: "" if r["p_vs_best"] is None else f"{r['p_vs_best']:.4f}"),
    ("status", _plain("status")),
]
CALIBRATION_COST = [
    ("family", _plain("family")),
    ("Brier", _plain("brier")),
    ("ECE flat (before → after)", _before_after("ece_flat_before", "ece_flat_after")),
    ("ECE label mean (before → after)", _before_after("ece_label_mean_before", "ece_label_mean_after")),
    ("trainable params", _plain("trainable_params")),
    ("total params", _plain("total_params")),
    ("trainable", _pct),
    ("train s", _plain("train_seconds")),
    ("samples/s", _plain("train_samples_per_s")),
    ("peak memory MB", _plain("peak_memory_mb")),
]


def display_columns(part: str = "all") -> list[tuple[str, Callable[[dict], str]]]:
    """(header, formatter(row) -> str) of the displayed summary: ``"quality"`` (F1s with CIs, ranking
    metrics, the paired test), ``"calibration_cost"`` (Brier, ECE, parameters, time, memory; led by the
    model name) or ``"all"`` (both, then the error). Formatters return unescaped text;
    ``to_markdown`` escapes pipes, the HTML report ``html.escape``s.
    """
    if part == "quality":
        return list(QUALITY)
    if part == "calibration_cost":
        return [QUALITY[0], *CALIBRATION_COST]
    if part == "all":
        return [
            *QUALITY[:2],
            CALIBRATION_COST[0],
            *QUALITY[2:-1],
            *CALIBRATION_COST[1:],
            QUALITY[-1],
            ("error", _plain("error")),
        ]
    raise ValueError(f"part must be 'quality', 'calibration_cost' or 'all', got {part!r}")


def display_rows(frame: pl.DataFrame, part: str = "all") -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of ``frame`` (a ``summary_table``) for ``display_columns(part)``."""
    columns = display_columns(part)
    rows = []
    seen: dict = {}
    for row in frame.iter_rows(named=True):
        # Rank within the row's dataset: a set over several datasets has a best (the reference) for each.
        seen[row["dataset"]] = row["_rank"] = seen.get(row["dataset"], 0) + 1
        rows.append([fmt(row) for _, fmt in columns])
    return [h for h, _ in columns], rows


def to_markdown(frame: pl.DataFrame) -> str:
    """Markdown table of a ``summary_table``: every displayed column, F1s with their 95 % CI."""
    headers, rows = display_rows(frame, "all")
    escape = lambda text: text.replace("|", "\\|").replace("\n", " ")  # as config_table.format_cell
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape(c) for c in cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"
