"""Champion/challenger registry: the champion run of each dataset, and every decision made.

Features
- One champion per dataset key (``dataset_key``: dataset name + hash of its ordered label names).
- ``decide`` (pure): promoted only if the challenger's validation score on the dataset's official metric
  (``metric``/``validation_score``; documents from before: ``validation_macro_f1``) beats the champion's by more
  than ``margin`` and the paired bootstrap of that test metric gives ``p_value < alpha``
  (``analysis.paired_vs_champion``); the first run of a dataset is promoted. ``Decision.reason`` says why. A
  champion scored on another metric (chosen before its dataset declared one) is judged by the paired test only.
- ``Registry(store)``: ``champion(key)``, ``record(decision)`` (logs every decision, moves the pointer only
  on promotion, compare-and-swap: ``DocumentConflict`` if the champion changed), ``decisions(key)``.
- Store layout: ``registry/<key>.json`` (the pointer, embedding its decision) and
  ``registry/<key>/decisions/<timestamp>-<run_id>.json`` (one create-only record per decision, in order).

Limits
- Promotion moves a pointer only; only published runs qualify. Corrupt documents raise ``StoreError``.
- The pointer is written before the decision record; two writers in the same instant may interleave.
- Two tabular files with the same label names share a dataset key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from emotion_core.config import ChampionConfig
from emotion_core.errors import StoreError
from emotion_core.metrics import METRIC_NAMES
from emotion_core.store.base import ArtifactStore, DocumentConflict

__all__ = [
    "ChampionConfig",
    "Decision",
    "Registry",
    "dataset_key",
    "dataset_key_of",
    "candidate_from_manifest",
    "decide",
]

REGISTRY_VERSION = 1
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STAMP = "%Y%m%dT%H%M%S%fZ"


# --------------------------------------------------------------------------- dataset keys


def dataset_key(dataset: str, labels: Sequence[str]) -> str:
    """``<dataset>-<first 12 hex of sha256 of the ordered label names>``, e.g. ``goemotions-1a2b3c4d5e6f``."""
    names = list(labels)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"dataset {dataset!r}: a dataset key needs the non-empty label names, got {names!r}")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(dataset)).strip("-.") or "dataset"
    digest = hashlib.sha256(json.dumps(names).encode("utf-8")).hexdigest()[:12]
    return f"{name}-{digest}"


def dataset_key_of(manifest: dict) -> str:
    """The dataset key of a run, from its manifest (``data.dataset`` and ``data.labels``)."""
    return dataset_key(manifest["data"]["dataset"], manifest["data"]["labels"])


def candidate_from_manifest(manifest: dict) -> dict:
    """A challenger dict for ``decide`` from a run manifest: name, run id, official metric and its validation score,
    validation macro-F1, dataset key."""
    policy = manifest["threshold_policy"]
    scores = manifest["summary"]["validation"][policy]
    metric = manifest.get("metric", "macro_f1")
    return {
        "name": manifest.get("config_name"),
        "run_id": manifest["run_id"],
        "status": manifest.get("status", "completed"),
        "metric": metric,
        "validation_score": scores.get(metric),
        "validation_macro_f1": scores["macro_f1"],
        "dataset_key": dataset_key_of(manifest),
    }


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    """The outcome of ``decide``; ``to_dict`` is what the decision log stores (plus ``key`` and ``decided_at``)."""

    dataset_key: str | None
    promoted: bool
    reason: str
    challenger_run_id: str
    challenger_name: str | None
    challenger_macro_f1: float | None
    champion_run_id: str | None
    champion_name: str | None
    champion_macro_f1: float | None
    margin: float
    alpha: float
    p_value: float | None
    """One-sided p-value of the paired bootstrap (None: no champion, or no paired test)."""
    delta: float | None
    """Test ``metric`` of the challenger minus the champion's, on the shared test rows."""
    test_rows: int | None
    metric: str = "macro_f1"
    """The metric both scores and the paired test are on (records written before it existed: macro-F1)."""
    challenger_score: float | None = None
    """The challenger's validation ``metric``."""
    champion_score: float | None = None
    """The champion's validation ``metric`` (None: no champion, or one scored on another metric)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> Decision:
        fields = {name: payload.get(name) for name in cls.__dataclass_fields__}
        if fields["metric"] is None:  # a record from before datasets declared their metric: macro-F1 throughout
            fields |= {
                "metric": "macro_f1",
                "challenger_score": payload.get("challenger_macro_f1"),
                "champion_score": payload.get("champion_macro_f1"),
            }
        return cls(**fields)


def metric_of(entry: dict) -> str:
    """The metric an entry or champion document is scored on; documents from before it was recorded: macro-F1."""
    return entry.get("metric") or "macro_f1"


def _number(value, what: str, entry: dict, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(
            f"{what} {entry.get('run_id') or entry.get('name')!r}: {field} must be a finite number, got {value!r}"
        )
    return float(value)


def _score(entry: dict, what: str) -> float:
    """The validation score on ``metric_of(entry)``: ``validation_score``, else (macro-F1) ``validation_macro_f1``."""
    if entry.get("validation_score") is not None or metric_of(entry) != "macro_f1":
        return _number(entry.get("validation_score"), what, entry, "validation_score")
    return _number(entry.get("validation_macro_f1"), what, entry, "validation_macro_f1")


def _macro_f1(entry: dict) -> float | None:
    value = entry.get("validation_macro_f1")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _check_inputs(challenger: dict, margin: float, alpha: float) -> None:
    if not margin >= 0.0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if challenger.get("status", "completed") != "completed":
        raise ValueError(
            f"challenger {challenger.get('name')!r} did not complete ({challenger.get('status')}); "
            "only completed runs are compared"
        )
    if not challenger.get("run_id"):
        raise ValueError(f"challenger {challenger.get('name')!r} has no run_id")


def decide(
    champion: dict | None,
    challenger: dict,
    *,
    margin: float,
    alpha: float,
    paired: dict | None,
    dataset_key: str | None = None,
) -> Decision:
    """Promote ``challenger`` over ``champion``? See the module docstring for the rule.

    ``champion``: the registry's champion document (or any dict with ``run_id`` and
    ``validation_macro_f1``), ``None`` when there is none yet. ``challenger``: a completed run's
    report entry or ``candidate_from_manifest`` (``run_id``, ``validation_macro_f1``, optional ``name``,
    ``status``, ``dataset_key``). ``paired``: ``analysis.paired_vs_champion(challenger, champion)`` (``a`` must be
    the challenger); ``None`` or a dict with ``skipped`` means no paired test, so no promotion over a
    champion. ``dataset_key`` defaults to the challenger's, then the champion's.
    """
    _check_inputs(challenger, margin, alpha)
    ours, metric = _score(challenger, "challenger"), metric_of(challenger)
    name = METRIC_NAMES.get(metric, metric)
    key = dataset_key or challenger.get("dataset_key") or (champion or {}).get("dataset_key")
    facts = _challenger_facts(challenger, key, margin, alpha, metric, ours)
    label = challenger.get("name") or challenger["run_id"]
    if champion is None:
        return Decision(
            promoted=True,
            champion_run_id=None,
            champion_name=None,
            champion_macro_f1=None,
            p_value=None,
            delta=None,
            test_rows=None,
            **facts,
            reason=f"no champion yet for {key or 'this dataset'}: {label} (validation {name} {ours:.4f}) "
            f"is promoted as the first champion",
        )

    theirs = _score(champion, "champion")
    same_metric = metric_of(champion) == metric
    champ = _champion_facts(champion, theirs if same_metric else None)
    if challenger["run_id"] == champion.get("run_id"):
        reason = f"not promoted: {label} is already the champion"
        return Decision(promoted=False, p_value=None, delta=None, test_rows=None, **facts, **champ, reason=reason)

    score_text, problems = _validation_check(ours, theirs if same_metric else None, name, margin, metric_of(champion))
    p_value, delta, rows, test_text, test_problems = _paired_check(paired, name, alpha)
    problems += test_problems
    promoted = not problems
    if promoted:
        reason = f"promoted {label}: {score_text}, and {test_text} < alpha {alpha:g}"
    else:
        reason = f"not promoted {label}: " + "; ".join(problems)
    return Decision(promoted=promoted, p_value=p_value, delta=delta, test_rows=rows, **facts, **champ, reason=reason)


def _challenger_facts(challenger: dict, key: str | None, margin: float, alpha: float, metric: str, ours: float) -> dict:
    """The fields of a ``Decision`` that every outcome shares: the challenger's side and the rule's parameters."""
    return {
        "dataset_key": key,
        "challenger_run_id": challenger["run_id"],
        "challenger_name": challenger.get("name"),
        "challenger_macro_f1": _macro_f1(challenger),
        "margin": float(margin),
        "alpha": float(alpha),
        "metric": metric,
        "challenger_score": ours,
    }


def _champion_facts(champion: dict, theirs: float | None) -> dict:
    """The champion's side of a ``Decision``; ``theirs`` None: it was scored on another metric."""
    return {
        "champion_run_id": champion.get("run_id"),
        "champion_name": champion.get("name"),
        "champion_macro_f1": _macro_f1(champion),
        "champion_score": theirs,
    }


