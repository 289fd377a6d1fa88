"""Tasks after training: ``evaluate-run``, ``explain-run`` and ``store-analysis`` per run (in the child that trained
it), ``gather-analysis`` per run and ``compare-runs`` for the set (in the parent).

Thin wrappers over ``emotion_core.analysis``, ``emotion_core.explain``, ``emotion_core.run_analysis`` and
``emotion_core.comparison``: records cross Prefect as plain dicts (``emotion_core.records``). One data cache per
process: the runs of a set are scored against data read once. A failed evaluation becomes a failed row; a failed
explanation, analysis upload or W&B upload is logged, never fatal.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from emotion_core.errors import EmotionError
from emotion_core.records import ChildOutcome, ReportEntry
from tasks.artifacts import artifact_key
from tasks.storage import open_task_store

_lock = threading.Lock()
_data_cache = None


def data_cache():
    """The ``analysis.DataCache`` shared by the task runs of this process (imported on first use: it is heavy)."""
    global _data_cache
    from emotion_core.analysis import DataCache

    with _lock:
        if _data_cache is None:
            _data_cache = DataCache()
        return _data_cache


@task(name="evaluate-run")
def evaluate_run(
    config_name: str, run_id: str, store_uri: str, report_dir: str, bootstrap_samples: int = 1000, seed: int = 0
) -> dict:
    """The report entry (``ReportEntry.to_dict``) of one run: test metrics with CIs, calibration, reliability."""
    from emotion_core import analysis
    from emotion_core.runs import read_run

    logger = get_run_logger()
    try:
        run = read_run(open_task_store(store_uri).run_folder(run_id))
        entry = analysis.evaluate_run(
            run, data_cache().for_run(run), Path(report_dir), bootstrap_samples=bootstrap_samples, seed=seed
        )
    except (EmotionError, ValueError) as exc:
        logger.error("config %s: evaluation of run %s failed: %s", config_name, run_id, exc)
        return ReportEntry.failure(config_name, f"evaluation failed: {exc}", run_id).to_dict()
    ece = entry.calibration["ece"]["test"] or entry.calibration["ece"]["validation"]
    logger.info(
        "config %s: test macro-F1 %s, ECE %.4f -> %.4f after temperature scaling",
        config_name,
        f"{entry.test['metrics']['macro_f1']:.4f}" if entry.test else "n/a",
        ece["before"]["flat"],
        ece["after"]["flat"],
    )
    return entry.to_dict()


@task(name="explain-run")
def explain_run(config_name: str, run_id: str, store_uri: str, report_dir: str) -> dict | None:
    """SHAP explanations of a completed run's seeded test sample (``explain`` of its config); None if skipped."""
    from emotion_core import explain
    from emotion_core.files import write_json
    from emotion_core.runs import read_run
    from emotion_core.settings import cache_root

    logger = get_run_logger()
    name = config_name
    try:
        run = read_run(open_task_store(store_uri).run_folder(run_id))
        if run.config.explain.n_texts == 0:
            logger.info("config %s: no SHAP explanations (explain.n_texts is 0)", name)
            return None
        data = data_cache().for_run(run)
        split = "test" if len(data.split("test")) else "validation"
        folder = Path(report_dir) / "models" / name
        result = explain.explain_run(
            run, data.texts(split), data.ids(split), None, None, cache_root() / "shap", html_path=folder / "shap.html"
        )
    except Exception as exc:  # an explanation is a report section, never a reason to lose the comparison
        logger.error("config %s: SHAP explanation failed: %s: %s", name, type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    write_json(folder / "shap.json", {k: v for k, v in result.items() if k not in ("cache_path", "html_path")})
    logger.info(
        "config %s: SHAP on %d %s texts, %.2f s/text%s",
        name,
        result["n_texts"],
        split,
        result["seconds_per_text"],
        " (cached)" if result["cached"] else "",
    )
    return {
        "html": f"models/{name}/shap.html",
        "json": f"models/{name}/shap.json",
        "texts": result["n_texts"],
        "split": split,
        "seconds_per_text": result["seconds_per_text"],
        "cached": result["cached"],
    }


@task(name="store-analysis")
def store_analysis(entry: dict, store_uri: str, report_dir: str, settings: dict) -> str | None:
    """Store a completed entry's evaluation and explanation files beside its run (``run_analysis.write_analysis``);
    the index key, or None if the store refused (logged: the parent then evaluates the run itself)."""
    from emotion_core.run_analysis import AnalysisSettings, write_analysis
    from tasks.training import run_context

    logger = get_run_logger()
    record = ReportEntry.from_dict(entry)
    context = {k: v for k, v in run_context().items() if k in ("host", "worker", "flow_run_id", "cuda_visible_devices")}
    try:
        key = write_analysis(
            open_task_store(store_uri), record, Path(report_dir), AnalysisSettings.model_validate(settings), context
        )
    except EmotionError as exc:
        logger.error("config %s: evaluation not stored (the parent will evaluate it): %s", record.name, exc)
        return None
    logger.info("config %s: evaluation, calibration and explanation stored as %s", record.name, key)
    return key


@task(name="gather-analysis")
def gather_analysis(config_name: str, run_id: str, store_uri: str, report_dir: str, settings: dict) -> dict | None:
    """The report entry its child stored for a run (files copied into ``report_dir``); None, logged, if there is
    none or it is unusable: the caller evaluates the run itself."""
    from emotion_core.run_analysis import AnalysisSettings, read_analysis

    logger = get_run_logger()
    try:
        entry = read_analysis(
            open_task_store(store_uri), config_name, run_id, Path(report_dir), AnalysisSettings.model_validate(settings)
        )
    except EmotionError as exc:  # AnalysisUnusable names the file; an unreadable run fails in the evaluation too
        logger.warning("config %s: stored evaluation unusable, evaluating run %s here: %s", config_name, run_id, exc)
        return None
    if entry is None:
        logger.info(
            "config %s: run %s has no stored evaluation (an older run, or its child's evaluation failed): "
            "evaluating and explaining it here",
            config_name,
            run_id,
        )
        return None
    logger.info("config %s: evaluation and explanation of run %s from its child", config_name, run_id)
    return entry.to_dict()


@task(name="compare-runs")
def compare_runs(
    set_name: str,
    outcomes: list[dict],
    entries: list[dict],
    store_uri: str,
    report_dir: str,
    report_name: str,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    ensemble_top_k: int = 3,
    champion: dict | None = None,
    ensemble: dict | None = None,
) -> dict:
    """``comparison.compare_set`` of the set (``outcomes``: ``ChildOutcome`` dicts, ``entries``: the
    ``evaluate-run`` results; ``champion``/``ensemble``: ``ChampionConfig``/``EnsembleConfig`` fields), then its
    Prefect artifacts."""
    from emotion_core.comparison import compare_set
    from emotion_core.config import ChampionConfig, EnsembleConfig

    logger = get_run_logger()
    result = compare_set(
        set_name,
        [ChildOutcome.from_dict(o) for o in outcomes],
        [ReportEntry.from_dict(e) for e in entries],
        open_task_store(store_uri),
        Path(report_dir),
        report_name,
        data_cache(),
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        ensemble_top_k=ensemble_top_k,
        champion=ChampionConfig.model_validate(champion or {}),
        ensemble=EnsembleConfig.model_validate(ensemble or {}),
    )
    for decision in result.champion_decisions:
        logger.info("champion of %s: %s", decision["dataset_key"], decision["reason"])
    publish_artifacts(set_name, result)
    logger.info("comparison of %s:\n%s\nreport: %s/report.html", set_name, result.summary_markdown, result.report_uri)
    return result.to_dict()


def publish_artifacts(set_name: str, result) -> None:
    """The comparison as two Prefect artifacts of the run: a markdown summary and the summary table."""
    key = artifact_key(set_name)
    champions = "".join(f"\n\nChampion of {d['dataset_key']}: {d['reason']}" for d in result.champion_decisions)
    create_markdown_artifact(
        key=f"comparison-{key}",
        description=f"train-all {set_name}",
        markdown=f"# {set_name}\n\n{result.summary_markdown}\n\nBest: **{result.best or 'n/a'}**. "
        + champions
        + f"\n\nReport: `{result.report_uri}/report.html` "
        "(also summary.md, summary.csv, plots/).\n",
    )
    table = [
        {"config": row["model"], **{k: v for k, v in row.items() if k not in ("model", "error")}}
        for row in result.summary_rows
    ]
    create_table_artifact(key=f"comparison-table-{key}", description=f"train-all {set_name}", table=table)
