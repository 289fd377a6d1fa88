"""After training: score, calibrate, ensemble and compare the runs of a config set, from their stored logits.

Features
- ``run_data``: a run's validation and test logits with the truth aligned by id (``run_scores.RunData``); the truth
  comes from reloading the run's data config, whose hash must equal the manifest's (``DataError``).
- ``evaluate_run``: a run's ``ReportEntry``: test metrics with bootstrap CIs, temperature scaling,
  reliability diagram (files under ``models/<name>/`` of the report folder).
- ``ensemble_of``: the cross-fitted ensemble of the top-k runs sharing the best run's full validation set
  (``ensemble.cross_fit``: weighted mean or stacking); ranked above its members only if it beat them out of fold.
- ``with_paired_tests`` / ``paired_vs_champion``: paired bootstrap of test macro-F1 on shared test rows.
- ``challenge_champions``: per dataset, the set's best run challenges the registry's champion.

Limits
- Runs of one set may use different data subsets: ensembles and paired tests use the shared rows.
- Reads saved logits only (no GPU, nothing predicted again); SHAP lives in ``explain``.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from emotion_core.calibration import calibrate_run
from emotion_core.data.dataset import EmotionData
from emotion_core.data.load import load_data
from emotion_core.ensemble import Combiner, CrossFit, cross_fit
from emotion_core.ensemble import top_k as best_runs
from emotion_core.errors import DataError, EmotionError
from emotion_core.evaluation import align_labels, evaluate_split, paired_bootstrap
from emotion_core.files import write_json
from emotion_core.metrics import RANKING_METRICS, sigmoid
from emotion_core.records import ReportEntry
from emotion_core.registry import Registry, dataset_key_of, decide
from emotion_core.report.plots import reliability_diagram
from emotion_core.run_scores import RunData
from emotion_core.runs import Run, read_run
from emotion_core.thresholds import apply_thresholds

log = logging.getLogger(__name__)


class DataCache:
    """``load_data`` once per data config (runs of a set mostly share theirs); safe to share between threads."""

    def __init__(self) -> None:
        self._loaded: dict[str, EmotionData] = {}
        self._lock = threading.Lock()

    def for_run(self, run: Run) -> EmotionData:
        cfg = _data_config(run)
        key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        with self._lock:  # tasks may run in threads: read each dataset once
            if key not in self._loaded:
                self._loaded[key] = load_data(cfg)
            data = self._loaded[key]
        expected = run.manifest["data"]["hash"]
        if data.data_hash != expected:
            raise DataError(
                f"run {run.run_id}: its data config now reads data with hash {data.data_hash}, the run was "
                f"trained on {expected}; the data files changed since, so its logits cannot be scored"
            )
        return data


def _data_config(run: Run):
    """The run's data config; a pushed dataset is read where the run read it (the manifest's full reference)."""
    cfg, recorded = run.config.data, run.manifest["data"].get("store_ref")
    if not cfg.store_ref or recorded is None:
        return cfg
    try:  # validated again: the manifest comes from the store
        return type(cfg).model_validate({**cfg.model_dump(), "store_ref": recorded})
    except ValueError:
        raise DataError(
            f"run {run.run_id}: its manifest's data.store_ref {str(recorded)[:200]!r} is not a dataset reference"
        ) from None


def run_data(run: Run, data: EmotionData) -> RunData:
    ids, logits, truth = {}, {}, {}
    for split in ("validation", "test"):
        if not (run.folder / "logits" / f"{split}.parquet").is_file():
            continue
        split_ids, split_logits = run.logits(split)
        try:
            truth[split] = align_labels(split_ids, data.ids(split), data.labels(split))
        except ValueError as exc:
            raise DataError(f"run {run.run_id}, {split} logits: {exc}") from None
        ids[split], logits[split] = split_ids, split_logits
    return RunData(
        run.config.name,
        ids,
        logits,
        truth,
        run.thresholds(),
        list(run.schema.names),
        at_least_one=run.at_least_one(),
        metric=manifest_metric(run.manifest),
    )


def manifest_metric(manifest: dict) -> str:
    """The metric a run was tuned and is ranked on (runs from before datasets declared one: macro-F1)."""
    metric = manifest.get("metric", "macro_f1")
    if metric not in RANKING_METRICS:
        raise DataError(
            f"run {manifest.get('run_id')}: manifest metric {metric!r} is not one of {', '.join(RANKING_METRICS)}"
        )
    return metric


def fit_validation_calibration(run: Run, data: EmotionData) -> dict:
    """``calibrate_run`` on a run's validation split alone, at its threshold policy: what ``submit`` and
    ``export`` use for a run trained before ``calibration.json`` shipped with runs."""
    arrays = run_data(run, data)
    return calibrate_run(
        arrays.logits["validation"],
        arrays.truth["validation"],
        None,
        None,
        arrays.names,
        policy=run.manifest["threshold_policy"],
        metric=arrays.metric,
        shrinkage=run.config.threshold_shrinkage,
    )


def method_of(config: dict) -> str:
    """``full``, ``lora``, ``qlora``, ``ia3`` or ``prompted`` from a run config (as a dict)."""
    model = config["model"]
    if model["family"] == "zero_shot":
        return "prompted"
    return (model.get("adapter") or {}).get("method") or "full"


def _number_or_none(value) -> float | None:
    """A finite number from a manifest (untrusted input), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return None
    return float(value)


