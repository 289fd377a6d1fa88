"""Compare the runs of a config set and publish the report: what the ``compare-runs`` task does, step by step.

Features
- ``compare_set``: every config stays a row (a failed child, an unreadable run or a failed evaluation is a
  failed row with its error); adds the cross-fitted ensemble (published to the store as a package,
  ``ensemble_package``), the paired tests against the best model and the
  champion/challenger decisions; logs to W&B (never fatal); writes the report (HTML, markdown, CSV,
  plots, the run comparison) and publishes it as ``reports/<report_name>`` in the store.
- Returns a ``Comparison``: where the report is, the summary table, the best model, the failures.

Limits
- A store that stays down fails the comparison with ``StoreError`` (the store retries its own requests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emotion_core import tracking
from emotion_core.analysis import DataCache, challenge_champions, ensemble_of, run_data, with_paired_tests
from emotion_core.config import ChampionConfig, EnsembleConfig
from emotion_core.errors import EmotionError
from emotion_core.metrics import METRIC_NAMES
from emotion_core.records import ChildOutcome, ReportEntry
from emotion_core.report import comparison_table, summary_markdown, summary_table, write_comparison, write_report
from emotion_core.run_scores import RunData
from emotion_core.runs import read_run
from emotion_core.store.base import ArtifactStore

__all__ = ["Comparison", "compare_set"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    """What ``compare_set`` produced."""

    report_uri: str
    """The published report folder in the store (``report.html``, ``summary.md``, ``summary.csv``, ``plots/``)."""
    summary_markdown: str
    """The summary table as Markdown."""
    summary_rows: list[dict[str, Any]]
    """The summary table, one dict per model (``report.summary.SUMMARY_COLUMNS``), best first."""
    best: str | None
    """The best model by validation score on the official metric (None with fewer than two models to compare)."""
    failed: list[dict[str, str]]
    """``{config, error}`` of every failed row."""
    champion_decisions: list[dict[str, Any]]
    """The registry's records of this set's champion/challenger decisions."""
    created: str
    """When the comparison finished (ISO 8601, UTC)."""

    def to_dict(self) -> dict[str, Any]:
        """The ``compare-runs`` task's result, which ``train-all`` returns."""
        uri = self.report_uri
        return {
            "report": uri,
            "html": f"{uri}/report.html",
            "markdown": f"{uri}/summary.md",
            "csv": f"{uri}/summary.csv",
            "table": self.summary_markdown,
            "best": self.best,
            "failed": self.failed,
            "champion_decisions": self.champion_decisions,
            "created": self.created,
        }


@dataclass
class _Models:
    """The set's models while they are compared: report rows, comparison-table inputs, logits."""

    rows: list[ReportEntry]
    compared: list[dict]  # a failed outcome, or {config, manifest}: the rows of the run comparison table
    arrays: dict[str, RunData]
    evaluated: set[str]  # configs that have an evaluate-run entry (their W&B run gets its numbers)


def compare_set(
    set_name: str,
    outcomes: list[ChildOutcome],
    entries: list[ReportEntry],
    store: ArtifactStore,
    report_folder: Path,
    report_name: str,
    data: DataCache,
    *,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    ensemble_top_k: int = 3,
    champion: ChampionConfig | None = None,
    ensemble: EnsembleConfig | None = None,
) -> Comparison:
    """Compare ``outcomes`` (one per config) using ``entries`` (the ``evaluate_run`` results); publish the report."""
    champion = champion or ChampionConfig()
    models = collect_models(outcomes, entries, store, data)
    ensembles = add_ensembles(
        models,
        report_folder,
        top_k=ensemble_top_k,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        settings=ensemble or EnsembleConfig(),
        store=store,
        run_id=f"{report_name}-ensemble",
        created_by=report_name,
    )
    models.rows, best = with_paired_tests(models.rows, models.arrays, bootstrap_samples=bootstrap_samples, seed=seed)
    decisions = []
    if champion.enabled:
        decisions = challenge_champions(
            models.rows,
            models.arrays,
            store,
            data,
            margin=champion.margin,
            alpha=champion.alpha,
            bootstrap_samples=bootstrap_samples,
            seed=seed,
        )
    rows = [r.to_dict() for r in models.rows]
    frame = summary_table(rows)
    tracked = track(set_name, models, rows, frame.to_dicts())
    title = f"Comparison: {set_name}"
    write_comparison(comparison_table(models.compared), report_folder, title)
    extra = report_extras(best, decisions, ensembles, tracked)
    write_report(rows, report_folder, title, set_name=set_name, extra=extra)
    report_uri = store.publish_report(report_folder, report_name)
    return Comparison(
        report_uri=report_uri,
        summary_markdown=summary_markdown(frame),
        summary_rows=frame.to_dicts(),
        best=best,
        failed=[{"config": r.name, "error": r.error} for r in models.rows if not r.completed],
        champion_decisions=decisions,
        created=datetime.now(UTC).isoformat(),
    )


def collect_models(
    outcomes: list[ChildOutcome], entries: list[ReportEntry], store: ArtifactStore, data: DataCache
) -> _Models:
    """One row per outcome, in order: its evaluated entry, or a failed row saying why there is none."""
    by_name = {e.name: e for e in entries}
    models = _Models(rows=[], compared=[], arrays={}, evaluated=set(by_name))
    for outcome in outcomes:
        name = outcome.config
        if outcome.failed:
            models.compared.append(outcome.to_dict())
            models.rows.append(ReportEntry.failure(name, outcome.error, outcome.run_id))
            continue
        try:
            run = read_run(store.run_folder(outcome.run_id))
        except EmotionError as exc:
            log.error("config %s: its child completed but run %s is not readable: %s", name, outcome.run_id, exc)
            error = f"run {outcome.run_id} not readable in {store.uri}: {exc}"
            models.compared.append({**outcome.to_dict(), "status": "failed", "error": error})
            models.rows.append(ReportEntry.failure(name, error, outcome.run_id))
            continue
        models.compared.append({"config": name, "manifest": run.manifest})
        entry = by_name.get(name)
        if entry is None or not entry.completed:
            models.rows.append(entry or ReportEntry.failure(name, "not evaluated", outcome.run_id))
            continue
        models.arrays[name] = run_data(run, data.for_run(run))
        models.rows.append(entry)
    return models