def _validation_check(
    ours: float, theirs: float | None, name: str, margin: float, champion_metric: str
) -> tuple[str, list[str]]:
    """The validation half of the rule: its text, and its problem when the gain is not above ``margin``.
    ``theirs`` None (a champion chosen on another metric): its validation score says nothing about this one."""
    if theirs is None:
        text = (
            f"validation {name} {ours:.4f} (the champion was scored on {champion_metric}: judged by the "
            f"paired test only)"
        )
        return text, []
    gain = ours - theirs
    score_text = f"validation {name} {ours:.4f} vs champion {theirs:.4f} ({gain:+.4f})"
    problems = [] if gain > margin else [f"{score_text} is not above the margin {margin:.4f}"]
    return score_text + f" is above the margin {margin:.4f}", problems


def _paired_check(
    paired: dict | None, name: str, alpha: float
) -> tuple[float | None, float | None, int | None, str | None, list[str]]:
    """The paired-test half of the rule: ``(p_value, delta, rows, text, problems)``; no usable test is a problem."""
    usable = paired is not None and "skipped" not in paired and paired.get("p_value") is not None
    p_value = float(paired["p_value"]) if usable else None
    delta = float(paired["delta"]) if usable and paired.get("delta") is not None else None
    rows = paired.get("rows") if usable else None
    if not usable:
        why = f" ({paired['skipped']})" if paired and "skipped" in paired else ""
        return p_value, delta, rows, None, [f"no paired bootstrap against the champion on shared test rows{why}"]
    where = f" on {rows} test rows" if rows else ""
    change = f"test {name} delta {delta:+.4f}, " if delta is not None else ""
    test_text = f"paired bootstrap{where}: {change}p = {p_value:.3f}"
    problems = [] if p_value < alpha else [f"{test_text} is not below alpha {alpha:g}"]
    return p_value, delta, rows, test_text, problems