def _devices(manifest: dict) -> int:
    """Ranks that trained a run (``distributed.world_size``; 1 for runs from before it was recorded)."""
    size = (manifest.get("distributed") or {}).get("world_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else 1


def entry_of_manifest(name: str, manifest: dict) -> ReportEntry:
    """A completed run's entry with the facts of its manifest (cost, validation score); no test metrics yet."""
    memory = manifest["memory"]
    policy = manifest["threshold_policy"]
    return ReportEntry(
        name=name,
        status="completed",
        family=manifest["family"],
        method=method_of(manifest["config"]),
        model=manifest["model"],
        run_id=manifest["run_id"],
        trainable_params=manifest["parameters"]["trainable"],
        total_params=manifest["parameters"]["total"],
        train_seconds=manifest["timing"]["train_seconds"],
        train_samples_per_s=manifest["timing"]["train_samples_per_second"],
        devices=_devices(manifest),
        inference_ms_per_text=_number_or_none((manifest["timing"].get("inference") or {}).get("ms_per_text")),
        peak_memory_mb=memory.get("peak_gpu_allocated_mb") or memory.get("peak_rss_mb"),
        validation_macro_f1=manifest["summary"]["validation"][policy]["macro_f1"],
        threshold_policy=policy,
        dataset_key=dataset_key_of(manifest),
        metric=manifest_metric(manifest),
        validation_score=manifest["summary"]["validation"][policy][manifest_metric(manifest)],
        validation_held_out=_number_or_none((manifest.get("threshold_selection") or {}).get("held_out_score")),
    )


def evaluate_run(
    run: Run, data: EmotionData, report_folder: Path, *, bootstrap_samples: int = 1000, seed: int = 0
) -> ReportEntry:
    """The entry of one completed run; its files go under ``report_folder/models/<name>/``."""
    arrays = run_data(run, data)
    name = run.config.name
    folder = Path(report_folder) / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    files, test = {}, None
    if "test" in arrays.logits:
        test = evaluate_split(
            arrays.truth["test"],
            sigmoid(arrays.logits["test"]),
            arrays.thresholds,
            arrays.names,
            bootstrap_n=bootstrap_samples,
            seed=seed,
            at_least_one=arrays.at_least_one,
        )
        write_json(folder / "evaluation.json", test)
        files["evaluation"] = f"models/{name}/evaluation.json"
    entry = entry_of_manifest(name, run.manifest)
    calibration = calibrate_run(
        arrays.logits["validation"],
        arrays.truth["validation"],
        arrays.logits.get("test"),
        arrays.truth.get("test"),
        arrays.names,
        policy=entry.threshold_policy,
        metric=arrays.metric,
        shrinkage=run.config.threshold_shrinkage,
    )
    write_json(folder / "calibration.json", calibration)
    files["calibration"] = f"models/{name}/calibration.json"
    bins = calibration["reliability"]["test"] or calibration["reliability"]["validation"]
    split = "test" if calibration["reliability"]["test"] else "validation"
    reliability_diagram(
        bins["before"],
        bins["after"],
        folder / "reliability.png",
        f"{name}: reliability on {split} (before / after temperature scaling)",
    )
    files["reliability"] = f"models/{name}/reliability.png"
    return replace(entry, test=test, calibration=calibration, files=files)


def common_ids(arrays: list[RunData], split: str) -> list[str]:
    """Ids every model has for ``split``, in the first model's order."""
    shared = set(arrays[0].ids.get(split, []))
    for other in arrays[1:]:
        shared &= set(other.ids.get(split, []))
    return [i for i in arrays[0].ids.get(split, []) if i in shared]


def rows_of(values: np.ndarray, ids: list[str], wanted: list[str]) -> np.ndarray:
    position = {i: k for k, i in enumerate(ids)}
    return values[[position[i] for i in wanted]]


def ranking_score(entry: ReportEntry) -> float | None:
    """What ranks an entry: its validation score on its dataset's official metric (older entries: macro-F1)."""
    return entry.validation_score if entry.validation_score is not None else entry.validation_macro_f1


def best_entries(entries: list[ReportEntry], k: int) -> list[ReportEntry]:
    """The ``k`` best entries by validation score on the official metric, in ``ensemble.top_k``'s order
    (ties: name, run id)."""
    by_name = {e.name: e for e in entries}
    ranked = best_runs(
        [{"name": e.name, "run_id": e.run_id, "validation_macro_f1": ranking_score(e)} for e in entries], k
    )
    return [by_name[r["name"]] for r in ranked]


def shared_validation_problem(anchor: RunData, other: RunData) -> str | None:
    """Why ``other`` cannot join an ensemble anchored on ``anchor`` (None: it can): it must have predicted the
    same labels on the full validation set of ``anchor`` (same ids, no more, no fewer) with the same truth."""
    if other.names != anchor.names:
        return "its labels differ from the best run's"
    if "validation" not in other.ids:
        return "it has no validation logits"
    ids, anchor_ids = other.ids["validation"], anchor.ids["validation"]
    if len(set(ids)) != len(ids) or set(ids) != set(anchor_ids):
        missing, extra = len(set(anchor_ids) - set(ids)), len(set(ids) - set(anchor_ids))
        return f"its validation rows differ from the best run's ({missing} missing, {extra} extra)"
    if not np.array_equal(rows_of(other.truth["validation"], ids, anchor_ids), anchor.truth["validation"]):
        return "its validation labels differ from the best run's (another version of the data)"
    return None


def ensemble_members(
    entries: list[ReportEntry], arrays: dict[str, RunData], top_k: int
) -> tuple[list[ReportEntry], list[dict]]:
    """The best run and up to ``top_k - 1`` next best runs sharing its full validation set; and the runs
    passed over, ``{name, reason}`` (logged)."""
    candidates = [
        e
        for e in entries
        if e.completed
        and e.family != "ensemble"
        and e.name in arrays
        and not arrays[e.name].probabilities
        and "validation" in arrays[e.name].ids
    ]
    ranked = best_entries(candidates, len(candidates)) if candidates else []
    chosen, excluded = ranked[:1], []
    for entry in ranked[1:]:
        if len(chosen) == top_k:
            break
        problem = shared_validation_problem(arrays[chosen[0].name], arrays[entry.name])
        if problem is None:
            chosen.append(entry)
        else:
            log.warning("ensemble: %s left out: %s", entry.name, problem)
            excluded.append({"name": entry.name, "reason": problem})
    return chosen, excluded


def ensemble_of(
    entries: list[ReportEntry],
    arrays: dict[str, RunData],
    report_folder: Path,
    *,
    top_k: int = 3,
    method: str = "weighted_mean",
    folds: int = 5,
    alpha: float = 0.05,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    suffix: str = "",
) -> tuple[ReportEntry, RunData, Combiner] | None:
    """The cross-fitted ensemble of the best runs (``ensemble.cross_fit``): its entry (named
    ``ensemble-top<k><suffix>``), its data and its fitted combiner; None with fewer than two members or too few
    validation rows.

    Its ``validation_macro_f1`` is the out-of-fold score; ``ensemble["eligible"]`` says whether it may rank
    above its members (``rankable``). Test probabilities come from the combiner refitted on all validation rows.
    """
    if top_k < 2:
        return None
    ranked, excluded = ensemble_members(entries, arrays, top_k)
    if len(ranked) < 2:
        log.warning("no ensemble: fewer than two runs share the best run's validation set")
        return None
    members = [arrays[e.name] for e in ranked]
    val_ids = members[0].ids["validation"]
    folds = min(folds, len(val_ids) // 2)
    if folds < 2:
        log.warning("no ensemble: %d validation rows are too few to cross-fit", len(val_ids))
        return None
    val_logits = [rows_of(m.logits["validation"], m.ids["validation"], val_ids) for m in members]
    policy, metric = ranked[0].threshold_policy or "per_label", members[0].metric
    fit = cross_fit(
        val_logits,
        members[0].truth["validation"],
        members[0].names,
        method=method,
        policy=policy,
        folds=folds,
        alpha=alpha,
        bootstrap_n=bootstrap_samples,
        seed=seed,
        metric=metric,
    )
    _log_not_eligible(ranked, fit, metric)
    test_ids = common_ids(members, "test")
    entry = _ensemble_entry(ranked, excluded, fit, policy, metric, rows=(len(val_ids), len(test_ids)), suffix=suffix)
    data = _validation_data(entry.name, members[0], fit.combiner, val_logits)
    if test_ids:
        entry = _score_test(entry, data, members, fit.combiner, test_ids, report_folder, bootstrap_samples, seed)
    return entry, data, fit.combiner


def _log_not_eligible(ranked: list[ReportEntry], fit: CrossFit, metric: str) -> None:
    if not fit.eligible:
        log.info(
            "ensemble of %s: not ranked above its members (out-of-fold %s %.4f vs best member %.4f, p = %.3f)",
            ", ".join(e.name for e in ranked),
            metric,
            fit.oof_score,
            fit.member_oof_scores[fit.best_member],
            fit.paired["p_value"],
        )


def _ensemble_entry(
    ranked: list[ReportEntry],
    excluded: list[dict],
    fit: CrossFit,
    policy: str,
    metric: str,
    rows: tuple[int, int],
    suffix: str = "",
) -> ReportEntry:
    """The ensemble's report entry: its members' costs summed, its out-of-fold score as its validation score."""
    return ReportEntry(
        name=f"ensemble-top{len(ranked)}{suffix}",
        status="completed",
        family="ensemble",
        method="ensemble",
        model=" + ".join(e.name for e in ranked),
        trainable_params=sum(e.trainable_params or 0 for e in ranked),
        total_params=sum(e.total_params or 0 for e in ranked),
        train_seconds=sum(e.train_seconds or 0 for e in ranked),
        devices=1,
        inference_ms_per_text=(
            sum(e.inference_ms_per_text for e in ranked)
            if all(e.inference_ms_per_text is not None for e in ranked)
            else None
        ),
        threshold_policy=policy,
        metric=metric,
        validation_score=fit.oof_score,
        validation_held_out=fit.oof_score,
        validation_macro_f1=fit.oof_score if metric == "macro_f1" else None,
        dataset_key=ranked[0].dataset_key,
        members=[e.name for e in ranked],
        rows={"validation": rows[0], "test": rows[1]},
        ensemble={**fit.summary(), "member_run_ids": [e.run_id for e in ranked], "excluded": excluded},
    )


def _validation_data(name: str, first: RunData, combiner: Combiner, val_logits: list[np.ndarray]) -> RunData:
    """The ensemble's own ``RunData`` on the validation rows: probabilities (already calibrated), not logits."""
    return RunData(
        name,
        {"validation": first.ids["validation"]},
        {"validation": combiner.probabilities(val_logits)},
        {"validation": first.truth["validation"]},
        combiner.thresholds,
        first.names,
        probabilities=True,
        metric=first.metric,
    )


def _score_test(
    entry: ReportEntry,
    data: RunData,
    members: list[RunData],
    combiner: Combiner,
    test_ids: list[str],
    report_folder: Path,
    bootstrap_samples: int,
    seed: int,
) -> ReportEntry:
    """Evaluate the ensemble on the members' shared test rows (``models/<name>/evaluation.json``); add the test
    split to ``data``; the entry with its test metrics."""
    test_true = rows_of(members[0].truth["test"], members[0].ids["test"], test_ids)
    test_probs = combiner.probabilities([rows_of(m.logits["test"], m.ids["test"], test_ids) for m in members])
    test = evaluate_split(
        test_true, test_probs, combiner.thresholds, data.names, bootstrap_n=bootstrap_samples, seed=seed
    )
    folder = Path(report_folder) / "models" / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "evaluation.json", test)
    # The ensemble's own data for the paired tests: its ids, probabilities (already calibrated) and thresholds.
    data.ids["test"], data.logits["test"], data.truth["test"] = test_ids, test_probs, test_true
    return replace(entry, test=test, files={"evaluation": f"models/{entry.name}/evaluation.json"})


def rankable(entry: ReportEntry) -> bool:
    """Whether an entry may be ranked best: every run; an ensemble only if it beat its best member out of fold."""
    return entry.family != "ensemble" or bool((entry.ensemble or {}).get("eligible"))


def test_predictions(arrays: RunData, ids: list[str]) -> np.ndarray:
    values = rows_of(arrays.logits["test"], arrays.ids["test"], ids)
    return apply_thresholds(values if arrays.probabilities else sigmoid(values), arrays.thresholds, arrays.at_least_one)


def paired_test(a: RunData, b: RunData, *, n: int = 1000, seed: int = 0) -> tuple[dict, int] | None:
    """``evaluation.paired_bootstrap`` of the official test metric (``a`` minus ``b``) on the test rows both have,
    each at its own thresholds (both scored on ``a``'s metric), and how many rows that is; None when they share no
    test row."""
    ids = common_ids([a, b], "test")
    if not ids:
        return None
    truth = rows_of(a.truth["test"], a.ids["test"], ids)
    return paired_bootstrap(
        truth, test_predictions(a, ids), test_predictions(b, ids), n=n, seed=seed, metric=a.metric
    ), len(ids)


def with_paired_tests(
    entries: list[ReportEntry], arrays: dict[str, RunData], *, bootstrap_samples: int = 1000, seed: int = 0
) -> tuple[list[ReportEntry], str | None]:
    """``entries`` with ``paired_vs_best`` set on every completed one (model a) against the best of its dataset by
    validation score on the official metric (b), and the best one's name (of the first dataset in ``entries``; None
    with fewer than two models with test logits). A set over several datasets is ranked per dataset.
    An ensemble that did not beat its best member out of fold is never the best (``rankable``)."""
    completed = [e for e in entries if e.completed and e.name in arrays and "test" in arrays[e.name].ids]
    if len(completed) < 2:
        return entries, None
    groups: dict[str | None, list[ReportEntry]] = {}
    for entry in completed:
        groups.setdefault(entry.dataset_key, []).append(entry)
    paired, first_best = {}, None
    for group in groups.values():
        best = best_entries([e for e in group if rankable(e)] or group, 1)[0]
        first_best = first_best or best.name
        for entry in group:
            if entry is best:
                continue
            tested = paired_test(arrays[entry.name], arrays[best.name], n=bootstrap_samples, seed=seed)
            if tested is None:
                paired[entry.name] = {
                    "best": best.name,
                    "rows": 0,
                    "skipped": "no test rows shared with the best model",
                }
            else:
                paired[entry.name] = {**tested[0], "best": best.name, "rows": tested[1]}
    return [replace(e, paired_vs_best=paired[e.name]) if e.name in paired else e for e in entries], first_best


def paired_vs_champion(challenger: RunData, champion: RunData, *, n: int = 1000, seed: int = 0) -> dict | None:
    """``paired_test`` with the challenger as ``a`` and the champion as ``b``, plus ``champion`` (its name);
    ``None`` when either has no test logits or they share no test row. ``ValueError`` if their labels differ."""
    if challenger.names != champion.names:
        raise ValueError(f"{challenger.name} and {champion.name} have different labels; they cannot be compared")
    if any("test" not in run.ids for run in (challenger, champion)):
        return None
    tested = paired_test(challenger, champion, n=n, seed=seed)
    return None if tested is None else {**tested[0], "rows": tested[1], "champion": champion.name}


def champion_data(store, run_id: str, data: DataCache) -> RunData:
    """The ``RunData`` of a champion of the registry: a run's logits, or a published ensemble's probabilities."""
    from emotion_core.ensemble_package import ensemble_run_data, is_ensemble

    folder = store.run_folder(run_id)
    if is_ensemble(folder):
        return ensemble_run_data(folder, store, data)
    champion_run = read_run(folder)
    return run_data(champion_run, data.for_run(champion_run))


def challenge_champions(
    entries: list[ReportEntry],
    arrays: dict[str, RunData],
    store,
    data: DataCache,
    *,
    margin: float,
    alpha: float,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Record one champion/challenger decision per dataset key of the completed runs; returns the records."""
    by_dataset: dict[str, list[ReportEntry]] = {}
    for entry in entries:  # an ensemble challenges only if it beat its members out of fold and was published
        challenger = entry.family != "ensemble" or (rankable(entry) and entry.run_id and entry.dataset_key)
        if entry.completed and challenger and entry.name in arrays:
            by_dataset.setdefault(entry.dataset_key, []).append(entry)
    best = {key: best_entries(group, 1)[0] for key, group in by_dataset.items()}
    registry = Registry(store)
    records = []
    for key, challenger in sorted(best.items()):
        champion = registry.champion(key)
        paired = None
        if champion is not None and champion["run_id"] != challenger.run_id:
            try:
                paired = paired_vs_champion(
                    arrays[challenger.name],
                    champion_data(store, champion["run_id"], data),
                    n=bootstrap_samples,
                    seed=seed,
                )
            except (EmotionError, ValueError) as exc:  # e.g. the data changed since the champion was trained
                paired = {"skipped": f"champion {champion['run_id']} cannot be scored: {exc}"}
            if paired is None:
                paired = {"skipped": "no test rows shared with the champion"}
        decision = decide(champion, challenger.to_dict(), margin=margin, alpha=alpha, paired=paired, dataset_key=key)
        records.append(registry.record(decision))
        log.info("champion of %s: %s", key, decision.reason)
    return records
