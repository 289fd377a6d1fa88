"""The training recipe, top to bottom: one config in, one published run out.

    load data -> build the family -> fit -> predict validation/test -> thresholds, calibration, metrics
    -> write the run into a staging folder, manifest last -> publish

Features
- The store never holds half a run: the staging folder is discarded on an error; if only publishing fails,
  the complete staged run is kept and the error says where.
- Resume: a run started again with the same run id continues from its latest store checkpoint.
- Under torchrun every rank calls ``train_run``; rank 0 writes the run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from emotion_core import provenance
from emotion_core.calibration import CALIBRATION_FILE, shipped_calibration
from emotion_core.config import RunConfig
from emotion_core.data import EmotionData, load_data
from emotion_core.data.registry import official_metric
from emotion_core.errors import StoreError
from emotion_core.files import write_json
from emotion_core.metrics import sigmoid
from emotion_core.models import build_family, preflight
from emotion_core.models.family import Family
from emotion_core.monitoring import DeviceMonitor
from emotion_core.runs import file_inventory, write_config, write_logits
from emotion_core.store import ArtifactStore, RunId, RunIdConflict
from emotion_core.thresholds import AUTO, choose_policy, evaluate_policies, requires_one_label
from emotion_core.training import ranks
from emotion_core.training.batch_logits import predict_logits
from emotion_core.training.fit import FitStats, fit, resolve_precision, seed_everything

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_STORE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""Write errors of the staging folder (in the store) that are the store's state, not a bug: a StoreError."""


def content_hash(cfg: RunConfig, data_hash: str) -> str:
    """sha256 (hex) of the config and the data: what a checkpoint must match to be resumed from."""
    content = json.dumps(cfg.model_dump(mode="json"), sort_keys=True) + data_hash
    return hashlib.sha256(content.encode()).hexdigest()


def make_run_id(cfg: RunConfig, data_hash: str, now: datetime) -> str:
    """``<config>-<UTC time>-<8 hex of config + data>``: sortable, readable, unique per content."""
    return f"{cfg.name}-{now:%Y%m%dT%H%M%SZ}-{content_hash(cfg, data_hash)[:8]}"


def quality_flags(evaluation: dict, policy: str) -> list[dict]:
    """Warnings a reader of the summary must see: a model that predicts nothing is not a model."""
    flags = []
    if evaluation["validation"]["fixed"]["no_positive_predictions"]:
        flags.append(
            {
                "code": "no_predictions_at_0.5",
                "message": "validation predictions are empty for every label at threshold 0.5 "
                "(collapsed towards 'no label')",
            }
        )
    if evaluation["validation"][policy]["no_positive_predictions"]:
        flags.append(
            {
                "code": "no_predictions",
                "message": f"validation predictions are empty for every label at the run's {policy} thresholds",
            }
        )
    never = evaluation["validation"][policy]["labels_never_predicted"]
    if never:
        flags.append(
            {"code": "labels_never_predicted", "message": f"never predicted on validation: {', '.join(never)}"}
        )
    return flags


def count_parameters(model) -> dict[str, int | float]:
    """Trainable and total parameters (a 4-bit QLoRA weight counts as the parameters it stands for), and
    ``weights_mb``: the bytes the weights and buffers take as stored (a 4-bit weight: half a byte each)."""
    from emotion_core.models.adapters import trainable_parameters

    counts = trainable_parameters(model)
    stored = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {
        **counts,
        "trainable_percent": round(100.0 * counts["trainable"] / max(counts["total"], 1), 4),
        "weights_mb": round(stored / 2**20, 1),
    }


def train_config(
    cfg: RunConfig,
    store: ArtifactStore,
    data: EmotionData | None = None,
    run_id: str | None = None,
    progress: Callable[[dict], None] | None = None,
    context: dict | None = None,
) -> str:
    """Train ``cfg``, publish the run into ``store`` and return the run's URI (``train_run`` + ``publish_run``)."""
    staging, run_id = train_run(cfg, store, data=data, run_id=run_id, progress=progress, context=context)
    return publish_run(store, staging, run_id)


