"""The shippable ensemble: a fitted ``ensemble.Combiner`` published in the store as a run-like package.

Layout of ``runs/<ensemble run id>/`` (``manifest.json`` written last, with the sha256 of every other file, so the
store's integrity checks apply as to any run):
    manifest.json       ``kind: "ensemble"``, members, dataset and labels, headline metrics, cross-fit facts
    labels.json         the label schema        ensemble.json   method, members, temperatures, weights or stacker,
                                                                thresholds (JSON numbers: no pickle, no code)
    probabilities/{validation,test}.parquet     id + the ensemble's probability per label (for champion challenges)

- ``publish_ensemble``: write the package in a staging folder of the store and publish it.
- ``is_ensemble``/``read_ensemble``: recognise and read a package (untrusted: every field checked, member ids
  are ``RunId``-validated). ``EnsemblePredictor``: texts -> (probabilities, labels), the interface of
  ``predict.RunPredictor``; its members are loaded from the store that holds the package.
- ``ensemble_run_data``: the package's stored probabilities as ``run_scores.RunData`` (an ensemble champion).

Limits: members are runs (not ensembles) of the same store; every text goes through every member (latency is
the members' sum); ``calibration=False`` does not apply (the temperatures are part of the fit).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import polars as pl

from emotion_core.ensemble import METHODS, Combiner
from emotion_core.errors import StoreError
from emotion_core.files import atomic_write_text, write_json
from emotion_core.labels import LabelSchema
from emotion_core.run_model import load_run_family, run_logits
from emotion_core.run_scores import RunData
from emotion_core.runs import Run, file_inventory, read_run
from emotion_core.store.base import MANIFEST, ArtifactStore, RunId

__all__ = [
    "ENSEMBLE_FILE",
    "EnsemblePredictor",
    "EnsembleRun",
    "ensemble_run_data",
    "is_ensemble",
    "publish_ensemble",
    "read_ensemble",
]

log = logging.getLogger(__name__)

KIND = "ensemble"
ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_VERSION = 1
"""Layout version of ``ensemble.json``; a reader refuses versions it does not know."""
MAX_MEMBERS = 20


# --------------------------------------------------------------------------- writing


def _probabilities_frame(ids: list[str], probs: np.ndarray, names: list[str]) -> pl.DataFrame:
    columns = {n: probs[:, k].astype(np.float64) for k, n in enumerate(names)}
    return pl.DataFrame({"id": [str(i) for i in ids], **columns})


def ensemble_payload(combiner: Combiner, names: list[str], member_ids: list[str], policy: str) -> dict:
    """The ``ensemble.json`` of ``combiner`` (labels in ``names`` order, members in ``member_ids`` order)."""
    per_label = lambda values: {n: float(v) for n, v in zip(names, values)}  # noqa: E731
    stacker = None
    if combiner.coef is not None:
        stacker = {
            "coef": {n: [float(c) for c in row] for n, row in zip(names, combiner.coef)},
            "intercept": per_label(combiner.intercept),
        }
    return {
        "version": ENSEMBLE_VERSION,
        "method": combiner.method,
        "policy": policy,
        "labels": names,
        "members": [
            {"run_id": run_id, "temperatures": per_label(t)} for run_id, t in zip(member_ids, combiner.temperatures)
        ],
        "weights": None if combiner.weights is None else [float(w) for w in combiner.weights],
        "stacker": stacker,
        "thresholds": per_label(combiner.thresholds),
    }


def publish_ensemble(
    store: ArtifactStore, run_id: str, entry, combiner: Combiner, data, *, created_by: str = ""
) -> str:
    """Publish the ensemble of ``entry`` (an ``analysis.ensemble_of`` entry, its ``RunData`` and combiner) as
    ``runs/<run_id>`` of ``store``; return its URI. Members must be runs of ``store``."""
    run_id = RunId.parse(run_id, "ensemble run id")
    member_ids = [RunId.parse(r, f"ensemble {run_id}: member run id") for r in entry.ensemble["member_run_ids"]]
    first = store.read_manifest(member_ids[0])
    names = list(data.names)
    policy = entry.threshold_policy
    staging = store.staging(run_id)
    try:
        atomic_write_text(staging / "labels.json", LabelSchema(tuple(names)).to_json())
        write_json(staging / ENSEMBLE_FILE, ensemble_payload(combiner, names, member_ids, policy))
        for split, ids in data.ids.items():
            folder = staging / "probabilities"
            folder.mkdir(exist_ok=True)
            _probabilities_frame(ids, data.logits[split], names).write_parquet(folder / f"{split}.parquet")
        test = (entry.test or {}).get("metrics", {}).get("macro_f1")
        summary = {"validation": {policy: {"macro_f1": entry.validation_macro_f1}}}
        if test is not None:
            summary["test"] = {policy: {"macro_f1": test}}
        manifest = {
            "kind": KIND,
            "run_id": run_id,
            "config_name": entry.name,
            "family": "ensemble",
            "model": entry.model,
            "status": "completed",
            "threshold_policy": policy,
            "members": [{"run_id": r, "config_name": n} for r, n in zip(member_ids, entry.members)],
            "data": {k: first["data"].get(k) for k in ("dataset", "labels", "hash")},
            "summary": summary,
            "ensemble": entry.ensemble,
            "rows": entry.rows,
            "created_by": created_by,
            "finished_at": datetime.now(UTC).isoformat(),
            "files": file_inventory(staging),
        }
        write_json(staging / MANIFEST, manifest)
    except BaseException:
        store.discard(staging)
        raise
    return store.publish(staging, run_id)


# --------------------------------------------------------------------------- reading


def is_ensemble(folder: Path) -> bool:
    """Whether a (verified) run folder holds an ensemble package (its manifest's ``kind``)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # not readable: the run reader says why
    return isinstance(manifest, dict) and manifest.get("kind") == KIND


@dataclass(frozen=True)
class EnsembleRun:
    """A published ensemble read back: what ``predict_file`` and the server need of a run (``run_id``,
    ``folder``, ``manifest``, ``schema``), its combiner and its members' run ids."""

    folder: Path
    manifest: dict
    schema: LabelSchema
    combiner: Combiner
    member_ids: tuple[str, ...]

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]


