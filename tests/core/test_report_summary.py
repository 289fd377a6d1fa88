"""Tests for the comparison report of model entries: summary table, Markdown, plots, report.html.

The entries are built the way the producer builds them: real ``evaluate_split``, ``calibrate_run``
and ``paired_bootstrap`` on seeded synthetic data (300 rows x 4 labels) of a good and a weak model,
plus one failed model.
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import polars as pl
import pytest

from emotion_core.calibration import calibrate_run
from emotion_core.evaluation import evaluate_split, paired_bootstrap
from emotion_core.metrics import multilabel_metrics, sigmoid
from emotion_core.report import (
    comparison_table,
    plot_f1_vs_params,
    plot_full_vs_peft_pr_auc,
    plot_per_label_f1,
    plot_reliability,
    ranked_entries,
    summary_markdown,
    summary_table,
    to_markdown,
    write_comparison,
    write_plots,
    write_report,
)
from emotion_core.report.plots import _full_peft_groups, reliability_diagram
from emotion_core.thresholds import apply_thresholds, tune_thresholds

NAMES = ["joy", "anger", "fear", "surprise"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GOOD, WEAK, FAILED = "roberta-base-full", "roberta-lora <b>x</b>", "mistral-7b-qlora"
SHAP = f"models/{GOOD}/shap.html"
RELIABILITY = f"models/{GOOD}/reliability.png"


def _split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    latent = rng.normal(size=(n, len(NAMES)))
    truth = (latent + 0.6 * rng.normal(size=latent.shape) > np.array([0.3, 0.6, 0.9, 0.5])).astype(int)
    return latent, truth


def _model_arrays(latent: np.ndarray, rng: np.random.Generator, noise: float, scale: float) -> np.ndarray:
    # Logits = scale * (signal + noise): a larger noise is a worse ranker, scale > 1 over-confident.
    return scale * (latent + noise * rng.normal(size=latent.shape) - 0.6)


def _entry(name, method, params, val, test, rng, noise, scale):
    (lat_v, y_v), (lat_t, y_t) = val, test
    z_v, z_t = _model_arrays(lat_v, rng, noise, scale), _model_arrays(lat_t, rng, noise, scale)
    thresholds = tune_thresholds(y_v, sigmoid(z_v), "per_label")
    val_f1 = multilabel_metrics(y_v, apply_thresholds(sigmoid(z_v), thresholds), NAMES)["macro_f1"]
    entry = {
        "name": name,
        "status": "completed",
        "error": None,
        "family": "encoder",
        "method": method,
        "model": "roberta-base",
        "run_id": f"run-{name[:8]}",
        "trainable_params": params,
        "total_params": 124_645_632,
        "train_seconds": np.float64(321.5),
        "train_samples_per_s": 88.25,
        "peak_memory_mb": 2048.0,
        "validation_macro_f1": val_f1,
        "test": evaluate_split(y_t, sigmoid(z_t), thresholds, NAMES, bootstrap_n=300, seed=0),
        "calibration": calibrate_run(z_v, y_v, z_t, y_t, NAMES),
        "paired_vs_best": None,
        "explanation": None,
        "files": {},
    }
    return entry, apply_thresholds(sigmoid(z_t), thresholds)


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    rng = np.random.default_rng(7)
    val, test = _split(rng, 300), _split(rng, 300)
    good, pred_good = _entry(GOOD, "full", 124_645_632, val, test, rng, noise=0.3, scale=3.0)
    weak, pred_weak = _entry(WEAK, "lora", 887_812, val, test, rng, noise=1.4, scale=1.0)
    assert good["validation_macro_f1"] > weak["validation_macro_f1"]  # the data makes GOOD the best
    weak["paired_vs_best"] = paired_bootstrap(test[1], pred_weak, pred_good, n=300, seed=0)
    good["explanation"] = {
        "html": SHAP,
        "json": f"models/{GOOD}/shap.json",
        "texts": 8,
        "seconds_per_text": 0.42,
        "cached": False,
    }
    good["files"] = {"reliability": RELIABILITY}
    failed = {"name": FAILED, "status": "failed", "error": "CUDA out of memory | tried <16 GiB> & more"}
    # Input order deliberately not the ranking: failed first, weak before good.
    return [failed, weak, good]


def test_summary_table_ranks_best_first_and_keeps_failed_last(entries):
    frame = summary_table(entries)
    assert frame["model"].to_list() == [GOOD, WEAK, FAILED]
    assert frame["status"].to_list() == ["completed", "completed", "failed"]
    failed = frame.row(2, named=True)
    assert failed["error"] == entries[0]["error"] and failed["test_macro_f1"] is None
    assert [e["name"] for e in ranked_entries(entries)] == [GOOD, WEAK, FAILED]

    by_name = {e["name"]: e for e in entries}
    for row in frame.head(2).iter_rows(named=True):
        test = by_name[row["model"]]["test"]
        cal = by_name[row["model"]]["calibration"]
        assert (row["test_macro_f1"], row["test_macro_f1_low"], row["test_macro_f1_high"]) == (
            test["macro_f1_ci"]["estimate"],
            test["macro_f1_ci"]["low"],
            test["macro_f1_ci"]["high"],
        )
        assert (row["test_micro_f1"], row["test_micro_f1_low"], row["test_micro_f1_high"]) == (
            test["micro_f1_ci"]["estimate"],
            test["micro_f1_ci"]["low"],
            test["micro_f1_ci"]["high"],
        )
        assert row["test_macro_f1_low"] < row["test_macro_f1"] < row["test_macro_f1_high"]
        assert row["test_jaccard"] == test["metrics"]["jaccard_samples"]
        assert row["test_subset_accuracy"] == test["metrics"]["subset_accuracy"]
        assert row["pr_auc_macro"] == test["pr_auc"]["macro"] and row["roc_auc_macro"] == test["roc_auc"]["macro"]
        assert row["brier"] == test["brier"]["mean"]
        assert row["ece_flat_before"] == cal["ece"]["test"]["before"]["flat"] == pytest.approx(test["ece"]["flat"])
        assert row["ece_label_mean_after"] == cal["ece"]["test"]["after"]["per_label_mean"]
        assert row["trainable_pct"] == pytest.approx(100.0 * by_name[row["model"]]["trainable_params"] / 124_645_632)

    best, weak = frame.row(0, named=True), frame.row(1, named=True)
    assert best["test_macro_f1"] > weak["test_macro_f1"] + 0.05  # the two models really differ
    assert best["delta_vs_best"] is None and best["p_vs_best"] is None
    paired = by_name[WEAK]["paired_vs_best"]
    assert weak["delta_vs_best"] == paired["delta"] < 0 and weak["p_vs_best"] == paired["p_value"] > 0.9
    assert (weak["delta_low"], weak["delta_high"]) == (paired["low"], paired["high"])
    # The over-confident good model is better calibrated after temperature scaling.
    assert best["ece_flat_after"] < best["ece_flat_before"]


def test_summary_markdown_shows_ci_and_escapes_pipes(entries):
    frame = summary_table(entries)
    markdown = summary_markdown(frame)
    lines = markdown.splitlines()
    assert len(lines) == 2 + 3
    ci = entries[2]["test"]["macro_f1_ci"]
    assert f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" in lines[2]
    assert re.search(r"\| 0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] \|", lines[3])
    d = entries[1]["paired_vs_best"]
    assert f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" in lines[3]
    assert "reference" in lines[2]
    assert lines[4].startswith(f"| {FAILED} |") and "CUDA out of memory \\| tried" in lines[4]
    assert "124,645,632" in lines[2]  # counts formatted like table.py
    assert all(line.count(" | ") == lines[0].count(" | ") for line in lines[2:] if "\\|" not in line)


def test_a_set_over_two_datasets_has_a_reference_per_dataset(entries):
    """The gpu and cpu-best sets rank GoEmotions and SemEval apart: each dataset's best is its own reference."""
    good, weak = ({**e, "dataset_key": "goemotions-aaaaaaaaaaaa"} for e in entries[2:0:-1])
    other = {**good, "name": "on-semeval", "dataset_key": "semeval2018-ec-bbbbbbbbbbbb"}
    ensemble = {**weak, "name": "ensemble-top2", "family": "ensemble", "members": [GOOD, WEAK], "dataset_key": None}
    frame = summary_table([other, weak, ensemble, good])
    assert frame["model"].to_list() == ["on-semeval", GOOD, WEAK, "ensemble-top2"]  # datasets in order of appearance
    assert frame["dataset"].to_list() == ["semeval2018-ec-bbbbbbbbbbbb"] + ["goemotions-aaaaaaaaaaaa"] * 3
    lines = summary_markdown(frame).splitlines()[2:]
    assert ["reference" in line for line in lines] == [True, True, False, False]


