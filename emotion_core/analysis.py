"""After training: evaluate, calibrate, ensemble and compare the runs of a config set, from stored logits.

Features
- ``RunData``: one run's validation and test logits with the truth aligned to them by id. The
  truth comes from reloading the run's own data config (``load_data``); its data hash must equal
  the manifest's, so a run is never scored against other data (``DataError`` otherwise).
- ``evaluate_run``: the report's model entry for one run (``report.summary`` documents the keys):
  ``evaluation.evaluate_split`` on test at the run's thresholds (PR/ROC-AUC, Brier, ECE, bootstrap
  CIs) and ``calibration.calibrate_run`` (per-label temperatures fitted on validation, thresholds
  re-tuned, ECE before/after); writes ``evaluation.json``, ``calibration.json`` and
  ``reliability.png`` under ``models/<name>/`` of the report folder.
- ``add_ensemble``: the mean of the calibrated probabilities of the top-k runs by validation
  macro-F1 (``ensemble``), evaluated like any model.
- ``add_paired_tests``: a paired bootstrap of macro-F1 on test between every model and the best
  one (highest validation macro-F1), on the test rows they share.
- ``challenge_champions``: per dataset, the set's best run (by validation macro-F1; ensembles are
  not runs and never compete) challenges the champion in the store's registry (``registry``): it is
  promoted only if it beats the champion by the configured margin and the paired bootstrap on the
  shared test rows agrees; every decision is recorded, and the champion's run is never touched.
- ``failed_entry``: a failed config stays a row of the report, with its error.

Limits
- Models of one set can be trained on different subsets (``max_*_samples``): the ensemble and the
  paired tests use the rows the models share, and say how many (``rows``); with none shared, no
  test is made and the entry says why.
- Everything reads the runs' saved logits: nothing is predicted again, so an evaluation change needs
  no GPU. SHAP explanations need the model and live in ``explain``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emotion_core.calibration import calibrate_run
from emotion_core.report.plots import reliability_diagram
from emotion_core.data import EmotionData, load_data
from emotion_core.ensemble import ensemble_split
from emotion_core.ensemble import top_k as best_runs
from emotion_core.errors import DataError, EmotionError
from emotion_core.evaluation import align_labels, evaluate_split, paired_bootstrap
from emotion_core.metrics import multilabel_metrics, sigmoid
from emotion_core.registry import Registry, dataset_key_of, decide, paired_vs_champion
from emotion_core.files import write_json
from emotion_core.runs import Run, read_run
from emotion_core.thresholds import apply_thresholds

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """A run's logits and the aligned truth: ``ids[split]``, ``logits[split]`` (float32), ``truth[split]`` (0/1)."""

    name: str
    ids: dict[str, list[str]]
    logits: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    thresholds: np.ndarray
    names: list[str]
    probabilities: bool = False
    """``logits`` hold probabilities already (the ensemble's calibrated mean), not logits."""


class DataCache:
    """``load_data`` once per data config: runs of a set mostly share theirs."""

    def __init__(self) -> None:
        self._loaded: dict[str, EmotionData] = {}

    def for_run(self, run: Run) -> EmotionData:
        key = json.dumps(run.config.data.model_dump(mode="json"), sort_keys=True)
        if key not in self._loaded:
            self._loaded[key] = load_data(run.config.data)
        data = self._loaded[key]
        expected = run.manifest["data"]["hash"]
        if data.data_hash != expected:
            raise DataError(f"run {run.run_id}: its data config now reads data with hash {data.data_hash}, the run was "
                            f"trained on {expected}; the data files changed since, so its logits cannot be scored")
        return data


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
    return RunData(run.config.name, ids, logits, truth, run.thresholds(), list(run.schema.names))


def fit_validation_calibration(run: Run, data: EmotionData) -> dict:
    """``calibrate_run`` on a run's validation split alone, at its threshold policy: what ``submit`` and
    ``export`` use for a run trained before ``calibration.json`` shipped with runs."""
    arrays = run_data(run, data)
    return calibrate_run(arrays.logits["validation"], arrays.truth["validation"], None, None, arrays.names,
                         policy=run.manifest["threshold_policy"])


def method_of(config: dict) -> str:
    """``full``, ``lora``, ``qlora``, ``ia3`` or ``prompted`` from a run config (as a dict)."""
    model = config["model"]
    if model["family"] == "zero_shot":
        return "prompted"
    return (model.get("adapter") or {}).get("method") or "full"


def failed_entry(name: str, error: str, run_id: str | None = None) -> dict:
    return {"name": name, "status": "failed", "error": error, "run_id": run_id}


