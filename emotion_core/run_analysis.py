"""A run's evaluation, calibration and SHAP explanation, stored beside it by the child that trained it.

Layout in the store: ``analysis/<run_id>/`` holds the files ``evaluation.json``, ``calibration.json``,
``reliability.png``, ``shap.html`` and ``shap.json`` (those that apply), then, written last, the index
``analysis.json``: format, run id, config name, the report settings used (bootstrap samples, seed), every
file's sha256 and size, the explanation's summary and where it ran. No index: nothing usable.

- ``write_analysis``: the files of ``<report folder>/models/<name>/`` (as ``analysis.evaluate_run`` and the
  explanation write them), then the index (child side).
- ``read_analysis``: the run's ``ReportEntry`` rebuilt from its manifest and the stored files, which are copied
  into the report folder where ``evaluate_run`` would have written them (so the report is the same);
  ``None`` without an index; ``AnalysisUnusable`` naming the key when the index is malformed, was made with
  other settings, or a file is missing or does not match its sha256.

Limits: everything read is untrusted (index validated strictly, file names from a fixed list, sha256 checked,
the entry's facts come from the run's own manifest); a child that re-writes its analysis while the parent
reads it gives a sha256 mismatch, i.e. ``AnalysisUnusable``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emotion_core.config import ReportConfig
from emotion_core.config_base import StrictConfig
from emotion_core.errors import StoreError
from emotion_core.files import sha256_file
from emotion_core.records import ReportEntry
from emotion_core.store import ArtifactStore, RunId, objects

__all__ = ["AnalysisSettings", "AnalysisUnusable", "analysis_key", "read_analysis", "write_analysis"]

FORMAT = 1
INDEX = "analysis.json"
FILES = ("evaluation.json", "calibration.json", "reliability.png", "shap.html", "shap.json")
"""The only file names an index may list (a name read from the store never becomes another path)."""
_ENTRY_FILES = {"evaluation": "evaluation.json", "calibration": "calibration.json", "reliability": "reliability.png"}
_EXPLANATION_KEYS = {"html", "json", "texts", "split", "seconds_per_text", "cached"}


class AnalysisUnusable(StoreError):
    """A run's stored analysis cannot be used (malformed, other settings, files missing or changed)."""


class AnalysisSettings(StrictConfig):
    """The report settings an evaluation depends on: the parent uses a stored one only if they are its own."""

    bootstrap_samples: int = ReportConfig.model_fields["bootstrap_samples"].default
    """Bootstrap resamples of the test rows for the F1 confidence intervals (``ReportConfig.bootstrap_samples``)."""
    seed: int = 0
    """Seed of the bootstrap resamples (``ReportConfig.seed``)."""

    @classmethod
    def of_report(cls, report: ReportConfig) -> AnalysisSettings:
        return cls(bootstrap_samples=report.bootstrap_samples, seed=report.seed)


class _StoredFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class _Index(BaseModel):
    """``analysis.json``, as validated on read."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal[1]
    run_id: str
    config: str
    settings: AnalysisSettings
    files: dict[Literal[FILES], _StoredFile]
    explanation: dict[str, Any] | None
    context: dict[str, str | int | None] = {}


def analysis_key(run_id: str, name: str = INDEX) -> str:
    """The store key of a run's analysis file ``name`` (``analysis/<run_id>/<name>``)."""
    return f"analysis/{RunId.parse(run_id)}/{name}"


def write_analysis(
    store: ArtifactStore,
    entry: ReportEntry,
    report_folder: Path,
    settings: AnalysisSettings,
    context: dict[str, str | int | None] | None = None,
) -> str:
    """Store the files of the completed ``entry`` (under ``report_folder/models/<name>/``), then the index.

    ``entry.explanation``: the explanation's summary (or ``{"error"}``, or None). Returns the index's key."""
    folder = Path(report_folder) / "models" / entry.name
    present = [name for name in FILES if (folder / name).is_file()]
    files = {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size} for name in present}
    for name in present:
        objects.put_file(store, analysis_key(entry.run_id, name), folder / name)
    index = {
        "format": FORMAT,
        "run_id": entry.run_id,
        "config": entry.name,
        "settings": settings.model_dump(),
        "files": files,
        "explanation": entry.explanation,
        "context": context or {},
    }
    key = analysis_key(entry.run_id)
    store.write_document(key, index)  # last: readers see the complete analysis or none
    return key