def train_run(
    cfg: RunConfig,
    store: ArtifactStore,
    data: EmotionData | None = None,
    run_id: str | None = None,
    progress: Callable[[dict], None] | None = None,
    context: dict | None = None,
) -> tuple[Path | None, str]:
    """Train ``cfg`` into a complete staging folder of ``store``; return ``(folder, run_id)``.

    ``run_id``: chosen by the caller (an orchestrator that must find the run again), else derived
    from config, data and time. If the store holds a complete training checkpoint of ``run_id``
    (same config and data), training resumes from it. ``progress``: called with progress events (step, epoch,
    eta, device sample) during training. ``context``: recorded as the manifest's ``orchestration`` entry
    (flow run, work pool, worker...).

    Under torchrun (``resources.gpus`` > 1, see ``training.distributed``) every rank calls this: rank 0
    stages, checkpoints and writes the run; the other ranks only train and return ``(None, run_id)``.
    """
    if run_id is not None:
        run_id = RunId.parse(run_id, "run_id")  # before any work: it names folders in the store
    ranks.check(cfg)  # several GPUs only through torchrun: never DataParallel
    preflight.check(cfg)  # before any download or training
    clock = _Clock(datetime.now(UTC), time.perf_counter())
    provenance.reset_peak_memory()
    with ranks.main_first():  # one rank fills the data cache
        data = data if data is not None else load_data(cfg.data, store)  # a bare data.store_ref: this store
    run_id = ranks.broadcast(run_id or make_run_id(cfg, data.data_hash, clock.started_at))  # rank 0's clock decides
    main = ranks.is_main()
    staging = store.staging(run_id) if main else None
    work_dir = ranks.broadcast(staging / "checkpoints" if main else None)  # one folder shared by the ranks
    log.info(
        "run %s: %s on %s (%s train / %s validation rows)",
        run_id,
        cfg.model.family,
        cfg.data.dataset,
        len(data.split("train")),
        len(data.split("validation")),
    )
    try:
        trained = _train(cfg, store, data, run_id, work_dir, progress)
        if not main:
            return None, run_id
        shutil.rmtree(work_dir, ignore_errors=True)  # the best weights are in memory now
        manifest = _write_run(staging, cfg, run_id, data, trained, clock, context)
    except BaseException as exc:
        if staging is not None:
            store.discard(staging)
        if isinstance(exc, OSError) and exc.errno in _STORE_FULL:
            raise StoreError(
                f"store {store.uri}: writing run {run_id} failed ({exc.strerror or exc}); nothing was published"
            ) from None
        raise
    ece = manifest["calibration"]["validation_ece_flat"]
    log.info("run %s: calibrated on validation, flattened ECE %.4f -> %.4f", run_id, ece["before"], ece["after"])
    for flag in manifest["flags"]:
        log.warning("run %s: %s", run_id, flag["message"])
    return staging, run_id


@dataclass(frozen=True)
class _Clock:
    started_at: datetime  # UTC, for the run id and the manifest
    started: float  # perf_counter, for the wall time


@dataclass
class _Trained:
    family: Family
    stats: FitStats
    device_usage: dict  # this rank's device monitor summary
    rank_usages: list[dict] | None  # every rank's usage on rank 0


