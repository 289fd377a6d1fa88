"""What the server serves: a loaded run (``ServedModel``), from a run reference or a dataset's champion.

- ``load_model``: read the run (or ensemble package: ``predict.load_predictor``), check its decision rule, load
  its model once and score one text (so a broken model fails at load time, not on the first request).
- ``ChampionSource``: ``champion:<dataset>`` in a store's registry. ``<dataset>`` is a full dataset key
  (``goemotions-1a2b3c4d5e6f``) or a dataset name that names exactly one key in the registry.
- ``model_info``: the ``GET /model`` payload, from the manifest (untrusted input: only plain fields are copied).

Limits: a champion run is read through ``store.run_folder`` (verified against its manifest; an S3 run is
copied to the local cache first), so a swap costs one download plus one model load, beside the old model.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from emotion_core.ensemble_package import EnsembleRun
from emotion_core.errors import StoreError
from emotion_core.predict import RunPredictor, load_predictor
from emotion_core.runs import Run

CHAMPION_PREFIX = "champion:"
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ServedModel:
    """A run with its model loaded: what one request is answered with, start to end."""

    run: Run | EnsembleRun
    predictor: RunPredictor  # or an ensemble_package.EnsemblePredictor (same interface)
    source: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def labels(self) -> list[str]:
        return list(self.run.schema.names)


def load_model(
    ref, *, calibration: bool = True, batch_size: int = 64, source: str | None = None, store=None
) -> ServedModel:
    """Load a run or an ensemble package (folder, ``file://``/``s3://`` URI; an ensemble's members from ``store``,
    else the store holding it) for serving; ``StoreError`` if it is incomplete or damaged."""
    predictor = load_predictor(ref, calibration=calibration, batch_size=batch_size, store=store).load()
    predictor.predict(["warm up"])  # the first call builds lazy state (tokenizer caches, torch kernels)
    return ServedModel(predictor.run, predictor, source or str(ref))


class ChampionSource:
    """``champion:<dataset>`` of a store: which run is the champion now (``current()``) and where it is."""

    def __init__(self, store_uri, dataset: str) -> None:
        """``store_uri``: a store URI or path, or an opened store (a task's, with its credentials)."""
        from emotion_core.registry import Registry
        from emotion_core.store import open_store

        if not _DATASET.match(dataset):
            raise StoreError(f"champion:{dataset}: expected a dataset name or key (letters, digits, '.', '_', '-')")
        self.dataset = dataset
        self.store = open_store(store_uri) if isinstance(store_uri, (str, Path)) else store_uri
        self.registry = Registry(self.store)
        self.key = self._dataset_key(dataset)

    def _dataset_key(self, dataset: str) -> str:
        folder = self.registry.folder
        keys = [
            k.removeprefix(f"{folder}/").removesuffix(".json")
            for k in self.store.list_documents(folder)
            if k.count("/") == 1 and k.endswith(".json")
        ]
        if dataset in keys:
            return dataset
        matching = [k for k in keys if re.fullmatch(rf"{re.escape(dataset)}-[0-9a-f]{{12}}", k)]
        if len(matching) == 1:
            return matching[0]
        if not matching:
            known = ", ".join(keys) or "none"
            raise StoreError(
                f"champion:{dataset}: no champion of dataset '{dataset}' in the registry of "
                f"{self.store.uri} (champions: {known}); train with champion.enabled or name a run"
            )
        raise StoreError(
            f"champion:{dataset}: several label schemas of '{dataset}' have a champion in "
            f"{self.store.uri} ({', '.join(matching)}); name one of these dataset keys"
        )

    def current(self) -> str:
        """The champion's run id now; ``StoreError`` if the pointer is gone or corrupt."""
        doc = self.registry.champion(self.key)
        if doc is None:
            raise StoreError(
                f"champion:{self.dataset}: the registry of {self.store.uri} has no champion of {self.key} any more"
            )
        return doc["run_id"]

    def load(self, run_id: str, *, calibration: bool, batch_size: int) -> ServedModel:
        folder = self.store.run_folder(run_id)  # verified against its manifest
        return load_model(
            folder,
            calibration=calibration,
            batch_size=batch_size,
            source=f"{CHAMPION_PREFIX}{self.key}",
            store=self.store,
        )


def _plain(value, depth: int = 0):
    """A JSON-able copy of manifest values: dicts, lists, str, numbers, bools, None (anything else: dropped)."""
    if isinstance(value, dict) and depth < 6:
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list) and depth < 6:
        return [_plain(v, depth + 1) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else None


def model_info(model: ServedModel) -> dict:
    """``GET /model``: run id, dataset, labels, headline metrics, code version, the decision rule in use."""
    manifest = model.run.manifest
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    git = manifest.get("git") if isinstance(manifest.get("git"), dict) else {}
    versions = manifest.get("versions") if isinstance(manifest.get("versions"), dict) else {}
    predictor = model.predictor
    return {
        "run_id": model.run_id,
        "source": model.source,
        "config_name": _plain(manifest.get("config_name")),
        "family": _plain(manifest.get("family")),
        "model": _plain(manifest.get("model")),
        "dataset": _plain(data.get("dataset")),
        "data_hash": _plain(data.get("hash")),
        "labels": model.labels,
        "metrics": _plain(manifest.get("summary")),
        "threshold_policy": _plain(manifest.get("threshold_policy")),
        "code": {
            "code_version": _plain(manifest.get("code_version")),
            "git_commit": _plain(git.get("commit")),
            "git_dirty": _plain(git.get("dirty")),
            "versions": _plain(versions),
        },
        "calibrated": predictor.calibrated,
        "thresholds": dict(zip(model.labels, map(float, predictor.thresholds))),
        "at_least_one": predictor.at_least_one,
        "temperatures": (
            dict(zip(model.labels, map(float, predictor.shipped.temperatures)))
            if predictor.shipped is not None
            else None
        ),
        "loaded_at": model.loaded_at,
    }
