"""The comparison report of a config set: one self-contained HTML page plus its tables and plots.

Features
- ``write_report``: writes ``summary.md``, ``summary.csv``, ``summary.json`` (the entries made JSON-safe,
  ``extra``), ``plots/*.png`` and, last, ``report.html`` (CSS and images inline, no script, no external
  URL; its only links are the relative ones to each model's SHAP page).
- Sections: the summary (quality with 95 % CIs, then cost), the plots, one section per model, the
  failed models with their errors, ``extra`` notes (e.g. champion decisions).
- All text from entries is ``html.escape``d; links and embedded files must be relative paths inside the
  folder (anything else is shown as text). Files are written atomically, ``report.html`` last.

Limits
- Embedded plots make the page grow (~50-150 kB each); the CSV and JSON hold the full precision.
"""

from __future__ import annotations

import base64
import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from emotion_core.evaluation import ECE_BINS
from emotion_core.files import atomic_write_text
from emotion_core.report.config_table import format_cell
from emotion_core.report.cost import cost_display, cost_markdown, cost_rows
from emotion_core.report.plots import PLOT_FILES, write_plots
from emotion_core.report.summary import (
    display_rows,
    format_ci,
    ranked_entries,
    ranking_metrics,
    summary_table,
    to_markdown,
)

__all__ = ["REPORT_HTML", "json_safe", "write_report"]

REPORT_HTML = "report.html"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; margin: 24px 32px;
       color: #1d1d1f; background: #fff; font-size: 14px; line-height: 1.4; }