def _train(
    cfg: RunConfig,
    store: ArtifactStore,
    data: EmotionData,
    run_id: str,
    work_dir: Path,
    progress: Callable[[dict], None] | None,
) -> _Trained:
    """Build the family and fit it (a prompted family is not fitted); every rank, in step."""
    train_texts, train_labels = data.texts("train"), data.labels("train")
    # Seed before the model is built: a new head's initial weights must not depend on what
    # else consumed the random streams in this process (e.g. an earlier run of a config set).
    seed_everything(cfg.training.seed)
    with ranks.main_first():  # one rank fills the model cache
        family = build_family(cfg, data.schema, train_texts, train_labels)
    train_dataset = family.make_dataset(train_texts, train_labels)
    validation_dataset = family.make_dataset(data.texts("validation"), data.labels("validation"))
    with DeviceMonitor(device=ranks.device_index()) as monitor:
        if not family.trained:  # prompted: nothing to fit
            stats = FitStats.untrained(resolve_precision(cfg.training.precision))
        else:
            checkpoints, resume = _store_checkpoints(cfg, store, run_id, data.data_hash, work_dir)
            stats = fit(
                cfg,
                family,
                train_dataset,
                validation_dataset,
                work_dir,
                progress=progress,
                monitor=monitor,
                train_labels=train_labels,
                checkpoints=checkpoints,
                resume=resume,
            )
    device_usage = monitor.summary()
    rank_usages = ranks.gather(ranks.rank_usage(device_usage, provenance.peak_memory()))
    ranks.barrier()  # every rank has loaded the best checkpoint before rank 0 deletes the folder
    return _Trained(family, stats, device_usage, rank_usages)


def _store_checkpoints(cfg: RunConfig, store: ArtifactStore, run_id: str, data_hash: str, work_dir: Path):
    """``(checkpoints, resume)``: where checkpoints are uploaded and the one restored to resume from, if any."""
    if not cfg.training.checkpoint_every_steps:
        return None, None
    from emotion_core.training.checkpoints import RunCheckpoints  # imports transformers

    checkpoints = (
        RunCheckpoints(store, run_id, content_hash(cfg, data_hash)) if ranks.is_main() else ranks.NoCheckpoints()
    )  # the ranks save together, rank 0 uploads
    return checkpoints, ranks.broadcast(checkpoints.restore(work_dir))


def _write_run(
    staging: Path,
    cfg: RunConfig,
    run_id: str,
    data: EmotionData,
    trained: _Trained,
    clock: _Clock,
    context: dict | None,
) -> dict:
    """Predict, evaluate, calibrate and write every run file into ``staging``, the manifest last; returns it."""
    splits = ["validation"] + (["test"] if len(data.split("test")) else [])
    batch = cfg.training.eval_batch_size
    started = time.perf_counter()
    logits = {split: predict_logits(trained.family, data.texts(split), batch) for split in splits}
    # Batched inference cost per text (the cost comparison's latency axis): validation + test, this machine.
    inference = {
        "seconds": round(time.perf_counter() - started, 3),
        "texts": sum(len(v) for v in logits.values()),
        "batch_size": batch,
    }
    metric = official_metric(cfg.data)
    evaluation = evaluate_policies(
        data.schema.names,
        data.labels("validation"),
        sigmoid(logits["validation"]),
        data.labels("test") if "test" in logits else None,
        sigmoid(logits["test"]) if "test" in logits else None,
        metric=metric,
        shrinkage=cfg.threshold_shrinkage,
    )
    selection = _policy_selection(cfg, data, logits["validation"], metric)
    calibration = shipped_calibration(
        logits["validation"],
        data.labels("validation"),
        data.schema.names,
        selection["policy"],
        metric=metric,
        shrinkage=cfg.threshold_shrinkage,
    )
    _write_artefacts(staging, cfg, data, trained, logits, evaluation, calibration, selection)
    manifest = _manifest(cfg, run_id, data, trained, evaluation, calibration, clock, context, selection)
    manifest["timing"]["inference"] = inference | {
        "ms_per_text": round(1000 * inference["seconds"] / max(inference["texts"], 1), 4)
    }
    manifest["files"] = file_inventory(staging)
    write_json(staging / "manifest.json", manifest)  # last: its presence marks the run complete
    return manifest


