"""Fit a model family with the Hugging Face ``Trainer``.

Features
- BCE-with-logits (computed in the model's ``forward``), dynamic padding (the family's collator),
  seeded initialisation and batch order.
- Fused AdamW with per-group learning rates (pretrained body vs new head; no decay on biases and
  norms), linear warm-up then linear decay.
- Length-grouped batches when the family's items carry token lengths (~1.8x faster on CPU here).
- Validation macro-F1 (at thresholds tuned on validation) ``evaluations_per_epoch`` times an epoch;
  the best checkpoint is restored at the end; early stopping on it.
- bf16 autocast on GPUs that support it, else fp16 on GPU; fp32 on CPU (this CPU emulates bf16 at
  ~50x the cost).
- Returns throughput that excludes evaluation time, so samples/s measures training alone.

Limits
- Single device (one GPU or the CPU); multi-GPU would go through ``accelerate launch``.
- Checkpoints are model-only and temporary (resume from checkpoints is not wired yet).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from emotion_core.config import RunConfig
from emotion_core.metrics import multilabel_metrics, sigmoid
from emotion_core.models.family import Family
from emotion_core.thresholds import apply_thresholds, tune_thresholds

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


def build_trainer(cfg: RunConfig, family: Family, train_dataset, validation_dataset, work_dir: Path,
                  progress: Callable[[dict], None] | None = None, monitor=None):
    """The configured ``transformers.Trainer`` for ``family`` and the precision it trains in.

    ``progress`` (optional) receives progress events (see ``training.progress``) with samples of
    ``monitor`` (a ``monitoring.DeviceMonitor``) attached.
    """
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    t = cfg.training
    set_seed(t.seed)
    precision = resolve_precision(t.precision)
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
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        lr_scheduler_type="linear",
        warmup_steps=t.warmup_ratio,  # a float < 1 is a share of the total steps
        max_grad_norm=t.max_grad_norm,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,
        save_only_model=True,
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
    )
    # Fused AdamW (CPU and CUDA): the optimizer step drops from ~150 ms to ~30 ms for MiniLM on 2 cores.
    optimizer = torch.optim.AdamW(family.param_groups(t), fused=True)
    callbacks = [EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience)] if t.early_stopping_patience else []
    if progress is not None:
        from emotion_core.training.progress import ProgressCallback  # imports transformers: keep it lazy

        callbacks.append(ProgressCallback(progress, monitor=monitor))
    trainer = Trainer(
        model=family.model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        data_collator=family.collate,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        optimizers=(optimizer, None),  # the Trainer builds the linear warm-up/decay schedule on it
    )
    return trainer, precision


def fit(cfg: RunConfig, family: Family, train_dataset, validation_dataset, work_dir: Path,
        progress: Callable[[dict], None] | None = None, monitor=None) -> FitStats:
    """Train ``family.model`` in place (it ends holding the best validation checkpoint)."""
    trainer, precision = build_trainer(cfg, family, train_dataset, validation_dataset, work_dir, progress, monitor)
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    history = trainer.state.log_history
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in history)
    train_seconds = max(wall - eval_seconds, 1e-9)
    epochs_completed = float(trainer.state.epoch or 0.0)
    samples = len(train_dataset) * epochs_completed
    best = trainer.state.best_metric
    log.info("trained %d steps in %.1fs (+%.1fs validation): %.1f samples/s, best validation macro-F1 %s",
             output.global_step, train_seconds, eval_seconds, samples / train_seconds, best)
    return FitStats(
        epochs_completed=epochs_completed,
        steps=int(output.global_step),
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        train_samples_per_second=samples / train_seconds,
        best_validation_macro_f1=None if best is None else float(best),
        precision=precision,
        log_history=history,
    )