h1 { font-size: 24px; margin: 0 0 4px 0; }
h2 { font-size: 19px; margin: 28px 0 8px 0; border-bottom: 2px solid #e3e3e8; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 22px 0 6px 0; }
.meta { color: #555; margin: 0 0 12px 0; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 6px 0 14px 0; font-size: 12.5px; }
th, td { border: 1px solid #d8d8de; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f2f2f6; font-weight: 600; text-align: center; white-space: normal; max-width: 120px; }
td.text, th.text { text-align: left; }
tr.failed td { background: #fff1f0; color: #8a1c12; }
tr.best td { background: #f0f8ee; }
td.error, td.pre { white-space: pre-wrap; text-align: left; max-width: 900px; font-family: monospace; font-size: 12px; }
.plots { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; align-items: start; }
.plots figure.wide { grid-column: 1 / -1; }
figure { margin: 0; border: 1px solid #e3e3e8; padding: 6px; background: #fff; max-width: 100%; width: fit-content; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #555; margin-top: 4px; }
.model { border-left: 4px solid #c9d6ef; padding-left: 14px; margin: 18px 0; }
.model.failed { border-left-color: #e9a39b; }
.pair { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
.side { flex: 0 1 460px; min-width: 0; }
.wide-side { flex: 1 1 520px; min-width: 0; }
.side figure img { max-width: 440px; }
h4 { font-size: 14px; margin: 12px 0 4px 0; }
dl { display: grid; grid-template-columns: minmax(110px, 200px) minmax(0, 1fr); gap: 2px 12px; margin: 4px 0 10px 0;
     font-size: 13px; }
dt { color: #555; } dd { margin: 0; overflow-wrap: anywhere; }
.note { color: #555; font-size: 12.5px; }
"""

_PLOT_CAPTIONS = {
    "f1_vs_params": "Test macro-F1 (95 % bootstrap CI) against trainable parameters (log scale).",
    "per_label_f1": "Per-label test F1 at each run's thresholds.",
    "full_vs_peft_pr_auc": "Per-label test PR-AUC (threshold-free): full fine-tune vs PEFT of the same base model.",
    "reliability": "Reliability on test (flattened bins) after per-label temperature scaling.",
    "cost_pareto": "Test score on the official metric against training device-hours: Pareto front (filled) and the "
    "cheapest model not significantly worse than the best (star).",
}


# --------------------------------------------------------------------------- JSON


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars/arrays to Python, paths to ``str``, tuples and
    sets to lists, non-finite floats to ``None`` (strict JSON has no NaN), other objects to ``str``."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    return str(value)


# --------------------------------------------------------------------------- HTML pieces


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> str:
    return _e(value if isinstance(value, str) else format_cell(value))


def _table(
    headers: list[str],
    rows: list[list[str]],
    *,
    text_columns: int = 1,
    row_classes: list[str] | None = None,
    raw: bool = False,
) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then the caller escaped them)."""

    def cls(j: int) -> str:
        return ' class="text"' if j < text_columns else ""

    head = "".join(f"<th{cls(j)}>{_e(h)}</th>" for j, h in enumerate(headers))
    body = []
    for i, cells in enumerate(rows):
        klass = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        tds = "".join(f"<td{cls(j)}>{c if raw else _e(c)}</td>" for j, c in enumerate(cells))
        body.append(f"<tr{klass}>{tds}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


_WIDE_PX = 1000


def _png_width(png: bytes) -> int:
    # Width is the first field of the IHDR chunk, bytes 16-20 of every PNG.
    return int.from_bytes(png[16:20], "big") if png[:8] == b"\x89PNG\r\n\x1a\n" else 0


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{_e(alt)}">'


def _inside(folder: Path, relative: Any) -> Path | None:
    """``folder / relative`` when ``relative`` is a plain relative path that stays inside ``folder``."""
    if not isinstance(relative, str) or not relative or "://" in relative or relative.startswith(("/", "\\")):
        return None
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if ".." in parts or ":" in parts[0]:
        return None
    return folder.joinpath(*parts)


def _summary_section(frame, metric: str = "macro-F1") -> str:
    statuses = frame["status"].to_list()
    row_classes = ["failed" if s != "completed" else "best" if i == 0 else "" for i, s in enumerate(statuses)]
    parts = [
        "<h2>Summary</h2>",
        f'<p class="note">Ranked by validation <b>{_e(metric)}</b>, the dataset\'s official metric (validation '
        "tunes thresholds and ranks models; test is only "
        "reported). Test metrics at each run's thresholds; 95 % intervals are percentile bootstrap intervals over "
        "test rows; Δ and p compare each model with the best one on the same resampled rows (p = share of resamples "
        "where the model does not beat the best). "
        f"ECE: {ECE_BINS} equal-width bins, before → after temperature scaling.</p>",
        "<h3>Quality (test split)</h3>",
    ]
    # Two tables, not one: all ~25 columns side by side do not fit a screen (the Markdown has them all).
    headers, rows = display_rows(frame, "quality")
    parts.append(_table(headers, rows, text_columns=2, row_classes=row_classes))
    headers, rows = display_rows(frame, "calibration_cost")
    parts += [
        "<h3>Calibration (test) and cost</h3>",
        _table(headers, rows, text_columns=2, row_classes=row_classes),
        '<p class="note">peak memory: peak GPU memory allocated on a GPU, else peak process RSS.</p>',
    ]
    return "\n".join(parts)


def _cost_section(rows: list[dict]) -> str:
    if not rows:
        return ""
    headers, cells = cost_display(rows)
    return (
        '<h3>Cost-aware comparison</h3><p class="note">Quality per training device-hour and inference latency; '
        "Pareto front of test quality against training cost and latency; the cheapest model not significantly "
        "worse than the best (at least 5 % of paired bootstrap resamples favour it).</p>"
        + _table(headers, cells, text_columns=1)
    )


def _plots_section(plots: dict[str, Path]) -> str:
    if not plots:
        return '<h2>Plots</h2><p class="note">Nothing to plot: no completed model has test results.</p>'
    figures, wide_figures = [], []
    for name, path in plots.items():
        png = path.read_bytes()
        # A wide plot (heatmap / bars over 28 labels) gets the full row instead of being shrunk into half.
        wide = _png_width(png) > _WIDE_PX
        klass = ' class="wide"' if wide else ""
        figure = (
            f"<figure{klass}>{_img(png, name)}<figcaption>{_e(_PLOT_CAPTIONS.get(name, name))}</figcaption></figure>"
        )
        (wide_figures if wide else figures).append(figure)
    figures += wide_figures  # half-width plots first, side by side; a wide one would leave a hole beside them
    return '<h2>Plots</h2>\n<div class="plots">' + "\n".join(figures) + "</div>"


def _per_label_table(entry: dict) -> str:
    test = entry.get("test") or {}
    per_label = (test.get("metrics") or {}).get("per_label") or {}
    if not per_label:
        return '<p class="note">No per-label test metrics.</p>'
    pr = (test.get("pr_auc") or {}).get("per_label") or {}
    roc = (test.get("roc_auc") or {}).get("per_label") or {}
    ece = (test.get("ece") or {}).get("per_label") or {}
    thresholds = test.get("thresholds") or {}
    cal = entry.get("calibration") or {}
    temps = cal.get("temperatures") or {}
    headers = [
        "label",
        "support",
        "predicted",
        "precision",
        "recall",
        "F1",
        "PR-AUC",
        "ROC-AUC",
        "ECE",
        "threshold",
        "T",
    ]
    rows = [
        [
            name,
            m.get("support"),
            m.get("predicted_positives"),
            m.get("precision"),
            m.get("recall"),
            m.get("f1"),
            pr.get(name),
            roc.get(name),
            ece.get(name),
            thresholds.get(name),
            temps.get(name),
        ]
        for name, m in per_label.items()
    ]
    return (
        _table(headers, [[_e(r[0]), *(_num(v) for v in r[1:])] for r in rows], raw=True)
        + '<p class="note">ECE before temperature scaling; T: the fitted temperature.</p>'
    )


def _calibration_block(entry: dict) -> str:
    cal = entry.get("calibration")
    if not cal:
        return '<p class="note">Not calibrated (no calibration block).</p>'
    temps = [t for t in (cal.get("temperatures") or {}).values() if t is not None]
    ece_test = (cal.get("ece") or {}).get("test") or {}
    nll_test = (cal.get("nll") or {}).get("test") or {}
    kept = cal.get("labels_kept_at_1") or []
    items = [("method", cal.get("method")), ("threshold policy after scaling", cal.get("policy"))]
    if temps:
        items.append(
            (
                "temperatures (min / median / max)",
                f"{min(temps):.3f} / {float(np.median(temps)):.3f} / {max(temps):.3f} over {len(temps)} labels",
            )
        )
    items.append(("labels kept at T = 1", ", ".join(kept) if kept else "none"))

    def before_after(block: dict, key: str | None) -> str:
        b, a = block.get("before"), block.get("after")
        if key is not None:
            b, a = (b or {}).get(key), (a or {}).get(key)
        return "" if b is None or a is None else f"{b:.4f} → {a:.4f}"

    if ece_test:
        items.append(("test ECE flat (before → after)", before_after(ece_test, "flat")))
        items.append(("test ECE per-label mean (before → after)", before_after(ece_test, "per_label_mean")))
    if nll_test:
        items.append(("test NLL (before → after)", before_after(nll_test, None)))
    after_metrics = cal.get("test_metrics") or {}
    if after_metrics.get("macro_f1") is not None:
        items.append(("test macro-F1 after scaling (thresholds re-tuned)", f"{after_metrics['macro_f1']:.4f}"))
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"


def _explanation_block(entry: dict, folder: Path) -> str:
    exp = entry.get("explanation")
    if not exp:
        return ""
    link = exp.get("html")
    details = []
    if exp.get("texts") is not None:
        details.append(f"{exp['texts']} texts")
    if exp.get("seconds_per_text") is not None:
        details.append(f"{exp['seconds_per_text']:.2f} s per text")
    if exp.get("cached"):
        details.append("from cache")
    suffix = f" ({_e(', '.join(details))})" if details else ""
    if _inside(folder, link) is None:
        # Not a relative path inside the report: show it, never link outside the folder.
        return f"<p>SHAP token attributions: <code>{_e(link)}</code>{suffix}</p>"
    return f'<p>SHAP token attributions: <a href="{_e(link)}">{_e(link)}</a>{suffix}</p>'


def _model_section(entry: dict, rank: int, folder: Path) -> str:
    name = entry.get("name")
    test = entry.get("test") or {}
    facts = [
        ("family", entry.get("family")),
        ("method", entry.get("method")),
        ("model", entry.get("model")),
        ("run id", entry.get("run_id")),
        ("validation macro-F1", format_cell(entry.get("validation_macro_f1"))),
        ("test macro-F1 [95% CI]", _ci_text(test.get("macro_f1_ci"))),
        ("test micro-F1 [95% CI]", _ci_text(test.get("micro_f1_ci"))),
    ]
    never = (test.get("metrics") or {}).get("labels_never_predicted") or []
    if never:
        facts.append(("labels never predicted on test", ", ".join(never)))
    left_out = (test.get("pr_auc") or {}).get("labels_left_out_names") or []
    if left_out:
        facts.append(("labels left out of macro PR-AUC (no positive)", ", ".join(left_out)))
    facts_html = (
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v not in (None, "")) + "</dl>"
    )

    reliability = ""
    png = _inside(folder, (entry.get("files") or {}).get("reliability"))
    if png is not None and png.is_file():
        reliability = (
            f"<figure>{_img(png.read_bytes(), f'reliability diagram of {name}')}"
            f"<figcaption>Reliability on test before/after temperature scaling.</figcaption></figure>"
        )
    anchor = f"model-{rank}"
    # Two columns (facts, calibration, reliability | the per-label table) that wrap on a narrow screen:
    # stacked, a 28-label table under a diagram made each model a screen and a half long.
    return (
        f'<div class="model" id="{anchor}"><h3>{rank}. {_e(name)}</h3><div class="pair">'
        f'<div class="side">{facts_html}{_explanation_block(entry, folder)}'
        f"<h4>Calibration</h4>{_calibration_block(entry)}{reliability}</div>"
        f'<div class="wide-side"><h4>Per-label test metrics (at the run\'s thresholds)</h4>'
        f"{_per_label_table(entry)}</div></div></div>"
    )


def _ci_text(ci: dict | None) -> str:
    if not ci:
        return ""
    return format_ci(ci.get("estimate"), ci.get("low"), ci.get("high"))


def _failed_section(failed: list[dict]) -> str:
    if not failed:
        return '<h2>Failed models</h2><p class="note">None: every model of the set completed.</p>'
    rows = [
        [
            _e(e.get("name")),
            _e(e.get("family")),
            _e(e.get("method")),
            _e(e.get("model")),
            _e(e.get("error") or "unknown error"),
        ]
        for e in failed
    ]
    head = "".join(f'<th class="text">{h}</th>' for h in ("model", "family", "method", "base model", "error"))
    body = "".join(
        '<tr class="failed">'
        + "".join(f'<td class="text">{c}</td>' for c in r[:-1])
        + f'<td class="error">{r[-1]}</td></tr>'
        for r in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<h2>Failed models</h2><div class="scroll">{table}</div>'


def _extra_section(extra: dict | None) -> str:
    if not extra:
        return ""
    rows = []
    for key, value in extra.items():
        text = value if isinstance(value, str) else json.dumps(json_safe(value), ensure_ascii=False)
        rows.append(f'<tr><td class="text">{_e(key)}</td><td class="pre">{_e(text)}</td></tr>')
    return (
        '<h2>Notes</h2><div class="scroll"><table><thead><tr><th class="text">note</th><th class="text">value</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _page(
    title: str,
    set_name: str,
    created: str,
    frame,
    plots: dict[str, Path],
    ranked: list[dict],
    folder: Path,
    extra: dict | None,
) -> str:
    completed = [e for e in ranked if e.get("status") == "completed"]
    failed = [e for e in ranked if e.get("status") != "completed"]
    toc = " · ".join(f'<a href="#model-{i}">{_e(e.get("name"))}</a>' for i, e in enumerate(completed, start=1))
    models = "\n".join(_model_section(e, i, folder) for i, e in enumerate(completed, start=1))
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">config set <b>{_e(set_name)}</b> · created {_e(created)} · '
        f"{len(completed)} completed, {len(failed)} failed</p>",
        _summary_section(frame, " / ".join(ranking_metrics(ranked)) or "macro-F1"),
        _cost_section(cost_rows(ranked)),
        _plots_section(plots),
        "<h2>Models</h2>" + (f'<p class="note">{toc}</p>' if toc else '<p class="note">No completed model.</p>'),
        models,
        _failed_section(failed),
        _extra_section(extra),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------- entry point


def write_report(
    entries: list[dict], folder: str | Path, title: str, *, set_name: str, extra: dict | None = None
) -> dict[str, Path]:
    """Write the comparison report of ``entries`` (model entries) into ``folder``; return the paths.

    Keys of the result: ``markdown``, ``csv``, ``json``, ``html`` and ``plot_<name>`` for each plot
    drawn (``plots.PLOT_FILES``). ``folder`` is the caller's staging folder; ``report.html`` is
    written last, so its presence means the report is complete. ``extra``: free-form notes
    ``{key: value}`` shown as a table (non-string values as compact JSON) and kept in the JSON.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    page_path = folder / REPORT_HTML
    page_path.unlink(missing_ok=True)  # an old page must not vouch for the files written below
    created = datetime.now(UTC).isoformat(timespec="seconds")
    ranked = ranked_entries(entries)
    frame = summary_table(entries)

    metric = " / ".join(ranking_metrics(entries)) or "macro-F1"
    markdown = (
        f"# {title}\n\nConfig set `{set_name}`, created {created}. Ranked by validation {metric} (the "
        "dataset's official metric); test metrics at each run's thresholds with 95 % bootstrap intervals; Δ/p: "
        f"paired bootstrap of test {metric} vs the best model.\n\n" + to_markdown(frame)
    )
    costs = cost_rows(entries)
    if costs:
        markdown += (
            "\n## Cost-aware comparison\n\nTest score on the official metric per training device-hour, "
            "inference ms per text, the Pareto front of quality against training cost and latency, and the "
            "cheapest model not significantly worse than the best (paired bootstrap, one-sided 0.05).\n\n"
            + cost_markdown(costs)
        )
    paths = {"markdown": folder / "summary.md", "csv": folder / "summary.csv", "json": folder / "summary.json"}
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_text(paths["csv"], frame.write_csv())
    payload = {
        "title": title,
        "set": set_name,
        "created": created,
        "entries": json_safe(ranked),
        "extra": json_safe(extra) if extra else None,
    }
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False) + "\n")

    plots = write_plots(entries, folder / "plots")
    for name, file in PLOT_FILES.items():
        if name not in plots:  # a plot of an earlier write into this folder must not outlive its data
            (folder / "plots" / file).unlink(missing_ok=True)
    paths.update({f"plot_{name}": path for name, path in plots.items()})
    atomic_write_text(page_path, _page(title, set_name, created, frame, plots, ranked, folder, extra))
    paths["html"] = page_path
    return paths
