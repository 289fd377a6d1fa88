"""Fit a model family with the Hugging Face ``Trainer``: ``fit`` (train, keep the best checkpoint), ``build_trainer``.

Features
- One loss path for every family: ``training.loss`` (``training.losses``) on the model's ``logits``.
- Fused AdamW with per-group learning rates (``training.optimizer``), linear warm-up then linear decay.
- Rare-label oversampling (``training.oversample_rare``); length-grouped batches when items carry lengths.
- Validation macro-F1 ``evaluations_per_epoch`` times an epoch; the best checkpoint is restored at the end;
  early stopping on it. A loss stuck at NaN/inf stops the run (``TrainingDiverged``, ``training.guards``).
- bf16 autocast on GPUs that support it, else fp16 on GPU; fp32 on CPU.
- Store checkpoints every ``training.checkpoint_every_steps`` and resume (``training.checkpoints``).
- GPU out-of-memory: the batch halves and training goes on (``training.oom``).
- Several GPUs: each torchrun rank runs this with its share of the batch (``training.ranks``).

Limits
- Local checkpoints are full ones (optimizer state too): more disk in the work folder than weights alone.
- The reported throughput excludes validation time.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emotion_core import tracking
from emotion_core.config import RunConfig, TrainingConfig
from emotion_core.data.registry import official_metric
from emotion_core.metrics import RANKING_METRICS, multilabel_metrics, sigmoid
from emotion_core.models.family import Family
from emotion_core.thresholds import AUTO, apply_thresholds, requires_one_label, tune_thresholds
from emotion_core.training import ranks
from emotion_core.training.losses import trainer_loss
from emotion_core.training.oom import OOM_ERRORS, BatchShape, checkpoint_of_failed_step, free_memory
from emotion_core.training.optimizer import adamw
from emotion_core.training.sampling import oversampled

log = logging.getLogger(__name__)


@dataclass
class FitStats:
    epochs_completed: float
    steps: int
    train_seconds: float  # wall time inside trainer.train(), evaluation excluded
    eval_seconds: float  # time spent in in-training validation passes
    train_samples_per_second: float
    best_validation_macro_f1: float | None  # best of the official metric (macro-F1 unless the dataset says other)
    precision: str
    log_history: list[dict]
    resumed_from_step: int | None = None  # the store checkpoint this run continued from
    oom_adjustments: list[dict] = field(default_factory=list)  # [{step, batch_size, gradient_accumulation_steps}]
    per_device_batch_size: int | None = None  # at the end (smaller than training.batch_size after an OOM)
    gradient_accumulation_steps: int = 1

    @classmethod
    def untrained(cls, precision: str) -> FitStats:
        """The stats of a family that is not fitted (prompted)."""
        return cls(
            epochs_completed=0.0,
            steps=0,
            train_seconds=0.0,
            eval_seconds=0.0,
            train_samples_per_second=0.0,
            best_validation_macro_f1=None,
            precision=precision,
            log_history=[],
        )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) through ``transformers.set_seed``."""
    from transformers import set_seed

    set_seed(seed)