def _policy_selection(cfg: RunConfig, data: EmotionData, val_logits, metric: str) -> dict:
    """The run's threshold policy: the configured one, or for ``auto`` the winner on held-out validation folds; and
    ``held_out_score``, its ``metric`` on each validation fold at thresholds tuned on the others (the in-sample score
    overstates test by what tuning fitted to noise)."""
    configured = cfg.threshold_policy
    chosen = choose_policy(
        data.labels("validation"),
        sigmoid(val_logits),
        metric,
        shrinkage=cfg.threshold_shrinkage,
        seed=cfg.data.seed,
        **({} if configured == AUTO else {"candidates": [configured]}),
    )
    chosen["held_out_score"] = chosen["scores"][chosen["policy"]]
    if configured != AUTO:
        return chosen | {"configured": configured}
    log.info(
        "threshold policy %s chosen for %s on held-out validation folds (%s)",
        chosen["policy"],
        metric,
        ", ".join(f"{p} {v:.4f}" for p, v in chosen["scores"].items()),
    )
    return chosen | {"configured": AUTO}


def _write_artefacts(
    staging: Path,
    cfg: RunConfig,
    data: EmotionData,
    trained: _Trained,
    logits: dict,
    evaluation: dict,
    calibration: dict,
    selection: dict,
) -> None:
    """Model, logits, config, labels, thresholds, calibration, metrics, data report and training log."""
    schema = data.schema
    (staging / "model").mkdir()
    trained.family.save(staging / "model")
    for split, split_logits in logits.items():
        write_logits(staging / "logits" / f"{split}.parquet", data.ids(split), split_logits, schema)
    write_config(staging / "config.yaml", cfg)
    (staging / "labels.json").write_text(schema.to_json(), encoding="utf-8")
    write_json(
        staging / "thresholds.json",
        {
            "policy": selection["policy"],
            "at_least_one": requires_one_label(selection["policy"]),
            "metric": selection["metric"],
            "tuned_on": "validation",
            "selection": selection,
            "thresholds": {p: dict(zip(schema.names, map(float, t))) for p, t in evaluation["thresholds"].items()},
        },
    )
    write_json(staging / CALIBRATION_FILE, calibration)  # before the inventory: every run file is listed
    write_json(staging / "metrics.json", {k: v for k, v in evaluation.items() if k != "thresholds"})
    write_json(staging / "data_report.json", data.report.to_dict())
    write_json(staging / "train_log.json", trained.stats.log_history)


def _manifest(
    cfg: RunConfig,
    run_id: str,
    data: EmotionData,
    trained: _Trained,
    evaluation: dict,
    calibration: dict,
    clock: _Clock,
    context: dict | None,
    selection: dict,
) -> dict:
    """The run's manifest, without its file inventory."""
    stats, policy = trained.stats, selection["policy"]
    return {
        "manifest_version": MANIFEST_VERSION,
        "run_id": run_id,
        "status": "completed",
        "config_name": cfg.name,
        "family": cfg.model.family,
        "model": getattr(cfg.model, "model", cfg.model.family),
        "started_at": clock.started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "config": cfg.model_dump(mode="json"),
        "data": _data_facts(cfg, data),
        "parameters": count_parameters(trained.family.model),
        "timing": _timing(stats, time.perf_counter() - clock.started),
        "precision": stats.precision,
        "batching": _batching(cfg, stats),
        "resumed_from_step": stats.resumed_from_step,
        "oom_adjustments": stats.oom_adjustments,
        "memory": provenance.peak_memory(),
        "device": provenance.device_facts(),
        "device_usage": trained.device_usage,
        "distributed": ranks.manifest_entry(cfg, trained.rank_usages),
        "orchestration": context or {},
        "versions": provenance.package_versions(),
        "code_version": provenance.code_version(),
        "git": provenance.git_commit(),
        "threshold_policy": policy,
        "threshold_selection": selection,
        "metric": selection["metric"],
        "summary": _summary(evaluation),
        "best_validation_macro_f1_during_training": stats.best_validation_macro_f1,
        "flags": quality_flags(evaluation, policy),
        "calibration": _calibration_facts(calibration),
    }