def _manifest_facts(manifest: dict) -> dict:
    memory = manifest["memory"]
    policy = manifest["threshold_policy"]
    return {
        "family": manifest["family"], "method": method_of(manifest["config"]), "model": manifest["model"],
        "run_id": manifest["run_id"],
        "trainable_params": manifest["parameters"]["trainable"], "total_params": manifest["parameters"]["total"],
        "train_seconds": manifest["timing"]["train_seconds"],
        "train_samples_per_s": manifest["timing"]["train_samples_per_second"],
        "peak_memory_mb": memory.get("peak_gpu_allocated_mb") or memory.get("peak_rss_mb"),
        "validation_macro_f1": manifest["summary"]["validation"][policy]["macro_f1"],
        "threshold_policy": policy, "dataset_key": dataset_key_of(manifest),
    }


def evaluate_run(run: Run, data: EmotionData, report_folder: Path, *, bootstrap_samples: int = 1000,
                 seed: int = 0) -> dict:
    """The model entry of one completed run; its files go under ``report_folder/models/<name>/``."""
    arrays = run_data(run, data)
    folder = Path(report_folder) / "models" / run.config.name
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"name": run.config.name, "status": "completed", "error": None, **_manifest_facts(run.manifest),
             "test": None, "calibration": None, "paired_vs_best": None, "explanation": None, "files": {}}
    if "test" in arrays.logits:
        entry["test"] = evaluate_split(arrays.truth["test"], sigmoid(arrays.logits["test"]), arrays.thresholds,
                                       arrays.names, bootstrap_n=bootstrap_samples, seed=seed)
        write_json(folder / "evaluation.json", entry["test"])
        entry["files"]["evaluation"] = f"models/{run.config.name}/evaluation.json"
    calibration = calibrate_run(arrays.logits["validation"], arrays.truth["validation"], arrays.logits.get("test"),
                                arrays.truth.get("test"), arrays.names, policy=entry["threshold_policy"])
    entry["calibration"] = calibration
    write_json(folder / "calibration.json", calibration)
    entry["files"]["calibration"] = f"models/{run.config.name}/calibration.json"
    bins = calibration["reliability"]["test"] or calibration["reliability"]["validation"]
    split = "test" if calibration["reliability"]["test"] else "validation"
    reliability_diagram(bins["before"], bins["after"], folder / "reliability.png",
                        f"{run.config.name}: reliability on {split} (before / after temperature scaling)")
    entry["files"]["reliability"] = f"models/{run.config.name}/reliability.png"
    return entry


def common_ids(arrays: list[RunData], split: str) -> list[str]:
    """Ids every model has for ``split``, in the first model's order."""
    shared = set(arrays[0].ids.get(split, []))
    for other in arrays[1:]:
        shared &= set(other.ids.get(split, []))
    return [i for i in arrays[0].ids.get(split, []) if i in shared]


def rows_of(values: np.ndarray, ids: list[str], wanted: list[str]) -> np.ndarray:
    position = {i: k for k, i in enumerate(ids)}
    return values[[position[i] for i in wanted]]