def test_existing_comparison_table_still_works(tmp_path):
    frame = comparison_table([{"config": "a", "status": "failed", "error": "boom"}])
    assert frame["error"].to_list() == ["boom"] and "boom" in to_markdown(frame)
    paths = write_comparison(frame, tmp_path, "t")
    assert paths["markdown"].is_file() and paths["csv"].is_file()


def test_plots_are_pngs_and_skip_when_nothing_to_plot(entries, tmp_path):
    plots = write_plots(entries, tmp_path / "plots")
    assert set(plots) == {"f1_vs_params", "per_label_f1", "full_vs_peft_pr_auc", "reliability", "cost_pareto"}
    for path in plots.values():
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000
    assert not list(tmp_path.rglob("*.tmp"))

    # GOOD (full) and WEAK (lora) share roberta-base: one full-vs-PEFT pair, full first.
    groups = _full_peft_groups(ranked_entries(entries)[:2])
    assert [(base, [e["name"] for e in members]) for base, members in groups] == [("roberta-base", [GOOD, WEAK])]
    unpaired = [{**e, "model": f"other-{i}"} for i, e in enumerate(entries)]
    assert _full_peft_groups(ranked_entries(unpaired)[:2]) == []
    assert plot_full_vs_peft_pr_auc(unpaired, tmp_path / "unpaired.png").read_bytes()[:8] == PNG_MAGIC

    # Zero trainable parameters (zero-shot) is drawn as a reference line, not dropped or crashing log x.
    zero = [{**entries[1], "trainable_params": 0}, entries[2]]
    assert plot_f1_vs_params(zero, tmp_path / "zero.png").read_bytes()[:8] == PNG_MAGIC

    only_failed = [entries[0]]
    for draw in (plot_f1_vs_params, plot_per_label_f1, plot_full_vs_peft_pr_auc, plot_reliability):
        assert draw(only_failed, tmp_path / "none.png") is None
    assert write_plots(only_failed, tmp_path / "empty") == {}
    assert not (tmp_path / "none.png").exists()


