"""Cost-aware comparison: quality per device-hour, the Pareto front, the cheapest model not worse than the best."""

from __future__ import annotations

from emotion_core.report import write_report
from emotion_core.report.cost import cost_markdown, cost_rows
from emotion_core.report.plots import plot_cost_pareto

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _entry(name, score, seconds, ms, p_value=None, devices=1, metric="jaccard_samples", key="semeval-abc"):
    paired = None if p_value is None else {"p_value": p_value, "delta": -0.01, "low": -0.03, "high": 0.01}
    return {
        "name": name,
        "status": "completed",
        "method": "full",
        "family": "encoder",
        "metric": metric,
        "dataset_key": key,
        "validation_score": score,
        "validation_macro_f1": score,
        "train_seconds": seconds,
        "devices": devices,
        "inference_ms_per_text": ms,
        "paired_vs_best": paired,
        "test": {"metrics": {metric: score, "macro_f1": score - 0.1}},
    }


ENTRIES = [
    _entry("big", 0.60, 7200.0, 5.0),  # best by validation: on the front
    _entry("small", 0.59, 360.0, 1.0, p_value=0.40),  # not significantly worse, 20x cheaper: the pick
    _entry("tiny", 0.40, 60.0, 0.5, p_value=1.0),  # cheapest and fastest, but significantly worse
    _entry("slow", 0.50, 1800.0, 10.0, p_value=1.0),  # dominated by small on all three axes
    _entry("gpu4", 0.58, 900.0, 2.0, p_value=0.30, devices=4),  # 1 device-hour: dominated by small
    {"name": "broken", "status": "failed", "error": "boom"},
]


def test_pareto_front_and_cheapest_not_worse():
    rows = {r["model"]: r for r in cost_rows(ENTRIES)}
    assert set(rows) == {"big", "small", "tiny", "slow", "gpu4"}
    assert {m for m, r in rows.items() if r["pareto"]} == {"big", "small", "tiny"}
    assert [m for m, r in rows.items() if r["cheapest_not_worse"]] == ["small"]
    assert rows["tiny"]["not_worse_than_best"] is False and rows["gpu4"]["not_worse_than_best"] is True
    assert rows["gpu4"]["device_hours"] == 1.0 and rows["small"]["score_per_device_hour"] == 0.59 / 0.1
    table = cost_markdown(list(rows.values()))
    assert "| small | Jaccard (example-based) 0.5900 | 0.1 |" in table


def test_latency_unknown_compares_on_quality_and_cost_only():
    old = [_entry("a", 0.6, 100.0, None), _entry("b", 0.5, 200.0, 1.0, p_value=1.0)]
    rows = {r["model"]: r for r in cost_rows(old)}
    assert rows["a"]["pareto"] and not rows["b"]["pareto"]  # worse and dearer: latency cannot save it


def test_datasets_are_compared_separately_and_report_has_table_and_plot(tmp_path):
    other = [_entry("go-ffnn", 0.47, 60.0, 0.2, metric="macro_f1", key="goemotions-abc")]
    rows = cost_rows(ENTRIES + other)
    go = next(r for r in rows if r["model"] == "go-ffnn")
    assert go["pareto"] and go["cheapest_not_worse"]  # alone in its dataset: not dominated by SemEval models
    assert plot_cost_pareto(ENTRIES + other, tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    assert plot_cost_pareto([ENTRIES[-1]], tmp_path / "none.png") is None
    paths = write_report(ENTRIES, tmp_path / "report", "SemEval", set_name="semeval-cpu")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "Ranked by validation Jaccard (example-based)" in markdown and "## Cost-aware comparison" in markdown
    assert paths["plot_cost_pareto"].read_bytes()[:8] == PNG_MAGIC
    assert "Cost-aware comparison" in paths["html"].read_text(encoding="utf-8")


def _manifest(name: str, jaccard: float, macro: float) -> dict:
    scores = {"macro_f1": macro, "micro_f1": 0.6, "jaccard_samples": jaccard, "subset_accuracy": 0.2}
    return {
        "config_name": name,
        "status": "completed",
        "family": "ffnn",
        "model": "ffnn",
        "run_id": f"{name}-1",
        "threshold_policy": "global_at_least_one",
        "metric": "jaccard_samples",
        "summary": {"validation": {"global_at_least_one": scores}, "test": {"global_at_least_one": scores}},
        "parameters": {"trainable": 10},
        "data": {"rows": {"train": 100}},
        "timing": {"epochs_completed": 1.0, "train_samples_per_second": 5.0, "train_seconds": 20.0},
        "memory": {"peak_rss_mb": 1.0, "peak_gpu_allocated_mb": None},
        "flags": [],
    }


def test_comparison_table_ranks_on_the_official_metric():
    from emotion_core.report import comparison_table

    # b has the better Jaccard (SemEval's metric) but the worse macro-F1: it ranks first.
    frame = comparison_table(
        [
            {"config": "a", "manifest": _manifest("a", 0.50, 0.55)},
            {"config": "b", "manifest": _manifest("b", 0.56, 0.45)},
        ]
    )
    assert frame["config"].to_list() == ["b", "a"] and frame["metric"].to_list() == ["jaccard_samples"] * 2
    assert frame["val_score"].to_list() == [0.56, 0.50]
