"""The run: the one artefact everything downstream reads (``read_run`` -> ``Run``), and the writers of its files.

Layout of ``runs/<run_id>/`` (``manifest.json`` written last):
    manifest.json       config, data hash, versions, git commit, device, timings, memory, parameters,
                        headline metrics, flags, and the size + sha256 of every other file
    config.yaml         the validated config          labels.json   the label schema (column order)
    model/              weights (safetensors) and what rebuilds the inputs (tokenizer / featurizer)
    logits/{validation,test}.parquet   id + one float32 logit column per label
    thresholds.json     tuned thresholds of every policy, and the policy predictions use
    calibration.json    per-label temperatures + re-tuned thresholds (older runs: none, ``Run.calibration()`` is None)
    metrics.json        every metric, per split and policy     data_report.json   what was read, carved, dropped
    train_log.json      the trainer's log history
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from emotion_core.config import RunConfig, load_yaml, parse_run_config
from emotion_core.errors import StoreError
from emotion_core.files import atomic_write_text, sha256_file, write_json  # noqa: F401  (write_json re-exported)
from emotion_core.labels import LabelSchema
from emotion_core.store import resolve_run_folder
from emotion_core.store.base import MANIFEST


def write_logits(path: Path, ids: list[str], logits: np.ndarray, schema: LabelSchema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame({"id": ids, **{name: logits[:, i].astype(np.float32) for i, name in enumerate(schema.names)}})
    tmp = path.with_name(f".{path.name}.tmp")
    frame.write_parquet(tmp)
    tmp.replace(path)


def file_inventory(folder: Path) -> dict[str, dict]:
    """Size and sha256 of every file under ``folder`` except the manifest (which lists them)."""
    return {
        str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    }


def write_config(path: Path, cfg: RunConfig) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@dataclass(frozen=True)
class Calibration:
    """A run's shipped calibration, checked against its labels: arrays in the run's label order."""

    names: tuple[str, ...]
    temperatures: np.ndarray
    thresholds: np.ndarray
    payload: dict

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``sigmoid(logits / T)``."""
        from emotion_core.calibration import apply_temperatures

        return apply_temperatures(logits, self.temperatures)

    def as_report(self) -> dict:
        """The shape of ``calibration.calibrate_run``'s dict (validation only) that export and the model card read."""
        p = self.payload
        ece = {"before": p.get("ece_before"), "after": p.get("ece_after")}
        nll = {"before": p.get("nll_before"), "after": p.get("nll_after")}
        # The figures are informative only (the model card prints them): dropped, not trusted, if malformed.
        ece_ok = all(
            isinstance(e, dict) and all(_is_number(e.get(k)) for k in ("flat", "per_label_mean")) for e in ece.values()
        )
        nll_ok = all(_is_number(v) for v in nll.values())
        return {
            "method": "temperature_scaling_per_label",
            "policy": p.get("policy"),
            "temperatures": {n: float(t) for n, t in zip(self.names, self.temperatures)},
            "thresholds": {n: float(t) for n, t in zip(self.names, self.thresholds)},
            "ece": {"validation": ece if ece_ok else None, "test": None},
            "nll": {"validation": nll if nll_ok else None, "test": None},
            "source": "calibration.json",
        }


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _per_label_numbers(payload: dict, key: str, names: list[str], where: str) -> np.ndarray:
    """``payload[key]`` ({label: number}) in ``names`` order; StoreError naming the field otherwise."""
    table = payload.get(key)
    if not isinstance(table, dict):
        raise StoreError(f"{where}: field '{key}' must be an object {{label: number}}; the run folder is damaged")
    if set(table) != set(names) or len(table) != len(names):
        raise StoreError(
            f"{where}: the labels of '{key}' ({', '.join(map(str, table))}) differ from labels.json "
            f"({', '.join(names)}); the run folder is damaged"
        )
    values = [table[name] for name in names]
    bad = [n for n, v in zip(names, values) if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise StoreError(f"{where}: field '{key}' has a non-number for {', '.join(bad)}; the run folder is damaged")
    return np.asarray(values, dtype=np.float64)


@dataclass
class Run:
    """A complete run read back from its folder."""

    folder: Path
    manifest: dict
    config: RunConfig
    schema: LabelSchema

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    def thresholds(self, policy: str | None = None) -> np.ndarray:
        """Thresholds of ``policy`` (default: the one the run's predictions use), in label order."""
        where = f"run '{self.folder}': thresholds.json"
        try:
            payload = json.loads((self.folder / "thresholds.json").read_text(encoding="utf-8"))
            chosen = policy or payload["policy"]
            table = payload["thresholds"][chosen]
            values = np.asarray([table[name] for name in self.schema.names], dtype=np.float64)
        except FileNotFoundError:
            raise StoreError(f"{where} is missing; the run folder is incomplete or damaged") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable, not JSON, a label or policy missing
            raise StoreError(
                f"{where}: cannot read the thresholds ({type(exc).__name__}: {exc}); the run folder is damaged"
            ) from None
        if list(table) != list(self.schema.names):
            raise StoreError(
                f"{where}: its labels ({', '.join(table)}) differ from labels.json "
                f"({', '.join(self.schema.names)}); the run folder is damaged"
            )
        if not (np.isfinite(values) & (values >= 0) & (values <= 1)).all():
            raise StoreError(f"{where}: thresholds must be numbers in [0, 1]; the run folder is damaged")
        return values

    def at_least_one(self) -> bool:
        """Whether the run's decision rule gives every text at least one label (``thresholds.json``'s
        ``at_least_one``; absent in runs trained before the rule existed: False)."""
        where = f"run '{self.folder}': thresholds.json"
        try:
            payload = json.loads((self.folder / "thresholds.json").read_text(encoding="utf-8"))
            value = payload.get("at_least_one", False) if isinstance(payload, dict) else None
        except FileNotFoundError:
            raise StoreError(f"{where} is missing; the run folder is incomplete or damaged") from None
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{where}: cannot read it ({type(exc).__name__}: {exc}); the run folder is damaged"
            ) from None
        if not isinstance(value, bool):
            raise StoreError(f"{where}: at_least_one must be true or false; the run folder is damaged")
        return value

    def calibration(self) -> Calibration | None:
        """The run's ``calibration.json`` (temperatures finite > 0, thresholds in [0, 1], labels as labels.json),
        or None for a run trained before calibration shipped with runs. Damaged: ``StoreError``."""
        from emotion_core.calibration import CALIBRATION_FILE, CALIBRATION_VERSION

        path = self.folder / CALIBRATION_FILE
        where = f"run '{self.folder}': {CALIBRATION_FILE}"
        if not path.exists():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
            raise StoreError(
                f"{where}: cannot read it ({type(exc).__name__}: {exc}); the run folder is damaged"
            ) from None
        if not isinstance(payload, dict):
            raise StoreError(f"{where}: not a JSON object; the run folder is damaged")
        if payload.get("version") != CALIBRATION_VERSION or payload.get("method") != "temperature":
            raise StoreError(
                f"{where}: version {payload.get('version')!r}, method {payload.get('method')!r}; this "
                f"code reads version {CALIBRATION_VERSION}, method 'temperature' (a newer or damaged run)"
            )
        names = list(self.schema.names)
        temps = _per_label_numbers(payload, "temperatures", names, where)
        cuts = _per_label_numbers(payload, "thresholds", names, where)
        if not (np.isfinite(temps) & (temps > 0)).all():
            raise StoreError(f"{where}: field 'temperatures' must be finite numbers > 0; the run folder is damaged")
        if not (np.isfinite(cuts) & (cuts >= 0) & (cuts <= 1)).all():
            raise StoreError(f"{where}: field 'thresholds' must be numbers in [0, 1]; the run folder is damaged")
        return Calibration(tuple(names), temps, cuts, payload)

    def logits(self, split: str) -> tuple[list[str], np.ndarray]:
        path = self.folder / "logits" / f"{split}.parquet"
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # missing or not Parquet: polars raises several types
            raise StoreError(
                f"run '{self.folder}': cannot read logits/{split}.parquet ({type(exc).__name__}); "
                f"the run folder is incomplete or damaged"
            ) from None
        if frame.columns[1:] != list(self.schema.names):
            raise StoreError(
                f"run '{self.folder}': the columns of logits/{split}.parquet differ from labels.json "
                f"({', '.join(self.schema.names)}); the run folder is damaged"
            )
        return frame["id"].to_list(), frame.select(list(self.schema.names)).to_numpy().astype(np.float32)

    def metrics(self) -> dict:
        return json.loads((self.folder / "metrics.json").read_text(encoding="utf-8"))


