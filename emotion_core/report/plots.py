"""Comparison plots of a config set's model entries (``records.ReportEntry`` as dicts).

Features
- ``plot_f1_vs_params`` (test macro-F1 with its CI against trainable parameters, log x; models without a
  positive count as reference lines), ``plot_per_label_f1`` (heatmap), ``plot_full_vs_peft_pr_auc``
  (full fine-tune vs PEFT runs of one base model), ``plot_reliability``, ``plot_cost_pareto`` (test score on the
  official metric against training device-hours, the Pareto front and the cheapest model not worse than the best);
  ``write_plots`` draws them all.
- ``reliability_diagram``: one model, before/after temperature scaling.
- matplotlib ``Figure`` with an Agg canvas, never pyplot (thread-safe); PNGs written atomically.

Limits
- Nothing to draw returns ``None`` and writes nothing. Point labels can overlap.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

from emotion_core.report.summary import ranked_entries

__all__ = [
    "PEFT_METHODS",
    "PLOT_FILES",
    "plot_cost_pareto",
    "plot_f1_vs_params",
    "plot_full_vs_peft_pr_auc",
    "plot_per_label_f1",
    "plot_reliability",
    "reliability_diagram",
    "write_plots",
]

PEFT_METHODS = ("lora", "qlora", "ia3")
PLOT_FILES = {
    "f1_vs_params": "f1_vs_params.png",
    "per_label_f1": "per_label_f1.png",
    "full_vs_peft_pr_auc": "full_vs_peft_pr_auc.png",
    "reliability": "reliability.png",
    "cost_pareto": "cost_pareto.png",
}
# One colour per method, so a method reads the same in every plot.
_METHOD_COLOURS = {
    "full": "#1f77b4",
    "lora": "#ff7f0e",
    "qlora": "#2ca02c",
    "ia3": "#9467bd",
    "prompted": "#7f7f7f",
    "ensemble": "#d62728",
}
_DPI = 110


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        fig.savefig(tmp, format="png", bbox_inches="tight")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _completed_with(entries: list[dict], key: str) -> list[dict]:
    return [e for e in ranked_entries(entries) if e.get("status") == "completed" and e.get(key)]


def _t(text) -> str:
    # matplotlib reads "$...$" as math; a config name is plain text.
    return str(text).replace("$", r"\$")


def _colour(entry: dict) -> str:
    return _METHOD_COLOURS.get(entry.get("method"), "#8c564b")


def _label_names(entries: list[dict], block: str) -> list[str]:
    """Labels in first-seen order over the entries (every model of a set has the same labels,
    but a union costs nothing and keeps a mismatch visible as empty cells)."""
    names: dict[str, None] = {}
    for e in entries:
        per_label = (e["test"].get(block) or {}).get("per_label") or {}
        names.update(dict.fromkeys(per_label))
    return list(names)


# --------------------------------------------------------------------------- F1 vs parameters


def plot_f1_vs_params(entries: list[dict], path: str | Path) -> Path | None:
    """Test macro-F1 (with 95 % CI) vs trainable parameters, log x; ``None`` when nothing to plot."""
    models = [e for e in _completed_with(entries, "test") if e["test"].get("macro_f1_ci")]
    if not models:
        return None
    on_axis = [e for e in models if (e.get("trainable_params") or 0) > 0]
    lines = [e for e in models if (e.get("trainable_params") or 0) <= 0]

    fig = _figure(7.0, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    for e in on_axis:
        ci = e["test"]["macro_f1_ci"]
        est = ci["estimate"]
        # A percentile interval need not contain the estimate; a negative error bar is not drawable.
        yerr = [[max(est - ci["low"], 0.0)], [max(ci["high"] - est, 0.0)]]
        ax.errorbar(
            [e["trainable_params"]],
            [est],
            yerr=yerr,
            fmt="o",
            color=_colour(e),
            capsize=4,
            markersize=6,
            label=e.get("method"),
        )
        ax.annotate(_t(e["name"]), (e["trainable_params"], est), xytext=(6, 5), textcoords="offset points", fontsize=8)
    for e in lines:
        ci = e["test"]["macro_f1_ci"]
        what = "0 trainable params" if e.get("trainable_params") == 0 else "no parameter count"
        ax.axhline(ci["estimate"], color=_colour(e), linestyle="--", linewidth=1, label=e.get("method"))
        ax.axhspan(ci["low"], ci["high"], color=_colour(e), alpha=0.08)
        ax.annotate(
            _t(f"{e['name']} ({what})"),
            (0.01, ci["estimate"]),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=8,
            color=_colour(e),
        )
    if on_axis:
        ax.set_xscale("log")
        xs = [e["trainable_params"] for e in on_axis]
        ax.set_xlim(min(xs) / 3.0, max(xs) * 3.0)  # room for the labels right of the last point
    else:
        ax.set_xticks([])
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test macro-F1 (95 % bootstrap CI)")
    ax.set_title("Test macro-F1 vs trainable parameters")
    ax.grid(True, which="major", alpha=0.3)
    # One legend entry per method, not per model; outside the axes, where it cannot hide a point.
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="method")
    return _save(fig, path)


# --------------------------------------------------------------------------- per-label F1 heatmap


def plot_per_label_f1(entries: list[dict], path: str | Path) -> Path | None:
    """Heatmap of per-label test F1 (``test.metrics.per_label[*].f1``), models x labels."""
    import numpy as np

    models = [e for e in _completed_with(entries, "test") if (e["test"].get("metrics") or {}).get("per_label")]
    if not models:
        return None
    labels = _label_names(models, "metrics")
    grid = np.full((len(models), len(labels)), np.nan)
    for i, e in enumerate(models):
        per_label = e["test"]["metrics"]["per_label"]
        for j, name in enumerate(labels):
            if name in per_label:
                grid[i, j] = per_label[name]["f1"]

    fig = _figure(max(6.0, 0.42 * len(labels) + 3.0), max(2.6, 0.38 * len(models) + 1.9))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(labels)), [_t(n) for n in labels], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), [_t(e["name"]) for e in models], fontsize=8)
    if grid.size <= 800:  # values stay readable up to ~30 models x 28 labels
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if not math.isnan(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white" if grid[i, j] < 0.6 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="F1")
    ax.set_title("Per-label test F1 (rows: best validation macro-F1 first)")
    return _save(fig, path)


# --------------------------------------------------------------------------- full vs PEFT


def _full_peft_groups(models: list[dict]) -> list[tuple[str, list[dict]]]:
    """(base model, [full entries..., PEFT entries...]) for each base model having both."""
    groups: dict[str, list[dict]] = {}
    for e in models:
        groups.setdefault(e.get("model") or "", []).append(e)
    out = []
    for base, members in groups.items():
        full = [e for e in members if e.get("method") == "full"]
        peft = [e for e in members if e.get("method") in PEFT_METHODS]
        if base and full and peft:
            out.append((base, full + peft))
    return out


def _per_label_values(entry: dict, labels: list[str]) -> list[float]:
    per_label = entry["test"]["pr_auc"].get("per_label") or {}
    return [float("nan") if per_label.get(n) is None else per_label[n] for n in labels]


def plot_full_vs_peft_pr_auc(entries: list[dict], path: str | Path) -> Path | None:
    """Per-label test PR-AUC, full fine-tune vs PEFT of the same base model (grouped bars, one panel
    per base model); every model's per-label PR-AUC, said in the title, when no such pair exists."""
    import numpy as np

    models = [e for e in _completed_with(entries, "test") if (e["test"].get("pr_auc") or {}).get("per_label")]
    if not models:
        return None
    labels = _label_names(models, "pr_auc")
    x = np.arange(len(labels))
    groups = _full_peft_groups(models)
    width = max(7.0, 0.42 * len(labels) + 2.5)

    if groups:
        fig = _figure(width, 3.2 * len(groups) + 0.8)
        axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
        for ax, (base, members) in zip(axes, groups):
            bar = 0.8 / len(members)
            for k, e in enumerate(members):
                ax.bar(
                    x - 0.4 + bar * (k + 0.5),
                    _per_label_values(e, labels),
                    width=bar,
                    color=_colour(e),
                    label=_t(f"{e['name']} ({e.get('method')})"),
                )
            ax.set_title(_t(f"base model: {base}"), fontsize=9)
            ax.set_ylim(0, 1)
            ax.set_ylabel("PR-AUC")
            ax.set_xticks(x, [_t(n) for n in labels], rotation=60, ha="right", fontsize=8)
            ax.legend(fontsize=7, loc="upper right")
            ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle("Per-label test PR-AUC: full fine-tune vs PEFT of the same base model")
    else:
        fig = _figure(width, 4.6)
        ax = fig.add_subplot(1, 1, 1)
        # Paired dots with a small horizontal offset per model, so equal values stay visible.
        offsets = np.linspace(-0.25, 0.25, len(models)) if len(models) > 1 else [0.0]
        markers = "osD^v<>ph*"
        for k, e in enumerate(models):
            ax.plot(
                x + offsets[k],
                _per_label_values(e, labels),
                linestyle="none",
                marker=markers[k % len(markers)],
                markersize=5,
                label=_t(f"{e['name']} ({e.get('method')})"),
            )
        ax.set_ylim(0, 1)
        ax.set_ylabel("PR-AUC")
        ax.set_xticks(x, [_t(n) for n in labels], rotation=60, ha="right", fontsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(
            "Per-label test PR-AUC per model\n(no full fine-tune and PEFT run of the same base model "
            "in this set, so no full-vs-PEFT pair)",
            fontsize=10,
        )
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- reliability


def _bins_xy(bins: list[dict] | None) -> tuple[list[float], list[float]]:
    filled = [b for b in bins or [] if b.get("count") and b.get("confidence") is not None]
    return [b["confidence"] for b in filled], [b["accuracy"] for b in filled]


def reliability_diagram(bins_before: list[dict], bins_after: list[dict], path: str | Path, title: str) -> Path:
    """One run's reliability diagram PNG (before vs after temperature scaling, with the diagonal); returns ``path``.

    ``bins_*`` are ``evaluation.ece(...)["bins"]`` lists; empty bins are not drawn.
    """
    fig = _figure(5, 5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for bins, label, marker in ((bins_before, "before", "o"), (bins_after, "after", "s")):
        x, y = _bins_xy(bins)
        ax.plot(x, y, marker=marker, linewidth=1.5, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (confidence)")
    ax.set_ylabel("observed share of positives (accuracy)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_reliability(entries: list[dict], path: str | Path) -> Path | None:
    """Reliability diagram (test, flattened bins) of every calibrated model after temperature
    scaling, and of the best calibrated model before it; ``None`` when no model has test bins."""
    models = [
        e for e in _completed_with(entries, "calibration") if (e["calibration"].get("reliability") or {}).get("test")
    ]
    if not models:
        return None
    fig = _figure(6.5, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="perfect calibration")
    colours = [f"C{k % 10}" for k in range(len(models))]
    best = models[0]
    x, y = _bins_xy(best["calibration"]["reliability"]["test"].get("before"))
    ax.plot(x, y, linestyle="--", marker="x", color=colours[0], alpha=0.8, label=_t(f"{best['name']} (before)"))
    for colour, e in zip(colours, models):
        x, y = _bins_xy(e["calibration"]["reliability"]["test"].get("after"))
        ax.plot(x, y, marker="o", markersize=4, linewidth=1.4, color=colour, label=_t(f"{e['name']} (after)"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (confidence)")
    ax.set_ylabel("observed share of positives (accuracy)")
    ax.set_title("Reliability on test after temperature scaling\n(dashed: best model before scaling)", fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_cost_pareto(entries: list[dict], path: str | Path) -> Path | None:
    """Test score (official metric) vs training device-hours (log x), one panel per metric; filled: on the Pareto
    front of quality, cost and latency; a star: the cheapest model not worse than the best."""
    from emotion_core.metrics import METRIC_NAMES
    from emotion_core.report.cost import cost_rows

    rows = [r for r in cost_rows(entries) if r["device_hours"] > 0]
    if not rows:
        return None
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig = _figure(6.5 * len(metrics), 4.6)
    for i, metric in enumerate(metrics, start=1):
        ax = fig.add_subplot(1, len(metrics), i)
        group = [r for r in rows if r["metric"] == metric]
        front = sorted((r for r in group if r["pareto"]), key=lambda r: r["device_hours"])
        ax.step(
            [r["device_hours"] for r in front],
            [r["test_score"] for r in front],
            where="post",
            color="#999",
            linewidth=1,
            zorder=1,
        )
        for r in group:
            latency = "" if r["inference_ms_per_text"] is None else f", {r['inference_ms_per_text']:.2g} ms/text"
            ax.scatter(
                [r["device_hours"]],
                [r["test_score"]],
                s=110 if r["cheapest_not_worse"] else 45,
                marker="*" if r["cheapest_not_worse"] else "o",
                zorder=2,
                facecolors="#1f77b4" if r["pareto"] else "none",
                edgecolors="#1f77b4",
            )
            ax.annotate(
                _t(f"{r['model']}{latency}"),
                (r["device_hours"], r["test_score"]),
                xytext=(6, 4),
                textcoords="offset points",
                fontsize=7,
            )
        ax.set_xscale("log")
        ax.set_xlabel("training cost (device-hours, log scale)")
        ax.set_ylabel(f"test {METRIC_NAMES.get(metric, metric)}")
        ax.set_title(
            "Quality vs training cost\n(filled: Pareto front; star: cheapest not worse than the best)", fontsize=9
        )
        ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(entries: list[dict], folder: str | Path) -> dict[str, Path]:
    """Draw every plot into ``folder`` (``PLOT_FILES`` names); ``{name: path}`` of those drawn."""
    folder = Path(folder)
    drawers = {
        "f1_vs_params": plot_f1_vs_params,
        "per_label_f1": plot_per_label_f1,
        "full_vs_peft_pr_auc": plot_full_vs_peft_pr_auc,
        "reliability": plot_reliability,
        "cost_pareto": plot_cost_pareto,
    }
    out = {}
    for name, draw in drawers.items():
        path = draw(entries, folder / PLOT_FILES[name])
        if path is not None:
            out[name] = path
    return out