def resolve_precision(requested: str) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    if requested != "auto":
        if requested in ("bf16", "fp16") and not torch.cuda.is_available():
            log.warning("precision %s requested without a GPU: using fp32 on CPU", requested)
            return "fp32"
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def build_trainer(
    cfg: RunConfig,
    family: Family,
    train_dataset,
    validation_dataset,
    work_dir: Path,
    progress: Callable[[dict], None] | None = None,
    monitor=None,
    train_labels: np.ndarray | None = None,
    per_device_batch_size: int | None = None,
    gradient_accumulation_steps: int = 1,
    extra_callbacks: tuple = (),
):
    """The configured ``transformers.Trainer`` for ``family`` and the precision it trains in.

    ``progress`` (optional) receives progress events (see ``training.progress``) with samples of
    ``monitor`` (a ``monitoring.DeviceMonitor``) attached. ``train_labels`` (the training split's
    label matrix, rows in ``train_dataset`` order) is needed by ``training.oversample_rare`` and by
    losses computed from label statistics (``bce_pos_weight``); without it those raise ``ValueError``.
    ``per_device_batch_size`` x ``gradient_accumulation_steps``: the rows of one optimizer step
    (default ``training.batch_size`` x 1); step counts (validation, logging) follow optimizer steps.
    """
    from transformers import Trainer, set_seed

    t = cfg.training
    set_seed(t.seed)
    precision = resolve_precision(t.precision)
    guard = _nonfinite_guard(cfg, precision)
    compute_loss = trainer_loss(t.loss, train_labels, observe=guard.observe_loss)  # fails early without needed labels
    train_dataset = oversampled(train_dataset, train_labels, t)  # before counting steps: an epoch is the resampled set
    args = training_arguments(
        cfg,
        family,
        work_dir,
        precision,
        len(train_dataset),
        per_device_batch_size or ranks.per_device_batch(cfg),
        gradient_accumulation_steps,
    )
    callbacks = _callbacks(t, [guard, *extra_callbacks], progress, monitor)
    optimizer = None if args.fsdp else adamw(family, t)  # FSDP: built by the Trainer after wrapping
    trainer_cls = Trainer if optimizer is not None else _family_optimizer_trainer(family, t)
    trainer = trainer_cls(
        model=family.model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        data_collator=family.collate,
        compute_metrics=_validation_metrics(cfg),
        callbacks=callbacks,
        compute_loss_func=compute_loss,  # pops "labels" before the forward pass; evaluation keeps them as label_ids
        optimizers=(optimizer, None),  # the Trainer builds the linear warm-up/decay schedule on it
    )
    return trainer, precision


def _nonfinite_guard(cfg: RunConfig, precision: str):
    """The callback that stops a run after ``training.max_nonfinite_steps`` consecutive non-finite steps."""
    from emotion_core.training.guards import NonFiniteGuard  # imports transformers: keep it lazy

    t = cfg.training
    return NonFiniteGuard(
        t.max_nonfinite_steps,
        cfg.name,
        learning_rate=t.learning_rate,
        precision=precision,
        max_grad_norm=t.max_grad_norm,
    )


def training_arguments(
    cfg: RunConfig,
    family: Family,
    work_dir: Path,
    precision: str,
    train_rows: int,
    per_device_batch_size: int,
    gradient_accumulation_steps: int,
):
    """``TrainingArguments`` of ``cfg.training``: validation (and checkpoint) steps, precision, seeds, this world."""
    from transformers import TrainingArguments

    t = cfg.training
    eval_steps = max(1, math.ceil(train_rows / t.batch_size) // t.evaluations_per_epoch)
    args = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        per_device_eval_batch_size=t.eval_batch_size,
        lr_scheduler_type="linear",
        warmup_steps=t.warmup_ratio,  # a float < 1 is a share of the total steps
        max_grad_norm=t.max_grad_norm,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,  # the Trainer keeps the best checkpoint besides the latest
        save_only_model=False,  # full checkpoints: a run resumes (store, OOM retry) with its optimizer and schedule
        load_best_model_at_end=True,
        metric_for_best_model=official_metric(cfg.data),  # early stopping and the best checkpoint
        greater_is_better=True,
        logging_steps=max(1, min(50, eval_steps)),
        train_sampling_strategy="group_by_length" if t.group_by_length and family.has_lengths else "random",
        remove_unused_columns=False,
        label_names=["labels"],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to=tracking.live_report_to(),  # W&B curves and system metrics while training (online)
        run_name=cfg.name,
        disable_tqdm=False,
        **ranks.trainer_arguments(cfg),  # collective timeout, FSDP
    )
    if args.n_gpu > 1:  # one process seeing several GPUs: train on one, never DataParallel (see training.ranks)
        args._n_gpu = 1
    return args


def _callbacks(t: TrainingConfig, callbacks: list, progress: Callable[[dict], None] | None, monitor) -> list:
    """Early stopping (if set), ``callbacks``, the test-only fault hook and progress reporting (if asked for)."""
    from transformers import EarlyStoppingCallback

    patience = t.early_stopping_patience
    early = [EarlyStoppingCallback(early_stopping_patience=patience)] if patience else []
    out = [*early, *callbacks, *ranks.fault_callbacks()]  # fault injection: off unless its env var is set
    if progress is not None:
        from emotion_core.training.progress import ProgressCallback  # imports transformers: keep it lazy

        out.append(ProgressCallback(progress, monitor=monitor))
    return out