def read_analysis(
    store: ArtifactStore, name: str, run_id: str, report_folder: Path, settings: AnalysisSettings
) -> ReportEntry | None:
    """The entry of run ``run_id`` (config ``name``) from its stored analysis, files copied under
    ``report_folder/models/<name>/``; None if it has none; ``AnalysisUnusable`` if it cannot be used."""
    from emotion_core.analysis import entry_of_manifest  # numpy, polars: only where runs are compared

    key = analysis_key(run_id)
    where = objects.object_name(store, key)
    try:
        payload = store.read_document(key)
    except StoreError as exc:
        raise AnalysisUnusable(f"{where}: {exc}") from None
    if payload is None:
        return None
    index = _checked_index(payload, name, run_id, settings, where)
    manifest = store.read_manifest(run_id)
    if manifest.get("run_id") != run_id:
        raise AnalysisUnusable(f"{where}: run {run_id}'s manifest names run {manifest.get('run_id')!r}")
    folder = Path(report_folder) / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".analysis-") as tmp:
        fetched = _fetch_files(store, index, Path(tmp), where)
        test = _json_object(fetched, "evaluation.json", where) if "evaluation.json" in fetched else None
        calibration = _json_object(fetched, "calibration.json", where)
        for file, path in fetched.items():  # only once all are checked: the report folder gets all or none
            shutil.move(path, folder / file)
    files = {kind: f"models/{name}/{file}" for kind, file in _ENTRY_FILES.items() if file in fetched}
    entry = entry_of_manifest(name, manifest)
    return replace(entry, test=test, calibration=calibration, files=files, explanation=index.explanation)


def _checked_index(payload: dict, name: str, run_id: str, settings: AnalysisSettings, where: str) -> _Index:
    try:
        index = _Index.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise AnalysisUnusable(f"{where}: malformed ({exc.error_count()} error(s); {field}: {first['msg']})") from None
    if index.run_id != run_id or index.config != name:
        raise AnalysisUnusable(
            f"{where}: it is the analysis of run {index.run_id!r} (config {index.config!r}), not {run_id} ({name})"
        )
    if index.settings != settings:
        raise AnalysisUnusable(
            f"{where}: made with {index.settings.model_dump()}, this report uses {settings.model_dump()}"
        )
    if "calibration.json" not in index.files or "reliability.png" not in index.files:
        raise AnalysisUnusable(f"{where}: lists no calibration.json or reliability.png")
    _check_explanation(index.explanation, name, index.files, where)
    return index


def _check_explanation(explanation: dict | None, name: str, files: dict, where: str) -> None:
    """None, ``{"error": str}``, or the explain-run summary pointing at this model's stored SHAP files."""
    if explanation is None or (set(explanation) == {"error"} and isinstance(explanation["error"], str)):
        return
    ok = (
        set(explanation) == _EXPLANATION_KEYS
        and explanation["html"] == f"models/{name}/shap.html"
        and explanation["json"] == f"models/{name}/shap.json"
        and {"shap.html", "shap.json"} <= set(files)
        and _is_int(explanation["texts"])
        and explanation["split"] in ("test", "validation")
        and _is_number(explanation["seconds_per_text"])
        and isinstance(explanation["cached"], bool)
    )
    if not ok:
        raise AnalysisUnusable(f"{where}: malformed explanation {json.dumps(explanation)[:200]}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fetch_files(store: ArtifactStore, index: _Index, target: Path, where: str) -> dict[str, Path]:
    """Every listed file, downloaded into ``target`` and checked against its sha256."""
    fetched = {}
    for name, facts in index.files.items():
        path = target / name
        try:
            objects.download_file(store, analysis_key(index.run_id, name), path)
        except Exception as exc:  # a missing object is a DataError, a failing store a StoreError
            raise AnalysisUnusable(f"{where}: lists {name}, which cannot be read ({exc})") from None
        if sha256_file(path) != facts.sha256 or path.stat().st_size != facts.bytes:
            raise AnalysisUnusable(f"{where}: {analysis_key(index.run_id, name)} does not match its sha256")
        fetched[name] = path
    return fetched


def _json_object(fetched: dict[str, Path], name: str, where: str) -> dict:
    try:
        value = json.loads(fetched[name].read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AnalysisUnusable(f"{where}: {name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise AnalysisUnusable(f"{where}: {name} is not a JSON object")
    return value
