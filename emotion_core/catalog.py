"""What a store holds: one row per published run, and the champion of each dataset.

- Reads only manifests and registry documents (no weights; an S3 store is not downloaded).
- Manifests are untrusted: a run whose manifest cannot be read or lacks a field is still listed, with
  the reason in ``problem``, so nothing in the store is silently hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

from emotion_core.errors import EmotionError
from emotion_core.registry import Registry, dataset_key_of
from emotion_core.store import ArtifactStore


@dataclass(frozen=True)
class RunRow:
    """One published run, as ``emotion runs`` lists it."""

    run_id: str
    config: str = ""
    """Config name the run was trained from."""
    family: str = ""
    dataset: str = ""
    """Dataset key (dataset name and label-set hash), the key of the champion registry."""
    validation_macro_f1: float | None = None
    """Macro-F1 on validation at the run's own threshold policy."""
    test_macro_f1: float | None = None
    finished_at: str = ""
    champion: bool = False
    """Whether the registry names this run the champion of its dataset."""
    problem: str = ""
    """Why the manifest could not be read in full (empty when it could)."""


def _macro_f1(manifest: dict, split: str) -> float | None:
    policy = manifest.get("threshold_policy")
    value = (((manifest.get("summary") or {}).get(split) or {}).get(policy) or {}).get("macro_f1")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _row(store: ArtifactStore, run_id: str, champion_ids: set[str]) -> RunRow:
    try:
        manifest = store.read_manifest(run_id)
        dataset = dataset_key_of(manifest)
    except (EmotionError, KeyError, TypeError, ValueError) as exc:
        return RunRow(run_id, champion=run_id in champion_ids, problem=str(exc) or type(exc).__name__)
    return RunRow(
        run_id,
        config=str(manifest.get("config_name", "")),
        family=str(manifest.get("family", "")),
        dataset=dataset,
        validation_macro_f1=_macro_f1(manifest, "validation"),
        test_macro_f1=_macro_f1(manifest, "test"),
        finished_at=str(manifest.get("finished_at", "")),
        champion=run_id in champion_ids,
    )


def champions(store: ArtifactStore) -> dict[str, dict]:
    """Dataset key -> champion document (run id, validation macro-F1, when promoted), for every dataset."""
    registry = Registry(store)
    prefix = registry.folder + "/"
    keys = [
        k[len(prefix) : -len(".json")]
        for k in store.list_documents(registry.folder)
        if k.startswith(prefix) and k.endswith(".json") and "/" not in k[len(prefix) :]
    ]
    found = {}
    for key in keys:
        doc = registry.champion(key)
        if doc is not None:
            found[key] = doc
    return found


def list_runs(store: ArtifactStore) -> list[RunRow]:
    """Every published run of ``store``, newest first (runs without a finish time last)."""
    champion_ids = {doc["run_id"] for doc in champions(store).values()}
    rows = [_row(store, run_id, champion_ids) for run_id in store.list_runs()]
    return sorted(rows, key=lambda row: row.finished_at, reverse=True)
