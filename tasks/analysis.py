"""Tasks after training: evaluate + calibrate each run, explain it (SHAP), then compare and publish.

Thin wrappers over ``emotion_core.analysis``, ``emotion_core.explain``, ``emotion_core.report`` and
``emotion_core.tracking``. They share one report folder (``report_dir``, a staging folder of the
store) and one data cache per process: the runs of a set are scored against data read once.
A run whose evaluation fails becomes a failed row (the set then fails, naming it); a failed
explanation or W&B upload is reported and logged, never fatal.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from emotion_core.errors import EmotionError
from tasks.storage import open_task_store
from tasks.artifacts import artifact_key

_data_lock = threading.Lock()
_data_cache = None


def _cache():
    global _data_cache
    from emotion_core.analysis import DataCache

    if _data_cache is None:
        _data_cache = DataCache()
    return _data_cache


def _data_for(run):
    with _data_lock:  # tasks may run in threads: read each dataset once
        return _cache().for_run(run)


@task(name="evaluate-run")
def evaluate_run(config_name: str, run_id: str, store_uri: str, report_dir: str, bootstrap_samples: int = 1000,
                 seed: int = 0) -> dict:
    """The report entry of one run: test metrics with CIs, calibration, reliability diagram."""
    from emotion_core import analysis
    from emotion_core.runs import read_run

    logger = get_run_logger()
    try:
        run = read_run(open_task_store(store_uri).run_folder(run_id))
        entry = analysis.evaluate_run(run, _data_for(run), Path(report_dir), bootstrap_samples=bootstrap_samples,
                                      seed=seed)
    except (EmotionError, ValueError) as exc:
        logger.error("config %s: evaluation of run %s failed: %s", config_name, run_id, exc)
        return analysis.failed_entry(config_name, f"evaluation failed: {exc}", run_id)
    calibration = entry["calibration"]
    ece = calibration["ece"]["test"] or calibration["ece"]["validation"]
    logger.info("config %s: test macro-F1 %s, ECE %.4f -> %.4f after temperature scaling", config_name,
                f"{entry['test']['metrics']['macro_f1']:.4f}" if entry["test"] else "n/a",
                ece["before"]["flat"], ece["after"]["flat"])
    return entry


@task(name="explain-run")
def explain_run(entry: dict, store_uri: str, report_dir: str) -> dict | None:
    """SHAP explanations of a completed run's seeded test sample (``explain`` of its config); None if skipped."""
    from emotion_core import explain
    from emotion_core.runs import read_run
    from emotion_core.settings import cache_root

    logger = get_run_logger()
    name = entry["name"]
    try:
        run = read_run(open_task_store(store_uri).run_folder(entry["run_id"]))
        if run.config.explain.n_texts == 0:
            logger.info("config %s: no SHAP explanations (explain.n_texts is 0)", name)
            return None
        data = _data_for(run)
        split = "test" if len(data.split("test")) else "validation"
        folder = Path(report_dir) / "models" / name
        result = explain.explain_run(run, data.texts(split), data.ids(split), None, None, cache_root() / "shap",
                                     html_path=folder / "shap.html")
    except Exception as exc:  # an explanation is a report section, never a reason to lose the comparison
        logger.error("config %s: SHAP explanation failed: %s: %s", name, type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    from emotion_core.files import write_json

    write_json(folder / "shap.json", {k: v for k, v in result.items() if k not in ("cache_path", "html_path")})
    logger.info("config %s: SHAP on %d %s texts, %.2f s/text%s", name, result["n_texts"], split,
                result["seconds_per_text"], " (cached)" if result["cached"] else "")
    return {"html": f"models/{name}/shap.html", "json": f"models/{name}/shap.json", "texts": result["n_texts"],
            "split": split, "seconds_per_text": result["seconds_per_text"], "cached": result["cached"]}


@task(name="compare-runs")
def compare_runs(set_name: str, outcomes: list[dict], entries: list[dict], store_uri: str, report_dir: str,
                 report_name: str, bootstrap_samples: int = 1000, seed: int = 0, ensemble_top_k: int = 3,
                 champion: dict | None = None) -> dict:
    """Ensemble + paired tests, champion/challenger, the report (HTML, markdown, CSV, plots) in the store, artifacts, W&B.

    ``outcomes``: one per config (``{"config", "run_id"}`` or failed with ``error``), ``entries``: the
    ``evaluate-run`` results of the completed ones. Nothing is dropped: a config that failed, or whose
    run is unreadable, is a failed row. ``champion``: ``ChampionConfig`` fields (default: on, margin
    0.005, alpha 0.05); the decisions are in the report. The report folder is published as ``reports/<report_name>``
    (the store retries its own requests; a store that stays down fails the task with a ``StoreError``).
    """
    from emotion_core import analysis, tracking
    from emotion_core.report import comparison_table, summary_markdown, summary_table, write_comparison, write_report
    from emotion_core.runs import read_run

    logger = get_run_logger()
    store = open_task_store(store_uri)
    folder = Path(report_dir)
    by_name = {e["name"]: e for e in entries}
    manifests, arrays, rows = [], {}, []
    for outcome in outcomes:
        name = outcome["config"]
        entry = by_name.get(name)
        if outcome.get("status") == "failed":
            manifests.append(outcome)
            rows.append(analysis.failed_entry(name, outcome["error"], outcome.get("run_id")))
            continue
        try:
            run = read_run(store.run_folder(outcome["run_id"]))
        except EmotionError as exc:
            logger.error("config %s: its child completed but run %s is not readable: %s", name, outcome["run_id"], exc)
            error = f"run {outcome['run_id']} not readable in {store.uri}: {exc}"
            manifests.append({**outcome, "status": "failed", "error": error})
            rows.append(analysis.failed_entry(name, error, outcome["run_id"]))
            continue
        manifests.append({"config": name, "manifest": run.manifest})
        if entry is None or entry["status"] != "completed":
            rows.append(entry or analysis.failed_entry(name, "not evaluated", outcome["run_id"]))
            continue
        arrays[name] = analysis.run_data(run, _data_for(run))
        rows.append(entry)

    ensemble = analysis.add_ensemble(rows, arrays, folder, top_k=ensemble_top_k, bootstrap_samples=bootstrap_samples,
                                     seed=seed)
    best = analysis.add_paired_tests(rows, arrays, bootstrap_samples=bootstrap_samples, seed=seed)
    from emotion_core.config import ChampionConfig

    gate = ChampionConfig.model_validate(champion or {})
    decisions = []
    if gate.enabled:
        with _data_lock:
            decisions = analysis.challenge_champions(rows, arrays, store, _cache(), margin=gate.margin, alpha=gate.alpha,
                                                     bootstrap_samples=bootstrap_samples, seed=seed)
        for decision in decisions:
            logger.info("champion of %s: %s", decision["dataset_key"], decision["reason"])

    # W&B: one run per model and the summary table; offline unless an API key is configured; never fatal.
    tracked = {}
    for outcome, manifest in zip(outcomes, manifests):
        if "manifest" in manifest:
            result = tracking.log_run(manifest["manifest"], by_name.get(outcome["config"]), group=set_name)
            tracked[outcome["config"]] = result.get("run_dir") or result.get("error")
    frame = summary_table(rows)
    summary_rows = frame.to_dicts()
    result = tracking.log_summary(summary_rows, set_name)
    tracked["(summary)"] = result.get("run_dir") or result.get("error")

    comparison = comparison_table(manifests)
    write_comparison(comparison, folder, f"Comparison: {set_name}")
    extra = {"best model (validation macro-F1)": best or "n/a",
             **{f"champion of {d['dataset_key']}": ("PROMOTED " if d["promoted"] else "kept: ") + d["reason"] for d in decisions},
             "ensemble": f"{ensemble['name']}: {', '.join(ensemble['members'])}" if ensemble else "none (fewer than 2 runs)",
             **{f"W&B {k}": v for k, v in tracked.items()}}
    write_report(rows, folder, f"Comparison: {set_name}", set_name=set_name, extra=extra)
    report_uri = store.publish_report(folder, report_name)
    markdown = summary_markdown(frame)
    key = artifact_key(set_name)
    create_markdown_artifact(key=f"comparison-{key}", description=f"train-all {set_name}",
                             markdown=f"# {set_name}\n\n{markdown}\n\nBest: **{best or 'n/a'}**. "
                                      + "".join(f"\n\nChampion of {d['dataset_key']}: {d['reason']}" for d in decisions)
                                      + f"\n\nReport: `{report_uri}/report.html` (also summary.md, summary.csv, plots/).\n")
    create_table_artifact(key=f"comparison-table-{key}", description=f"train-all {set_name}",
                          table=[{"config": r.pop("model", None), **r} for r in frame.drop("error").to_dicts()])
    logger.info("comparison of %s:\n%s\nreport: %s/report.html", set_name, markdown, report_uri)
    failed = [{"config": r["name"], "error": r["error"]} for r in rows if r["status"] == "failed"]
    return {"report": report_uri, "html": f"{report_uri}/report.html", "markdown": f"{report_uri}/summary.md",
            "csv": f"{report_uri}/summary.csv", "table": markdown, "best": best, "failed": failed,
            "champion_decisions": decisions,
            "created": datetime.now(timezone.utc).isoformat()}