def read_run(ref: str | Path) -> Run:
    """Open a complete run from a folder, ``file://`` or ``s3://`` URI (``StoreError`` if incomplete)."""
    folder = resolve_run_folder(ref)
    name = MANIFEST  # the file being read, for the error message
    try:
        manifest = json.loads((folder / name).read_text(encoding="utf-8"))
        if isinstance(manifest, dict) and manifest.get("kind") == "ensemble":
            raise StoreError(
                f"run '{ref}' is an ensemble package: emotion predict and emotion serve "
                "take it; this command needs one trained run, e.g. one of its members"
            )
        name = "config.yaml"
        raw_config = load_yaml((folder / name).read_text(encoding="utf-8"))
        name = "labels.json"
        schema = LabelSchema.read(folder / name)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # missing, undecodable or not JSON/YAML
        raise StoreError(f"run '{ref}': cannot read {name} ({exc}); the run folder is incomplete or damaged") from None
    refuse_remote_code(raw_config, f"run '{ref}'")
    config = parse_run_config(raw_config, str(folder / "config.yaml"))
    recorded = manifest.get("data", {}).get("labels") if isinstance(manifest, dict) else None
    if isinstance(recorded, list) and list(schema.names) != recorded:
        raise StoreError(
            f"run '{ref}': labels.json ({', '.join(schema.names)}) differs from the labels the run "
            f"was trained on ({', '.join(map(str, recorded))}); the run folder is damaged"
        )
    return Run(folder, manifest, config, schema)


def refuse_remote_code(raw_config, where: str) -> None:
    """``StoreError`` if a run's config asks for ``model.trust_remote_code``: loading a run never executes
    code from it (a store is shared by a team; its files are input, not code), whatever the settings say."""
    model = raw_config.get("model") if isinstance(raw_config, dict) else None
    value = model.get("trust_remote_code") if isinstance(model, dict) else None
    if value not in (None, False):
        raise StoreError(
            f"{where}: config.yaml field 'model.trust_remote_code' is {value!r}; a run is never loaded "
            "with remote code (it would run Python from the run's files); retrain without it"
        )
