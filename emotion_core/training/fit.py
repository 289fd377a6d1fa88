"""Fit a model family with the Hugging Face ``Trainer``.

Features
- One loss path for every family: the Trainer's ``compute_loss_func`` applies ``training.loss``
  (``training.losses``: BCE by default, BCE with positive weights, focal, asymmetric, or a weighted
  sum) to the model's ``logits``; the labels are taken out of the batch before the forward pass, so
  the model's own BCE is not computed. Evaluation still scores the labels of each batch.
- Rare-label oversampling (``training.oversample_rare``, ``training.sampling``): the training set is
  read through a ``Subset`` that repeats rows with rare labels; an epoch is the resampled set.
- ``NonFiniteGuard`` (``training.guards``): a run whose loss or gradient norm stays NaN/inf for
  ``training.max_nonfinite_steps`` steps stops with ``TrainingDiverged``.
- Dynamic padding (the family's collator), seeded initialisation and batch order.
- Fused AdamW with per-group learning rates (pretrained body vs new head; no decay on biases and
  norms), linear warm-up then linear decay.
- Length-grouped batches when the family's items carry token lengths (~1.8x faster on CPU here).
- Validation macro-F1 (at thresholds tuned on validation) ``evaluations_per_epoch`` times an epoch;
  the best checkpoint is restored at the end; early stopping on it.
- bf16 autocast on GPUs that support it, else fp16 on GPU; fp32 on CPU (this CPU emulates bf16 at
  ~50x the cost).
- Returns throughput that excludes evaluation time, so samples/s measures training alone.
- Checkpoints and resume (``training.checkpoint_every_steps``, ``training.checkpoints``): every N
  optimizer steps a full Trainer checkpoint (weights or adapter, optimizer, scheduler, RNG, trainer
  state) is saved and handed to ``checkpoints.upload`` (the artefact store); ``resume`` (a
  checkpoint restored from the store) continues a run from its step, with the batch shape it had.
- GPU out-of-memory (``torch.OutOfMemoryError``, which ``torch.cuda.OutOfMemoryError`` is): the
  memory is freed, the per-device batch halved and gradient accumulation doubled, so an optimizer
  step still sees ``training.batch_size`` rows (the loss divides by ``num_items_in_batch``, so the
  accumulated gradient is that of the same mean), and training goes on from the step it failed in
  (a checkpoint of that step is saved first; before the first optimizer step it starts over).
  Each change is in ``FitStats.oom_adjustments``; at ``training.min_batch_size`` it stops with
  ``OutOfMemoryAtMinBatch``.

- Several GPUs (``resources.gpus`` > 1): each torchrun rank runs this with ``batch_size / gpus`` rows a
  step and the Trainer runs DDP or FSDP (``training.distributed``); one process never uses DataParallel.

Limits
- Out-of-memory batch halving is single-process only: under torchrun an OOM ends the run (``distributed``).
- An odd per-device batch halves to ``ceil(b / 2)``: the effective batch grows by a row or so.
- Local checkpoints (validation steps included) are full ones, optimizer state and all: more disk in
  the work folder than weights alone (the Trainer keeps the latest and the best).
- Only ``torch.OutOfMemoryError`` counts as out of memory: an allocation failure that a library
  reports as another error (e.g. a cuBLAS ``RuntimeError``) fails the run as before.
- Out-of-memory errors in validation passes are handled the same way (the training batch halves),
  although the validation batch (``eval_batch_size``) is what would need to shrink.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from emotion_core.config import LossConfig, RunConfig, TrainingConfig
from emotion_core.errors import OutOfMemoryAtMinBatch
from emotion_core.metrics import multilabel_metrics, sigmoid
from emotion_core.models.family import Family
from emotion_core.thresholds import apply_thresholds, tune_thresholds
from emotion_core.training import ranks
from emotion_core.training.optimizer import adamw
from emotion_core.training.losses import build_loss
from emotion_core.training.sampling import oversample_indices

log = logging.getLogger(__name__)


@dataclass
class FitStats:
    epochs_completed: float
    steps: int
    train_seconds: float          # wall time inside trainer.train(), evaluation excluded
    eval_seconds: float           # time spent in in-training validation passes
    train_samples_per_second: float
    best_validation_macro_f1: float | None
    precision: str
    log_history: list[dict]
    resumed_from_step: int | None = None  # the store checkpoint this run continued from
    oom_adjustments: list[dict] = field(default_factory=list)  # [{step, batch_size, gradient_accumulation_steps}]
    per_device_batch_size: int | None = None  # at the end (smaller than training.batch_size after an OOM)
    gradient_accumulation_steps: int = 1


# torch.cuda.OutOfMemoryError is torch.OutOfMemoryError since torch 2.5; both named for older builds.
OOM_ERRORS = tuple({getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError})


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


def oversampled(train_dataset, train_labels: np.ndarray | None, training: TrainingConfig):
    """``train_dataset``, or with ``training.oversample_rare`` > 0 a ``Subset`` repeating rows with rare labels."""
    if training.oversample_rare == 0:
        return train_dataset
    if train_labels is None:
        raise ValueError("training.oversample_rare is set: pass train_labels (the training split's label matrix)")
    if len(train_labels) != len(train_dataset):
        raise ValueError(f"train_labels has {len(train_labels)} rows, the training dataset {len(train_dataset)}")
    indices = oversample_indices(train_labels, training.oversample_rare, training.seed)
    log.info("oversampling rare labels (strength %g): %d training rows -> %d per epoch",
             training.oversample_rare, len(train_dataset), len(indices))
    # Items are read through the Subset, so the Trainer's length grouping (which reads each item's
    # ``input_ids``) sees the repeated rows' lengths as well.
    return torch.utils.data.Subset(train_dataset, indices.tolist())


def trainer_loss(loss_cfg: LossConfig, train_labels: np.ndarray | None,
                 observe: Callable[[torch.Tensor], None] | None = None):
    """The Trainer's ``compute_loss_func``: ``(outputs, labels, num_items_in_batch) -> loss``.

    ``training.losses.build_loss`` on the model's ``logits``: a mean over the batch's label entries.
    With gradient accumulation the Trainer passes ``num_items_in_batch``, the label entries of all
    accumulated batches (it counts ``labels != -100``: every 0/1 entry), and does not divide the loss
    itself; ``mean * entries / num_items_in_batch`` makes the accumulated gradient that of the mean
    over all of them (without accumulation the factor is exactly 1). ``observe`` sees every loss.
    """
    loss = build_loss(loss_cfg, train_labels)

    def compute_loss(outputs, labels, num_items_in_batch=None):
        if labels is None:
            raise ValueError("the batch carries no 'labels': training and validation datasets need labels")
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        value = loss(logits, labels)
        if num_items_in_batch is not None:
            value = value * (labels.numel() / num_items_in_batch)
        if observe is not None:
            observe(value)
        return value

    return compute_loss


def build_trainer(cfg: RunConfig, family: Family, train_dataset, validation_dataset, work_dir: Path,
                  progress: Callable[[dict], None] | None = None, monitor=None, train_labels: np.ndarray | None = None,
                  per_device_batch_size: int | None = None, gradient_accumulation_steps: int = 1,
                  extra_callbacks: tuple = ()):
    """The configured ``transformers.Trainer`` for ``family`` and the precision it trains in.

    ``progress`` (optional) receives progress events (see ``training.progress``) with samples of
    ``monitor`` (a ``monitoring.DeviceMonitor``) attached. ``train_labels`` (the training split's
    label matrix, rows in ``train_dataset`` order) is needed by ``training.oversample_rare`` and by
    losses computed from label statistics (``bce_pos_weight``); without it those raise ``ValueError``.
    ``per_device_batch_size`` x ``gradient_accumulation_steps``: the rows of one optimizer step
    (default ``training.batch_size`` x 1); step counts (validation, logging) follow optimizer steps.
    """
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    from emotion_core.training.guards import NonFiniteGuard  # imports transformers: keep it lazy

    t = cfg.training
    set_seed(t.seed)
    precision = resolve_precision(t.precision)
    guard = NonFiniteGuard(t.max_nonfinite_steps, cfg.name, learning_rate=t.learning_rate, precision=precision,
                           max_grad_norm=t.max_grad_norm)
    compute_loss = trainer_loss(t.loss, train_labels, observe=guard.observe_loss)  # fails early without needed labels
    train_dataset = oversampled(train_dataset, train_labels, t)  # before counting steps: an epoch is the resampled set
    steps_per_epoch = math.ceil(len(train_dataset) / t.batch_size)
    eval_steps = max(1, steps_per_epoch // t.evaluations_per_epoch)

    def compute_metrics(prediction) -> dict:
        # Score against the labels that travelled with each batch: with length grouping the Trainer
        # also reorders the validation set, so the dataset's own label order would not match.
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        labels = np.asarray(prediction.label_ids).round().astype(np.int64)
        probs = sigmoid(logits)
        thresholds = tune_thresholds(labels, probs, cfg.threshold_policy)
        scores = multilabel_metrics(labels, apply_thresholds(probs, thresholds), [str(i) for i in range(labels.shape[1])])
        return {"macro_f1": scores["macro_f1"], "micro_f1": scores["micro_f1"]}

    args = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=per_device_batch_size or ranks.per_device_batch(cfg),
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
        metric_for_best_model="macro_f1",
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
        report_to="none",
        disable_tqdm=False,
        **ranks.trainer_arguments(cfg),  # collective timeout, FSDP
    )
    if args.n_gpu > 1:  # one process seeing several GPUs: train on one, never DataParallel (see training.distributed)
        args._n_gpu = 1
    optimizer = None if args.fsdp else adamw(family, t)  # FSDP: built by the Trainer after wrapping
    callbacks = [EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience)] if t.early_stopping_patience else []
    callbacks.append(guard)
    callbacks.extend(extra_callbacks)
    callbacks.extend(ranks.fault_callbacks())  # test-only fault injection, off unless its env var is set
    if progress is not None:
        from emotion_core.training.progress import ProgressCallback  # imports transformers: keep it lazy

        callbacks.append(ProgressCallback(progress, monitor=monitor))
    trainer_cls = Trainer if optimizer is not None else _family_optimizer_trainer(family, t)
    trainer = trainer_cls(
        model=family.model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        data_collator=family.collate,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        compute_loss_func=compute_loss,  # pops "labels" before the forward pass; evaluation keeps them as label_ids
        optimizers=(optimizer, None),  # the Trainer builds the linear warm-up/decay schedule on it
    )
    return trainer, precision


def _family_optimizer_trainer(family: Family, training: TrainingConfig):
    """A Trainer that builds our AdamW (per-group rates) itself: FSDP forbids handing it one before wrapping."""
    from transformers import Trainer

    class FamilyOptimizerTrainer(Trainer):
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                self.optimizer = adamw(family, training)
            return self.optimizer

    return FamilyOptimizerTrainer


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


def _free_memory(trainer, keep_optimizer: bool = False) -> None:
    """Drop what a failed attempt holds on the device (gradients; unless kept, the optimizer state), then the CUDA cache."""
    try:
        trainer.model.zero_grad(set_to_none=True)
        if not keep_optimizer:
            trainer.accelerator.free_memory()
            trainer.optimizer = trainer.lr_scheduler = None
    except Exception:  # noqa: BLE001 - freeing is best effort
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _local_checkpoint(work_dir: Path, step: int) -> Path | None:
    """``work_dir/checkpoint-<step>`` if it is a full checkpoint (with optimizer state)."""
    folder = work_dir / f"checkpoint-{step}"
    return folder if (folder / "trainer_state.json").is_file() and (folder / "optimizer.pt").is_file() else None


def fit(cfg: RunConfig, family: Family, train_dataset, validation_dataset, work_dir: Path,
        progress: Callable[[dict], None] | None = None, monitor=None, train_labels: np.ndarray | None = None,
        checkpoints=None, resume=None) -> FitStats:
    """Train ``family.model`` in place (it ends holding the best validation checkpoint).

    ``train_labels``: the training split's label matrix (``data.labels("train")``), needed for
    oversampling and ``bce_pos_weight`` (see ``build_trainer``). Raises ``TrainingDiverged`` when
    the loss or gradient norm stays non-finite for ``training.max_nonfinite_steps`` steps, and
    ``OutOfMemoryAtMinBatch`` when the GPU runs out of memory at ``training.min_batch_size``.
    ``checkpoints`` (a ``training.checkpoints.RunCheckpoints``): where every
    ``training.checkpoint_every_steps``-th checkpoint is uploaded; ``resume`` (a ``ResumePoint``
    restored into ``work_dir``): continue from that checkpoint, with its batch shape.
    """
    from emotion_core.training.checkpoints import CheckpointCallback  # imports transformers: keep it lazy

    t = cfg.training
    meta = (resume.meta if resume is not None else {}) or {}
    batch = int(meta.get("per_device_batch_size") or ranks.per_device_batch(cfg))
    accumulation = int(meta.get("gradient_accumulation_steps") or 1)
    adjustments: list[dict] = list(meta.get("oom_adjustments") or [])
    resume_from: Path | None = resume.checkpoint if resume is not None else None
    tried = [batch]

    def upload(step: int, trainer_dir: Path, best_dir: Path | None) -> None:
        checkpoints.upload(step, trainer_dir, best_dir, {
            "step": step, "best_step": trainer.state.best_global_step, "per_device_batch_size": batch,
            "gradient_accumulation_steps": accumulation, "effective_batch_size": batch * accumulation,
            "oom_adjustments": adjustments})

    callbacks = (CheckpointCallback(t.checkpoint_every_steps, upload),) if checkpoints is not None and t.checkpoint_every_steps else ()
    wall = eval_seconds = 0.0
    start_epoch = None
    while True:
        trainer, precision = build_trainer(cfg, family, train_dataset, validation_dataset, work_dir, progress, monitor,
                                           train_labels, per_device_batch_size=batch,
                                           gradient_accumulation_steps=accumulation, extra_callbacks=callbacks)
        resumed_state = _checkpoint_state(resume_from)
        history_from = len(resumed_state.get("log_history", []))
        if start_epoch is None:  # training done before this process (a store checkpoint) is not its throughput
            start_epoch = float(resumed_state.get("epoch") or 0.0)
        started = time.perf_counter()
        try:
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
            failed = None
        except OOM_ERRORS as exc:
            failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        wall += time.perf_counter() - started
        eval_seconds += _eval_seconds(trainer.state.log_history, history_from)
        if failed is None:
            break
        step = int(trainer.state.global_step)
        if ranks.world().size > 1:  # halving on one rank only would leave the ranks disagreeing on the batch
            _free_memory(trainer)
            raise OutOfMemoryAtMinBatch(
                f"config '{cfg.name}': out of GPU memory on rank {ranks.world().rank} at step {step} with "
                f"{batch} rows per rank (training.batch_size={t.batch_size} over resources.gpus={cfg.resources.gpus}); "
                "batch halving is not done in distributed training. Lower training.batch_size, or set "
                f"model.gradient_checkpointing, a shorter max_length, or more GPUs. Last error: {failed}")
        _free_memory(trainer, keep_optimizer=True)
        smaller = math.ceil(batch / 2)
        if smaller < t.min_batch_size or smaller == batch:
            _free_memory(trainer)
            raise OutOfMemoryAtMinBatch(
                f"config '{cfg.name}': out of GPU memory at step {step} with a per-device batch of {batch} "
                f"(training.min_batch_size={t.min_batch_size}); per-device batch sizes tried: "
                f"{', '.join(map(str, tried))} (training.batch_size={t.batch_size}, gradient accumulation up to "
                f"{accumulation}). Use a smaller model or max_length, a card with more memory "
                f"(resources.gpu_memory_gb), or lower training.min_batch_size. Last error: {failed}")
        # Go on from the step that failed: its checkpoint (saved now if the last one is older). Before the
        # first optimizer step the weights are untouched and training simply starts over.
        resume_from = _local_checkpoint(work_dir, step) if step > 0 else None
        if step > 0 and resume_from is None:
            trainer._save_checkpoint(trainer.model, trial=None)  # model/optimizer/scheduler are at `step`
            resume_from = _local_checkpoint(work_dir, step)
        _free_memory(trainer)
        batch, accumulation = smaller, accumulation * 2
        tried.append(batch)
        adjustments.append({"step": step, "batch_size": batch, "gradient_accumulation_steps": accumulation})
        log.warning("config %s: out of GPU memory at step %d (%s); per-device batch %d -> %d, gradient accumulation "
                    "%d -> %d (effective batch %d), continuing from step %d", cfg.name, step, failed, tried[-2], batch,
                    accumulation // 2, accumulation, batch * accumulation, step)
        del trainer

    history = trainer.state.log_history
    train_seconds = max(wall - eval_seconds, 1e-9)
    epochs_completed = float(trainer.state.epoch or 0.0)
    samples = len(trainer.train_dataset) * max(epochs_completed - start_epoch, 0.0)  # after oversampling
    best = trainer.state.best_metric
    log.info("trained %d steps in %.1fs (+%.1fs validation): %.1f samples/s, best validation macro-F1 %s%s",
             output.global_step, train_seconds, eval_seconds, samples / train_seconds, best,
             f" (resumed from step {resume.step})" if resume is not None else "")
    return FitStats(
        epochs_completed=epochs_completed,
        steps=int(output.global_step),
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        train_samples_per_second=samples / train_seconds,
        best_validation_macro_f1=None if best is None else float(best),
        precision=precision,
        log_history=history,
        resumed_from_step=resume.step if resume is not None else None,
        oom_adjustments=adjustments,
        per_device_batch_size=batch,
        gradient_accumulation_steps=accumulation,
    )