# --------------------------------------------------------------------------- registry


class Registry:
    """Champion pointers and decision logs under ``<folder>/`` of an artefact store."""

    def __init__(self, store: ArtifactStore, folder: str = "registry") -> None:
        self.store = store
        self.folder = folder.strip("/")

    def _check(self, dataset_key: str) -> str:
        if not isinstance(dataset_key, str) or not _KEY.match(dataset_key):
            raise ValueError(
                f"dataset key {dataset_key!r}: expected letters, digits, '.', '_' or '-' (see dataset_key())"
            )
        return dataset_key

    def champion_key(self, dataset_key: str) -> str:
        return f"{self.folder}/{self._check(dataset_key)}.json"

    def decisions_folder(self, dataset_key: str) -> str:
        return f"{self.folder}/{self._check(dataset_key)}/decisions"

    def _corrupt(self, key: str, why: str) -> StoreError:
        return StoreError(f"registry document {key} in {self.store.uri} is corrupt: {why}; fix or remove it")

    def _champion_versioned(self, dataset_key: str) -> tuple[dict | None, str | None]:
        key = self.champion_key(dataset_key)
        doc, version = self.store.read_document_versioned(key)
        if doc is None:
            return None, None
        run_id = doc.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise self._corrupt(key, f"'run_id' must be a non-empty string, got {run_id!r}")
        if doc.get("metric") is not None and doc["metric"] not in METRIC_NAMES:
            raise self._corrupt(key, f"'metric' must be one of {', '.join(METRIC_NAMES)}, got {doc['metric']!r}")
        try:
            _score(doc, "champion")
        except ValueError as exc:
            raise self._corrupt(key, str(exc).split(": ", 1)[1]) from None
        if doc.get("dataset_key") != dataset_key:
            raise self._corrupt(key, f"'dataset_key' is {doc.get('dataset_key')!r}, expected {dataset_key!r}")
        return doc, version

    def champion(self, dataset_key: str) -> dict | None:
        """The champion document of ``dataset_key`` (shape in the module docstring); None before the first promotion."""
        return self._champion_versioned(dataset_key)[0]

    def decisions(self, dataset_key: str) -> list[dict]:
        """Every recorded decision of ``dataset_key``, oldest first."""
        keys = [k for k in self.store.list_documents(self.decisions_folder(dataset_key)) if k.endswith(".json")]
        out = []
        for key in keys:
            doc = self.store.read_document(key)
            if doc is None:  # removed while listing
                continue
            if not isinstance(doc.get("promoted"), bool) or not doc.get("challenger_run_id"):
                raise self._corrupt(key, "not a decision record (no 'promoted' or 'challenger_run_id')")
            out.append(doc)
        return out

    def _stamp(self, dataset_key: str, now: datetime | None) -> datetime:
        """``now`` (UTC), moved past the newest decision already logged so the log keys stay in order."""
        stamp = (now or datetime.now(UTC)).astimezone(UTC)
        keys = self.store.list_documents(self.decisions_folder(dataset_key))
        if keys:
            newest = keys[-1].rsplit("/", 1)[-1].split("-", 1)[0]
            try:
                last = datetime.strptime(newest, _STAMP).replace(tzinfo=UTC)
            except ValueError:
                last = None
            if last is not None and stamp <= last:
                stamp = last + timedelta(microseconds=1)
        return stamp

    def record(self, decision: Decision, *, now: datetime | None = None) -> dict:
        """Log ``decision``; if promoted, point the champion of its dataset at the challenger. Returns the record.

        ``DocumentConflict`` when the champion changed since the decision was made (a promotion
        decided against an old champion) or another writer promoted concurrently: decide again.
        ``StoreError`` when a promoted run is not a complete run of the store.
        """
        if not decision.dataset_key:
            raise ValueError("the decision has no dataset_key: pass dataset_key= to decide() (see dataset_key_of)")
        key = self._check(decision.dataset_key)
        pointer_key = self.champion_key(key)
        current, version = self._champion_versioned(key)
        if decision.promoted:
            self._check_promotion(decision, pointer_key, current["run_id"] if current else None)
        stamp = self._stamp(key, now)
        record_key = f"{self.decisions_folder(key)}/{stamp.strftime(_STAMP)}-{decision.challenger_run_id}.json"
        record = {
            "registry_version": REGISTRY_VERSION,
            "key": record_key,
            "decided_at": stamp.isoformat(),
            **decision.to_dict(),
        }
        if decision.promoted:
            pointer = _pointer(decision, key, stamp, record)
            if version is None:
                self.store.write_document(pointer_key, pointer, create_only=True)
            else:
                self.store.write_document(pointer_key, pointer, if_match=version)
        self._write_record(decision, pointer_key, record)
        return record

    def _check_promotion(self, decision: Decision, pointer_key: str, current_id: str | None) -> None:
        """A promotion stands only against the champion it was decided on, and only for a published run."""
        if decision.champion_run_id != current_id:
            raise DocumentConflict(
                f"registry {pointer_key} in {self.store.uri}: the decision to promote "
                f"{decision.challenger_run_id} was made against champion "
                f"{decision.champion_run_id}, "
                f"but the champion is now {current_id}; decide again"
            )
        if decision.challenger_run_id not in self.store.list_runs():
            raise StoreError(
                f"registry {pointer_key}: run {decision.challenger_run_id} is not a complete run of "
                f"{self.store.uri}; only published runs can become champion"
            )

    def _write_record(self, decision: Decision, pointer_key: str, record: dict) -> None:
        """Log the decision record; after a promotion a failure names the champion document, which holds it."""
        record_key = record["key"]
        try:
            self.store.write_document(record_key, record, create_only=True)
        except StoreError as exc:
            if not decision.promoted:
                raise
            raise StoreError(
                f"registry {pointer_key}: {decision.challenger_run_id} was promoted, but its decision "
                f"record {record_key} could not be written ({exc}); the champion document holds the "
                "decision"
            ) from None


def _pointer(decision: Decision, key: str, stamp: datetime, record: dict) -> dict:
    """The champion document of a promotion: the new champion, its scores, and the decision that promoted it."""
    return {
        "registry_version": REGISTRY_VERSION,
        "dataset_key": key,
        "run_id": decision.challenger_run_id,
        "name": decision.challenger_name,
        "validation_macro_f1": decision.challenger_macro_f1,
        "metric": decision.metric,
        "validation_score": decision.challenger_score,
        "promoted_at": stamp.isoformat(),
        "decision_key": record["key"],
        "decision": record,
    }