def _numbers(values, where: str, count: int) -> np.ndarray:
    ok = (
        isinstance(values, list)
        and len(values) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )
    if not ok:
        raise StoreError(f"{where}: expected {count} finite numbers; the ensemble package is damaged")
    return np.asarray(values, dtype=np.float64)


def _per_label(table, names: list[str], where: str) -> np.ndarray:
    if not isinstance(table, dict) or list(table) != names:
        raise StoreError(
            f"{where}: expected an object {{label: number}} over the labels of labels.json "
            f"({', '.join(names)}); the ensemble package is damaged"
        )
    return _numbers(list(table.values()), where, len(names))


def _combiner(payload: dict, names: list[str], where: str) -> tuple[Combiner, tuple[str, ...]]:
    """The checked combiner and member ids of an ``ensemble.json`` payload."""
    if payload.get("version") != ENSEMBLE_VERSION or payload.get("method") not in METHODS:
        raise StoreError(
            f"{where}: version {payload.get('version')!r}, method {payload.get('method')!r}; this code "
            f"reads version {ENSEMBLE_VERSION}, methods {', '.join(METHODS)} (a newer or damaged package)"
        )
    if payload.get("labels") != names:
        raise StoreError(f"{where}: field 'labels' differs from labels.json; the ensemble package is damaged")
    members = payload.get("members")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        raise StoreError(f"{where}: field 'members' must list 1-{MAX_MEMBERS} members; the ensemble package is damaged")
    ids, temps = [], []
    for k, member in enumerate(members):
        if not isinstance(member, dict):
            raise StoreError(f"{where}: members[{k}] is not an object; the ensemble package is damaged")
        ids.append(RunId.parse(member.get("run_id"), f"{where}: members[{k}].run_id"))
        temps.append(_per_label(member.get("temperatures"), names, f"{where}: members[{k}].temperatures"))
    if len(set(ids)) != len(ids):
        raise StoreError(f"{where}: a member is listed twice; the ensemble package is damaged")
    temps = np.stack(temps)
    if not (temps > 0).all():
        raise StoreError(f"{where}: temperatures must be > 0; the ensemble package is damaged")
    thresholds = _per_label(payload.get("thresholds"), names, f"{where}: thresholds")
    if not ((thresholds >= 0) & (thresholds <= 1)).all():
        raise StoreError(f"{where}: thresholds must be in [0, 1]; the ensemble package is damaged")
    if payload["method"] == "weighted_mean":
        weights = _numbers(payload.get("weights"), f"{where}: weights", len(ids))
        if (weights < 0).any() or abs(weights.sum() - 1) > 1e-6:
            raise StoreError(f"{where}: weights must be >= 0 and sum to 1; the ensemble package is damaged")
        return Combiner("weighted_mean", temps, thresholds, weights=weights), tuple(ids)
    stacker = payload.get("stacker")
    if not isinstance(stacker, dict) or not isinstance(stacker.get("coef"), dict) or list(stacker["coef"]) != names:
        raise StoreError(
            f"{where}: field 'stacker.coef' must be {{label: [one number per member]}}; the ensemble package is damaged"
        )
    coef = np.stack([_numbers(stacker["coef"][n], f"{where}: stacker.coef.{n}", len(ids)) for n in names])
    intercept = _per_label(stacker.get("intercept"), names, f"{where}: stacker.intercept")
    return Combiner("stacking", temps, thresholds, coef=coef, intercept=intercept), tuple(ids)