def _data_facts(cfg: RunConfig, data: EmotionData) -> dict:
    """Which data the run saw: dataset, content hash, pushed dataset read (if any), labels and rows per split."""
    return {
        "dataset": cfg.data.dataset,
        "hash": data.data_hash,
        "store_ref": data.report.pushed,
        "labels": list(data.schema.names),
        "rows": {s: len(data.split(s)) for s in ("train", "validation", "test")},
    }


def _batching(cfg: RunConfig, stats: FitStats) -> dict:
    """The effective batch: the configured size, what each device held, and the accumulation that made it up."""
    return {
        "batch_size": cfg.training.batch_size,
        "per_device_batch_size": stats.per_device_batch_size or cfg.training.batch_size,
        "gradient_accumulation_steps": stats.gradient_accumulation_steps,
    }


def _calibration_facts(calibration: dict) -> dict:
    """Where the shipped calibration is, and the validation ECE before and after it."""
    return {
        "file": CALIBRATION_FILE,
        "version": calibration["version"],
        "validation_ece_flat": {
            "before": calibration["ece_before"]["flat"],
            "after": calibration["ece_after"]["flat"],
        },
    }


def _timing(stats: FitStats, wall_seconds: float) -> dict:
    return {
        "wall_seconds": round(wall_seconds, 2),
        "train_seconds": round(stats.train_seconds, 2),
        "validation_seconds_during_training": round(stats.eval_seconds, 2),
        "train_samples_per_second": round(stats.train_samples_per_second, 2),
        "epochs_completed": stats.epochs_completed,
        "steps": stats.steps,
    }


def _summary(evaluation: dict) -> dict:
    """Headline scores per split and threshold policy."""
    keys = ("macro_f1", "micro_f1", "jaccard_samples", "subset_accuracy")
    splits = [s for s in ("validation", "test") if s in evaluation]
    return {split: {p: {k: m[k] for k in keys} for p, m in evaluation[split].items()} for split in splits}


def published_run_uri(store: ArtifactStore, run_id: str, cfg: RunConfig) -> str | None:
    """URI of ``run_id`` if ``store`` holds it, trained from ``cfg`` (an earlier attempt of the same child
    published it before it crashed); ``None`` if absent; ``RunIdConflict`` if it holds a run of another config."""
    try:
        if not store.has_run(run_id):
            return None
    except StoreError:  # unreachable now: training goes ahead and publishing checks again (and keeps the run)
        return None
    manifest = json.loads((store.run_folder(run_id) / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("config") != cfg.model_dump(mode="json"):
        raise RunIdConflict(
            f"run id {run_id} exists in the store {store.uri} with a different config; "
            f"nothing was trained (choose another run id)"
        )
    return f"{store.uri}/runs/{run_id}"


def publish_run(store: ArtifactStore, staging: Path, run_id: str) -> str:
    """Publish a complete staged run (manifest last), then drop its training checkpoints from the store.

    On failure the staged copy is kept and named (and the checkpoints stay): a store outage, or a
    different run already published under ``run_id`` (``RunIdConflict``, not worth retrying).
    """
    try:
        uri = store.publish(staging, run_id)
    except RunIdConflict as exc:
        # Never drop the new run silently: it stays staged (a folder with a manifest is never swept).
        raise RunIdConflict(
            f"{exc}. The new run is kept at {staging}; train it again under another run id, or "
            f"remove the old run from the store and run: emotion publish {staging} --store {store.uri}"
        ) from None
    except StoreError as exc:
        # Training is the expensive part: keep the complete local copy rather than lose it.
        raise StoreError(
            f"{exc}. The complete run is kept at {staging}; once the store is reachable: "
            f"emotion publish {staging} --store {store.uri}"
        ) from None
    log.info("run %s published: %s", run_id, uri)
    try:
        store.delete_checkpoints(run_id)
    except StoreError as exc:  # best effort: a leftover is only disk space
        log.warning("run %s: its training checkpoints could not be deleted from %s (%s)", run_id, store.uri, exc)
    return uri
