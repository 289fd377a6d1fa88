"""Cost-aware comparison: test quality against training cost and inference latency, per dataset.

- Quality: the test score on the dataset's official metric (``test.metrics[metric]``).
- Training cost: device-hours = ``train_seconds`` x ``devices`` / 3600; ``score_per_device_hour`` = quality / cost.
- Latency: batched inference ms per text, measured when the run predicted validation and test.
- ``pareto``: no other model of the dataset is at least as good on quality, cost and latency and better on one.
- ``cheapest_not_worse``: among models not significantly worse than the best by validation (the best itself, or
  at least 5 % of the paired bootstrap resamples favour the model: ``p_vs_best <= 0.95``, a one-sided test at
  0.05), the one with the lowest training cost (then latency).

Limits: models without a measured latency (runs from before it was recorded) are compared on quality and cost
only; CPU and GPU device-hours count the same.
"""

from __future__ import annotations

from emotion_core.metrics import METRIC_NAMES
from emotion_core.report.config_table import format_cell
from emotion_core.report.summary import ranked_entries

__all__ = ["COST_COLUMNS", "cost_display", "cost_markdown", "cost_rows"]

COST_COLUMNS = [
    "model",
    "metric",
    "test_score",
    "device_hours",
    "score_per_device_hour",
    "inference_ms_per_text",
    "pareto",
    "not_worse_than_best",
    "cheapest_not_worse",
]
NOT_WORSE_P = 0.95
"""``p_vs_best`` (share of resamples where the model does not beat the best) above which it is significantly worse."""


def _row(entry: dict) -> dict | None:
    metric = entry.get("metric") or "macro_f1"
    score = ((entry.get("test") or {}).get("metrics") or {}).get(metric)
    seconds = entry.get("train_seconds")
    if score is None or seconds is None:
        return None
    hours = seconds * (entry.get("devices") or 1) / 3600.0
    paired = entry.get("paired_vs_best")
    if paired is None:  # the best model itself (or a set of one)
        not_worse = True
    elif paired.get("p_value") is None:
        not_worse = None  # not tested (no shared test rows)
    else:
        not_worse = paired["p_value"] <= NOT_WORSE_P
    return {
        "model": entry.get("name"),
        "metric": metric,
        "dataset_key": entry.get("dataset_key"),
        "test_score": float(score),
        "device_hours": hours,
        "score_per_device_hour": float(score) / hours if hours > 0 else None,
        "inference_ms_per_text": entry.get("inference_ms_per_text"),
        "pareto": False,
        "not_worse_than_best": not_worse,
        "cheapest_not_worse": False,
    }


def _dominates(a: dict, b: dict) -> bool:
    """``a`` at least as good as ``b`` on quality, cost and (when both are known) latency, and better on one."""
    pairs = [(a["test_score"], b["test_score"]), (-a["device_hours"], -b["device_hours"])]
    if a["inference_ms_per_text"] is not None and b["inference_ms_per_text"] is not None:
        pairs.append((-a["inference_ms_per_text"], -b["inference_ms_per_text"]))
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def cost_rows(entries: list[dict]) -> list[dict]:
    """One row per completed model with a test score and a training time (``COST_COLUMNS``), ranking order."""
    rows = [
        row
        for entry in ranked_entries(entries)
        if entry.get("status") == "completed"
        if (row := _row(entry)) is not None
    ]
    groups: dict = {}
    for row in rows:
        groups.setdefault(row["dataset_key"], []).append(row)
    for group in groups.values():
        for row in group:
            row["pareto"] = not any(_dominates(other, row) for other in group if other is not row)
        candidates = [r for r in group if r["not_worse_than_best"]]
        if candidates:
            latency = lambda r: float("inf") if r["inference_ms_per_text"] is None else r["inference_ms_per_text"]
            min(candidates, key=lambda r: (r["device_hours"], latency(r)))["cheapest_not_worse"] = True
    return [{k: row[k] for k in COST_COLUMNS} for row in rows]


def cost_display(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted (unescaped) cells of the cost table, for the Markdown and the HTML report."""
    headers = [
        "model",
        "test score",
        "device-hours",
        "score / device-hour",
        "ms / text",
        "Pareto front",
        "not worse than best",
        "cheapest not worse",
    ]
    mark = {True: "yes", False: "", None: "n/a"}
    cells = [
        [
            str(r["model"]),
            f"{METRIC_NAMES.get(r['metric'], r['metric'])} {r['test_score']:.4f}",
            f"{r['device_hours']:.4g}",
            format_cell(r["score_per_device_hour"]),
            format_cell(r["inference_ms_per_text"]),
            mark[r["pareto"]],
            mark[r["not_worse_than_best"]],
            mark[r["cheapest_not_worse"]],
        ]
        for r in rows
    ]
    return headers, cells


def cost_markdown(rows: list[dict]) -> str:
    """The cost table as Markdown (empty string without rows)."""
    if not rows:
        return ""
    headers, cells = cost_display(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"