def read_ensemble(folder: Path) -> EnsembleRun:
    """The ensemble package in a verified run folder; ``StoreError`` naming the file and field if it is damaged."""
    folder = Path(folder)
    where = f"ensemble '{folder}'"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        schema = LabelSchema.read(folder / "labels.json")
        payload = json.loads((folder / ENSEMBLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"{where}: cannot read its files ({type(exc).__name__}: {exc}); the package is damaged"
        ) from None
    if not isinstance(payload, dict):
        raise StoreError(f"{where}: {ENSEMBLE_FILE} is not a JSON object; the package is damaged")
    combiner, members = _combiner(payload, list(schema.names), f"{where}: {ENSEMBLE_FILE}")
    return EnsembleRun(folder, manifest, schema, combiner, members)


def member_store(ref, folder: Path) -> ArtifactStore:
    """The store that holds the package ``ref`` names: members are read from it (an ``s3://`` run URI's store,
    else the store whose ``runs/`` folder holds ``folder``)."""
    from emotion_core.store import LocalStore, open_store
    from emotion_core.store.uris import check_uri

    text = check_uri(str(ref), "run")
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        prefix = parsed.path.rstrip("/").rpartition("/runs/")[0]
        return open_store(f"s3://{parsed.netloc}{prefix}")
    folder = Path(folder).resolve()
    if folder.parent.name != "runs":
        raise StoreError(
            f"ensemble '{ref}': its members are read from the store that holds it, but the folder is not "
            "a store's runs/<id> (publish it into the members' store, or name it by its store path)"
        )
    return LocalStore(folder.parent.parent)


def read_members(ensemble: EnsembleRun, store: ArtifactStore) -> list[Run]:
    """The member runs of ``ensemble`` from ``store``, each verified, with the ensemble's labels."""
    runs = []
    for run_id in ensemble.member_ids:
        try:
            folder = store.run_folder(run_id)
        except StoreError as exc:
            raise StoreError(
                f"ensemble {ensemble.run_id}: member run {run_id} cannot be loaded from {store.uri} ({exc})"
            ) from None
        if is_ensemble(folder):
            raise StoreError(f"ensemble {ensemble.run_id}: member {run_id} is itself an ensemble; members must be runs")
        run = read_run(folder)
        if list(run.schema.names) != list(ensemble.schema.names):
            raise StoreError(
                f"ensemble {ensemble.run_id}: member {run_id} predicts other labels "
                f"({', '.join(run.schema.names)}); the package does not fit its members"
            )
        runs.append(run)
    return runs


class EnsemblePredictor:
    """Texts -> (probabilities, 0/1 labels) of a published ensemble: ``predict.RunPredictor``'s interface.

    Members' logits -> the package's combiner (calibrated by its temperatures) -> its thresholds.
    """

    def __init__(
        self, ensemble: EnsembleRun, members: list[Run], *, calibration: bool = True, batch_size: int = 128
    ) -> None:
        if not calibration:
            log.warning(
                "ensemble %s: --no-calibration does not apply, the members' temperatures are part of its fit",
                ensemble.run_id,
            )
        self.run, self.members, self.batch_size = ensemble, members, batch_size
        self.thresholds = ensemble.combiner.thresholds
        self.shipped = None  # no run calibration.json: GET /model shows the thresholds, not temperatures
        self.at_least_one = False  # the combiner's rule is its thresholds alone
        self.families = None

    @property
    def calibrated(self) -> bool:
        return True

    def load(self) -> EnsemblePredictor:
        if self.families is None:
            self.families = [load_run_family(run) for run in self.members]
        return self

    def logits(self, texts) -> list[np.ndarray]:
        texts = list(texts)
        return [
            run_logits(run, texts, self.batch_size, family=family)
            for run, family in zip(self.members, self.load().families)
        ]

    def predict(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, predicted)``: (n, labels) probabilities and 0/1 labels, in input order."""
        probs = self.run.combiner.probabilities(self.logits(texts))
        from emotion_core.thresholds import apply_thresholds

        return probs, apply_thresholds(probs, self.thresholds)


def load_ensemble_predictor(
    ref, folder: Path, *, calibration: bool = True, batch_size: int = 128, store: ArtifactStore | None = None
) -> EnsemblePredictor:
    """The predictor of the ensemble package in ``folder`` (named by ``ref``); members from ``store``, else from
    the store that holds the package."""
    ensemble = read_ensemble(folder)
    members = read_members(ensemble, store if store is not None else member_store(ref, folder))
    return EnsemblePredictor(ensemble, members, calibration=calibration, batch_size=batch_size)


def ensemble_run_data(folder: Path, store: ArtifactStore, data):
    """``run_scores.RunData`` of a published ensemble (its stored probabilities, truth from its first member's data
    via ``data``, an ``analysis.DataCache``): how an ensemble champion is challenged."""
    from emotion_core.evaluation import align_labels

    ensemble = read_ensemble(folder)
    first = read_members(ensemble, store)[0]
    dataset = data.for_run(first)
    names = list(ensemble.schema.names)
    ids, probs, truth = {}, {}, {}
    for split in ("validation", "test"):
        path = Path(folder) / "probabilities" / f"{split}.parquet"
        if not path.is_file():
            continue
        try:
            frame = pl.read_parquet(path)
            if frame.columns != ["id", *names]:
                raise ValueError(f"columns {frame.columns}")
            split_ids = frame["id"].cast(pl.String).to_list()
            values = frame.select(names).to_numpy().astype(np.float64)
            truth[split] = align_labels(split_ids, dataset.ids(split), dataset.labels(split))
        except Exception as exc:  # polars raises several types; a row the data does not have
            raise StoreError(f"ensemble {ensemble.run_id}: probabilities/{split}.parquet unusable ({exc})") from None
        if not (np.isfinite(values) & (values >= 0) & (values <= 1)).all():
            raise StoreError(f"ensemble {ensemble.run_id}: probabilities/{split}.parquet holds non-probabilities")
        ids[split], probs[split] = split_ids, values
    return RunData(
        str(ensemble.manifest.get("config_name") or ensemble.run_id),
        ids,
        probs,
        truth,
        ensemble.combiner.thresholds,
        names,
        probabilities=True,
    )