def add_ensemble(entries: list[dict], arrays: dict[str, RunData], report_folder: Path, *, top_k: int = 3,
                 bootstrap_samples: int = 1000, seed: int = 0) -> dict | None:
    """Append (and return) the ensemble of the ``top_k`` best completed runs; None with fewer than two."""
    if top_k < 2:
        return None
    ranked = best_runs([e for e in entries if e["status"] == "completed" and e["name"] in arrays], top_k)
    if len(ranked) < 2:
        return None
    members = [arrays[e["name"]] for e in ranked]
    names = members[0].names
    if any(m.names != names for m in members):
        log.warning("no ensemble: the best runs have different label sets")
        return None
    val_ids, test_ids = common_ids(members, "validation"), common_ids(members, "test")
    if not val_ids:
        log.warning("no ensemble: the best runs share no validation rows")
        return None
    val_true = rows_of(members[0].truth["validation"], members[0].ids["validation"], val_ids)
    combined = ensemble_split(
        [(val_ids, rows_of(m.logits["validation"], m.ids["validation"], val_ids)) for m in members], val_true,
        [(test_ids, rows_of(m.logits["test"], m.ids["test"], test_ids)) for m in members] if test_ids else None,
        policy=ranked[0]["threshold_policy"])
    validation_probs = combined["validation"][1]
    name = f"ensemble-top{len(members)}"
    entry = {"name": name, "status": "completed", "error": None, "family": "ensemble", "method": "ensemble",
             "model": " + ".join(e["name"] for e in ranked), "run_id": None,
             "trainable_params": sum(e["trainable_params"] or 0 for e in ranked),
             "total_params": sum(e["total_params"] or 0 for e in ranked),
             "train_seconds": sum(e["train_seconds"] or 0 for e in ranked), "train_samples_per_s": None,
             "peak_memory_mb": None, "threshold_policy": ranked[0]["threshold_policy"],
             "validation_macro_f1": multilabel_metrics(val_true, apply_thresholds(validation_probs, combined["thresholds"]),
                                                       names)["macro_f1"],
             "members": [e["name"] for e in ranked], "rows": {"validation": len(val_ids), "test": len(test_ids)},
             "test": None, "calibration": None, "paired_vs_best": None, "explanation": None, "files": {}}
    if test_ids:
        test_true = rows_of(members[0].truth["test"], members[0].ids["test"], test_ids)
        entry["test"] = evaluate_split(test_true, combined["test"][1], combined["thresholds"], names,
                                       bootstrap_n=bootstrap_samples, seed=seed)
        folder = Path(report_folder) / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "evaluation.json", entry["test"])
        entry["files"]["evaluation"] = f"models/{name}/evaluation.json"
    # The ensemble's own data for the paired tests: its ids, probabilities (already calibrated) and thresholds.
    arrays[name] = RunData(name, {"validation": val_ids, **({"test": test_ids} if test_ids else {})},
                           {"validation": validation_probs, **({"test": combined["test"][1]} if test_ids else {})},
                           {"validation": val_true, **({"test": test_true} if test_ids else {})},
                           combined["thresholds"], names, probabilities=True)
    entries.append(entry)
    return entry


def test_predictions(arrays: RunData, ids: list[str]) -> np.ndarray:
    values = rows_of(arrays.logits["test"], arrays.ids["test"], ids)
    return apply_thresholds(values if arrays.probabilities else sigmoid(values), arrays.thresholds)


def add_paired_tests(entries: list[dict], arrays: dict[str, RunData], *, bootstrap_samples: int = 1000,
                     seed: int = 0) -> str | None:
    """Set ``paired_vs_best`` on every completed entry (model a) against the best by validation macro-F1 (b)."""
    completed = [e for e in entries if e["status"] == "completed" and e["name"] in arrays and "test" in arrays[e["name"]].ids]
    if len(completed) < 2:
        return None
    best = best_runs(completed, 1)[0]
    for entry in completed:
        if entry is best:
            continue
        pair = [arrays[entry["name"]], arrays[best["name"]]]
        ids = common_ids(pair, "test")
        if not ids:
            entry["paired_vs_best"] = {"best": best["name"], "rows": 0, "skipped": "no test rows shared with the best model"}
            continue
        truth = rows_of(pair[0].truth["test"], pair[0].ids["test"], ids)
        result = paired_bootstrap(truth, test_predictions(pair[0], ids), test_predictions(pair[1], ids),
                                  n=bootstrap_samples, seed=seed)
        entry["paired_vs_best"] = {**result, "best": best["name"], "rows": len(ids)}
    return best["name"]


def challenge_champions(entries: list[dict], arrays: dict[str, RunData], store, data: DataCache, *, margin: float,
                        alpha: float, bootstrap_samples: int = 1000, seed: int = 0) -> list[dict]:
    """Record one champion/challenger decision per dataset key of the completed runs; returns the records."""
    by_dataset: dict[str, list[dict]] = {}
    for entry in entries:
        if entry["status"] == "completed" and entry["family"] != "ensemble" and entry["name"] in arrays:
            by_dataset.setdefault(entry["dataset_key"], []).append(entry)
    best = {key: best_runs(group, 1)[0] for key, group in by_dataset.items()}
    registry = Registry(store)
    records = []
    for key, challenger in sorted(best.items()):
        champion = registry.champion(key)
        paired = None
        if champion is not None and champion["run_id"] != challenger["run_id"]:
            try:
                champion_run = read_run(store.run_folder(champion["run_id"]))
                paired = paired_vs_champion(arrays[challenger["name"]], run_data(champion_run, data.for_run(champion_run)),
                                            n=bootstrap_samples, seed=seed)
            except (EmotionError, ValueError) as exc:  # e.g. the data changed since the champion was trained
                paired = {"skipped": f"champion {champion['run_id']} cannot be scored: {exc}"}
            if paired is None:
                paired = {"skipped": "no test rows shared with the champion"}
        decision = decide(champion, challenger, margin=margin, alpha=alpha, paired=paired, dataset_key=key)
        records.append(registry.record(decision))
        log.info("champion of %s: %s", key, decision.reason)
    return records