def add_ensembles(models: _Models, report_folder: Path, *, run_id: str, **options) -> list[ReportEntry]:
    """``add_ensemble`` once per dataset of the set (``ensemble_groups``); the package of each is published as
    ``runs/<run_id><suffix>``. Returns the ensembles made."""
    made = []
    for suffix, rows in ensemble_groups(models):
        entry = add_ensemble(models, rows, report_folder, run_id=f"{run_id}{suffix}", suffix=suffix, **options)
        made += [entry] if entry else []
    return made


def ensemble_groups(models: _Models) -> list[tuple[str, list[ReportEntry]]]:
    """The runs of each dataset with at least two evaluated runs, and the suffix of its ensemble's name: none for a
    set over one dataset, ``-<dataset>`` (``-<dataset key>`` when two keys share a dataset name) otherwise."""
    groups: dict[str, list[ReportEntry]] = {}
    for row in models.rows:
        if row.completed and row.name in models.arrays and row.dataset_key:
            groups.setdefault(row.dataset_key, []).append(row)
    groups = {key: rows for key, rows in groups.items() if len(rows) >= 2}
    if len(groups) <= 1:
        return [("", list(models.rows))]
    names = [key.rsplit("-", 1)[0] for key in groups]
    return [
        (f"-{name}" if names.count(name) == 1 else f"-{key}", rows) for name, (key, rows) in zip(names, groups.items())
    ]


def add_ensemble(
    models: _Models,
    rows: list[ReportEntry],
    report_folder: Path,
    *,
    top_k: int,
    bootstrap_samples: int,
    seed: int,
    settings: EnsembleConfig | None = None,
    store: ArtifactStore | None = None,
    run_id: str | None = None,
    created_by: str = "",
    suffix: str = "",
) -> ReportEntry | None:
    """Add the cross-fitted ensemble of the best of ``rows`` to ``models`` (a row and its data) and publish it as
    ``runs/<run_id>`` of ``store`` (``settings.publish``; a failed publish is logged, the row stays); None with
    fewer than two runs."""
    settings = settings or EnsembleConfig()
    made = ensemble_of(
        rows,
        models.arrays,
        report_folder,
        top_k=top_k,
        method=settings.method,
        folds=settings.folds,
        alpha=settings.alpha,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        suffix=suffix,
    )
    if made is None:
        return None
    entry, arrays, combiner = made
    if settings.publish and store is not None and run_id is not None:
        from emotion_core.ensemble_package import publish_ensemble

        try:
            publish_ensemble(store, run_id, entry, combiner, arrays, created_by=created_by)
            entry = replace(entry, run_id=run_id)
        except EmotionError as exc:
            log.error("ensemble %s: not published to %s: %s", entry.name, store.uri, exc)
    models.rows.append(entry)
    models.arrays[entry.name] = arrays
    return entry


def track(set_name: str, models: _Models, rows: list[dict], summary_rows: list[dict]) -> dict[str, str | None]:
    """W&B: one run per readable run and one for the summary table; offline unless an API key is set; never fatal.

    Returns config (or ``(summary)``) -> the local W&B run folder, or the error."""
    by_name = {r["name"]: r for r in rows if r["name"] in models.evaluated}
    tracked = {}
    for compared in models.compared:
        if "manifest" in compared:
            result = tracking.log_run(compared["manifest"], by_name.get(compared["config"]), group=set_name)
            tracked[compared["config"]] = result.get("run_dir") or result.get("error")
    result = tracking.log_summary(summary_rows, set_name)
    tracked["(summary)"] = result.get("run_dir") or result.get("error")
    return tracked


def _ensemble_fact(ensemble: ReportEntry) -> str:
    fit = ensemble.ensemble
    best, p_value = fit["member_oof_scores"][fit["best_member"]], fit["paired_vs_best_member"]["p_value"]
    return (
        f"{ensemble.name}: {', '.join(ensemble.members)} ({fit['method']}, {fit['folds']}-fold cross-fitted: "
        f"out-of-fold {METRIC_NAMES.get(ensemble.metric, ensemble.metric)} "
        f"{fit['oof_score']:.4f} vs best member {best:.4f}, p = {p_value:.3f}; "
        f"{'ranked' if fit['eligible'] else 'not ranked above its members'}"
        f"{'; package ' + ensemble.run_id if ensemble.run_id else ''})"
    )


def report_extras(
    best: str | None, decisions: list[dict], ensembles: list[ReportEntry], tracked: dict[str, str | None]
) -> dict[str, str | None]:
    """The report's "extra" facts: best model, champion decisions, the ensembles' members, W&B runs."""
    champions = {
        f"champion of {d['dataset_key']}": ("PROMOTED " if d["promoted"] else "kept: ") + d["reason"] for d in decisions
    }
    facts = [_ensemble_fact(e) for e in ensembles]
    return {
        "best model (validation macro-F1)": best or "n/a",
        **champions,
        "ensemble": "; ".join(facts) if facts else "none (fewer than 2 runs)",
        **{f"W&B {k}": v for k, v in tracked.items()},
    }
