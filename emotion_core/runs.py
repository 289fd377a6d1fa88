"""The run: the one artefact everything downstream reads.

Layout of a run folder (``runs/<run_id>/``), manifest written last:
    manifest.json       config, data hash, versions, git commit, device, timings, memory, parameters,
                        headline metrics, flags, and the size + sha256 of every other file
    config.yaml         the validated config the run used
    labels.json         the label schema (column order of every matrix below)
    model/              weights (safetensors) and what rebuilds the inputs (tokenizer / featurizer)
    logits/{validation,test}.parquet   id + one float32 logit column per label
    thresholds.json     tuned thresholds of every policy, and the policy predictions use
    metrics.json        every metric, per split and threshold policy (each says which thresholds)
    data_report.json    what was read, carved, subset and dropped
    train_log.json      the trainer's log history (loss, learning rate, validation scores)
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
from emotion_core.labels import LabelSchema
from emotion_core.store import resolve_run_folder
from emotion_core.store.base import MANIFEST, atomic_write_text, sha256_file


def write_json(path: Path, payload) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=float) + "\n")


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
            raise StoreError(f"{where}: cannot read the thresholds ({type(exc).__name__}: {exc}); "
                             f"the run folder is damaged") from None
        if list(table) != list(self.schema.names):
            raise StoreError(f"{where}: its labels ({', '.join(table)}) differ from labels.json "
                             f"({', '.join(self.schema.names)}); the run folder is damaged")
        if not (np.isfinite(values) & (values >= 0) & (values <= 1)).all():
            raise StoreError(f"{where}: thresholds must be numbers in [0, 1]; the run folder is damaged")
        return values

    def logits(self, split: str) -> tuple[list[str], np.ndarray]:
        path = self.folder / "logits" / f"{split}.parquet"
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # missing or not Parquet: polars raises several types
            raise StoreError(f"run '{self.folder}': cannot read logits/{split}.parquet ({type(exc).__name__}); "
                             f"the run folder is incomplete or damaged") from None
        if frame.columns[1:] != list(self.schema.names):
            raise StoreError(f"run '{self.folder}': the columns of logits/{split}.parquet differ from labels.json "
                             f"({', '.join(self.schema.names)}); the run folder is damaged")
        return frame["id"].to_list(), frame.select(list(self.schema.names)).to_numpy().astype(np.float32)

    def metrics(self) -> dict:
        return json.loads((self.folder / "metrics.json").read_text(encoding="utf-8"))


def read_run(ref: str | Path) -> Run:
    """Open a complete run from a folder, ``file://`` or ``s3://`` URI (``StoreError`` if incomplete)."""
    folder = resolve_run_folder(ref)
    name = MANIFEST  # the file being read, for the error message
    try:
        manifest = json.loads((folder / name).read_text(encoding="utf-8"))
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
        raise StoreError(f"run '{ref}': labels.json ({', '.join(schema.names)}) differs from the labels the run "
                         f"was trained on ({', '.join(map(str, recorded))}); the run folder is damaged")
    return Run(folder, manifest, config, schema)


def refuse_remote_code(raw_config, where: str) -> None:
    """``StoreError`` if a run's config asks for ``model.trust_remote_code``: loading a run never executes
    code from it (a store is shared by a team; its files are input, not code), whatever the settings say."""
    model = raw_config.get("model") if isinstance(raw_config, dict) else None
    value = model.get("trust_remote_code") if isinstance(model, dict) else None
    if value not in (None, False):
        raise StoreError(f"{where}: config.yaml field 'model.trust_remote_code' is {value!r}; a run is never loaded "
                         "with remote code (it would run Python from the run's files); retrain without it")