def _validation_metrics(cfg: RunConfig) -> Callable:
    """The Trainer's ``compute_metrics``: macro-/micro-F1 and Jaccard at thresholds tuned on validation for the
    dataset's official metric. Policy ``auto`` selects with one global threshold (plus at-least-one for Jaccard):
    one tuned number barely overfits the rows that also choose the checkpoint."""
    metric = official_metric(cfg.data)
    policy = cfg.threshold_policy
    if policy == AUTO:
        policy = "global_at_least_one" if metric == "jaccard_samples" else "global"

    def compute_metrics(prediction) -> dict:
        # Score against the labels that travelled with each batch: with length grouping the Trainer
        # also reorders the validation set, so the dataset's own label order would not match.
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        labels = np.asarray(prediction.label_ids).round().astype(np.int64)
        probs = sigmoid(logits)
        thresholds = tune_thresholds(labels, probs, policy, metric=metric, shrinkage=cfg.threshold_shrinkage)
        names = [str(i) for i in range(labels.shape[1])]
        scores = multilabel_metrics(labels, apply_thresholds(probs, thresholds, requires_one_label(policy)), names)
        return {key: scores[key] for key in RANKING_METRICS}

    return compute_metrics


def _family_optimizer_trainer(family: Family, training: TrainingConfig):
    """A Trainer that builds our AdamW (per-group rates) itself: FSDP forbids handing it one before wrapping."""
    from transformers import Trainer

    class FamilyOptimizerTrainer(Trainer):
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                self.optimizer = adamw(family, training)
            return self.optimizer

    return FamilyOptimizerTrainer


@dataclass
class _Attempts:
    """What carries over from one ``trainer.train()`` attempt of a fit to the next (after a GPU out-of-memory)."""

    shape: BatchShape
    resume_from: Path | None  # the checkpoint the next attempt starts from
    trainer: object = None
    precision: str = "fp32"
    wall: float = 0.0  # seconds inside trainer.train(), validation included
    eval_seconds: float = 0.0
    start_epoch: float | None = None  # training done before this process (a store checkpoint) is not its throughput


def fit(
    cfg: RunConfig,
    family: Family,
    train_dataset,
    validation_dataset,
    work_dir: Path,
    progress: Callable[[dict], None] | None = None,
    monitor=None,
    train_labels: np.ndarray | None = None,
    checkpoints=None,
    resume=None,
) -> FitStats:
    """Train ``family.model`` in place (it ends holding the best validation checkpoint).

    ``train_labels``: the training split's label matrix (``data.labels("train")``), needed for
    oversampling and ``bce_pos_weight`` (see ``build_trainer``). Raises ``TrainingDiverged`` when
    the loss or gradient norm stays non-finite for ``training.max_nonfinite_steps`` steps, and
    ``OutOfMemoryAtMinBatch`` when the GPU runs out of memory at ``training.min_batch_size``.
    ``checkpoints`` (a ``training.checkpoints.RunCheckpoints``): where every
    ``training.checkpoint_every_steps``-th checkpoint is uploaded; ``resume`` (a ``ResumePoint``
    restored into ``work_dir``): continue from that checkpoint, with its batch shape.
    """
    meta = (resume.meta if resume is not None else {}) or {}
    run = _Attempts(BatchShape.start(cfg, meta), resume.checkpoint if resume is not None else None)
    callbacks = _store_checkpoint_callbacks(cfg, checkpoints, run)

    def new_trainer():
        return build_trainer(
            cfg,
            family,
            train_dataset,
            validation_dataset,
            work_dir,
            progress,
            monitor,
            train_labels,
            per_device_batch_size=run.shape.batch,
            gradient_accumulation_steps=run.shape.accumulation,
            extra_callbacks=callbacks,
        )

    try:
        while True:
            output, failed = _train_once(run, new_trainer)
            if failed is None:
                break
            _after_out_of_memory(run, cfg, work_dir, failed)
    finally:
        tracking.end_live_run()  # the Trainer's W&B callback leaves its run open
    return _fit_stats(run, output, resume)