def test_write_report_is_self_contained_and_escaped(entries, tmp_path):
    good = entries[2]
    reliability_diagram(
        good["calibration"]["reliability"]["test"]["before"],
        good["calibration"]["reliability"]["test"]["after"],
        tmp_path / RELIABILITY,
        GOOD,
    )
    (tmp_path / SHAP).write_text("<html>shap</html>", encoding="utf-8")
    extra = {"champion": f"{GOOD} promoted", "decision": {"p_value": 0.01, "beats_current": True}}
    paths = write_report(entries, tmp_path, "Comparison <set>", set_name="gpu & more", extra=extra)

    plot_keys = sorted(k for k in paths if k.startswith("plot_"))
    assert len(plot_keys) == 5
    for key in ("markdown", "csv", "json", "html", *plot_keys):
        assert paths[key].is_file() and paths[key].parent in (tmp_path, tmp_path / "plots")
    assert not list(tmp_path.rglob("*.tmp"))

    page = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == page.count("<img ") == len(plot_keys) + 1  # the plots + GOOD's reliability PNG
    assert all(base64.b64decode(b)[:8] == PNG_MAGIC for b in images)
    assert base64.b64decode(images[-1]) == (tmp_path / RELIABILITY).read_bytes()

    assert "<b>x</b>" not in page and "roberta-lora &lt;b&gt;x&lt;/b&gt;" in page
    assert "Comparison &lt;set&gt;" in page and "gpu &amp; more" in page
    assert "CUDA out of memory | tried &lt;16 GiB&gt; &amp; more" in page
    assert f'<a href="{SHAP}">' in page and page.count('<a href="models/') == 1
    ci = good["test"]["macro_f1_ci"]
    assert f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" in page
    assert "champion" in page and "&quot;beats_current&quot;: true" in page
    temps = list(good["calibration"]["temperatures"].values())
    assert f"{min(temps):.3f} / {float(np.median(temps)):.3f} / {max(temps):.3f}" in page
    assert page.rstrip().endswith("</html>")

    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["set"] == "gpu & more" and data["extra"] == extra
    assert [e["name"] for e in data["entries"]] == [GOOD, WEAK, FAILED]
    assert data["entries"][0]["train_seconds"] == 321.5
    assert data["entries"][0]["test"]["macro_f1_ci"] == ci
    csv = pl.read_csv(paths["csv"])
    assert csv["model"].to_list() == [GOOD, WEAK, FAILED] and csv["test_macro_f1_low"][0] == pytest.approx(ci["low"])
    assert "[" in paths["markdown"].read_text(encoding="utf-8")


def test_write_report_never_links_outside_and_handles_all_failed(entries, tmp_path):
    outside = {
        **entries[2],
        "explanation": {"html": "https://example.org/shap.html", "texts": 1},
        "files": {"reliability": "../elsewhere.png"},
    }
    page = write_report([outside], tmp_path / "a", "t", set_name="s")["html"].read_text(encoding="utf-8")
    assert 'href="https://' not in page and "<code>https://example.org/shap.html</code>" in page
    assert page.count("<img ") == 5  # plots only; the reliability path outside the folder is ignored

    # Rewriting a folder with only failed models: no plot left over from the first write.
    paths = write_report([entries[0]], tmp_path / "a", "t", set_name="s")
    page = paths["html"].read_text(encoding="utf-8")
    assert not [k for k in paths if k.startswith("plot_")] and "<img " not in page
    assert not list((tmp_path / "a" / "plots").glob("*.png"))
    assert FAILED in page and "0 completed, 1 failed" in page
    assert summary_table([entries[0]]).schema["test_macro_f1"] == pl.Float64