def _store_checkpoint_callbacks(cfg: RunConfig, checkpoints, run: _Attempts) -> tuple:
    """The callback that uploads every ``checkpoint_every_steps``-th checkpoint with the batch shape it had."""
    from emotion_core.training.checkpoints import CheckpointCallback  # imports transformers: keep it lazy

    every = cfg.training.checkpoint_every_steps
    if checkpoints is None or not every:
        return ()

    def upload(step: int, trainer_dir: Path, best_dir: Path | None) -> None:
        shape = run.shape
        checkpoints.upload(
            step,
            trainer_dir,
            best_dir,
            {
                "step": step,
                "best_step": run.trainer.state.best_global_step,
                "per_device_batch_size": shape.batch,
                "gradient_accumulation_steps": shape.accumulation,
                "effective_batch_size": shape.batch * shape.accumulation,
                "oom_adjustments": shape.adjustments,
            },
        )

    return (CheckpointCallback(every, upload),)


def _train_once(run: _Attempts, new_trainer: Callable) -> tuple[object | None, str | None]:
    """One ``trainer.train()`` from ``run.resume_from``: ``(output, None)``, or ``(None, error)`` on a GPU OOM."""
    run.trainer, run.precision = new_trainer()
    resumed_state = _checkpoint_state(run.resume_from)
    history_from = len(resumed_state.get("log_history", []))
    if run.start_epoch is None:
        run.start_epoch = float(resumed_state.get("epoch") or 0.0)
    started = time.perf_counter()
    output = failed = None
    try:
        output = run.trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from is not None else None)
    except OOM_ERRORS as exc:
        failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    run.wall += time.perf_counter() - started
    run.eval_seconds += _eval_seconds(run.trainer.state.log_history, history_from)
    return output, failed


def _after_out_of_memory(run: _Attempts, cfg: RunConfig, work_dir: Path, failed: str) -> None:
    """Halve the batch (or raise ``OutOfMemoryAtMinBatch``) and go on from the step that failed."""
    trainer, step = run.trainer, int(run.trainer.state.global_step)
    free_memory(trainer, keep_optimizer=True)  # the optimizer state is saved with the failed step's checkpoint
    try:
        run.shape.halve(cfg, step, failed)
    except BaseException:
        free_memory(trainer)
        raise
    run.resume_from = checkpoint_of_failed_step(trainer, work_dir, step)
    free_memory(trainer)
    run.trainer = None
    shape = run.shape
    log.warning(
        "config %s: out of GPU memory at step %d (%s); per-device batch %d -> %d, gradient accumulation "
        "%d -> %d (effective batch %d), continuing from step %d",
        cfg.name,
        step,
        failed,
        shape.tried[-2],
        shape.batch,
        shape.accumulation // 2,
        shape.accumulation,
        shape.batch * shape.accumulation,
        step,
    )


def _fit_stats(run: _Attempts, output, resume) -> FitStats:
    state = run.trainer.state
    train_seconds = max(run.wall - run.eval_seconds, 1e-9)
    epochs_completed = float(state.epoch or 0.0)
    samples = len(run.trainer.train_dataset) * max(epochs_completed - run.start_epoch, 0.0)  # after oversampling
    best = state.best_metric
    log.info(
        "trained %d steps in %.1fs (+%.1fs validation): %.1f samples/s, best validation %s %s%s",
        output.global_step,
        train_seconds,
        run.eval_seconds,
        samples / train_seconds,
        run.trainer.args.metric_for_best_model,
        best,
        f" (resumed from step {resume.step})" if resume is not None else "",
    )
    return FitStats(
        epochs_completed=epochs_completed,
        steps=int(output.global_step),
        train_seconds=train_seconds,
        eval_seconds=run.eval_seconds,
        train_samples_per_second=samples / train_seconds,
        best_validation_macro_f1=None if best is None else float(best),
        precision=run.precision,
        log_history=state.log_history,
        resumed_from_step=resume.step if resume is not None else None,
        oom_adjustments=run.shape.adjustments,
        per_device_batch_size=run.shape.batch,
        gradient_accumulation_steps=run.shape.accumulation,
    )


def _checkpoint_state(checkpoint: Path | None) -> dict:
    """The ``trainer_state.json`` of a checkpoint folder (``{}`` without one)."""
    if checkpoint is None:
        return {}
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _eval_seconds(history: list[dict], since: int) -> float:
    return sum(h.get("eval_runtime", 0.0) for h in history[since:])
