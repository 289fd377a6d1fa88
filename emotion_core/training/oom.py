"""GPU out-of-memory during ``fit``: halve the per-device batch, double gradient accumulation, go on.

An optimizer step still sees ``training.batch_size`` rows (the loss divides by ``num_items_in_batch``), and
training continues from the step that failed (a checkpoint of that step is saved first; before the first
optimizer step it starts over). At ``training.min_batch_size``, or under torchrun (the ranks would disagree
on the batch), it stops with ``OutOfMemoryAtMinBatch`` saying what to change.

Limits: only ``torch.OutOfMemoryError`` counts (a cuBLAS ``RuntimeError`` fails the run as before); an odd
batch halves to ``ceil(b / 2)``; an OOM in a validation pass also halves the training batch.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emotion_core.config import RunConfig
from emotion_core.errors import OutOfMemoryAtMinBatch
from emotion_core.training import ranks

# torch.cuda.OutOfMemoryError is torch.OutOfMemoryError since torch 2.5; both named for older builds.
OOM_ERRORS = tuple({getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError})


@dataclass
class BatchShape:
    """Per-device batch x gradient accumulation of a fit, and every change an out-of-memory error made."""

    batch: int
    accumulation: int = 1
    adjustments: list[dict] = field(default_factory=list)  # [{step, batch_size, gradient_accumulation_steps}]
    tried: list[int] = field(default_factory=list)  # per-device batch sizes, in order

    @classmethod
    def start(cls, cfg: RunConfig, meta: dict) -> BatchShape:
        """``training.batch_size`` split over the ranks, or the shape a resumed checkpoint (``meta``) had."""
        batch = int(meta.get("per_device_batch_size") or ranks.per_device_batch(cfg))
        return cls(
            batch, int(meta.get("gradient_accumulation_steps") or 1), list(meta.get("oom_adjustments") or []), [batch]
        )

    def halve(self, cfg: RunConfig, step: int, error: str) -> None:
        """Half the batch, twice the accumulation; ``OutOfMemoryAtMinBatch`` when that is not possible."""
        t = cfg.training
        if ranks.world().size > 1:  # halving on one rank only would leave the ranks disagreeing on the batch
            raise OutOfMemoryAtMinBatch(
                f"config '{cfg.name}': out of GPU memory on rank {ranks.world().rank} at step {step} with "
                f"{self.batch} rows per rank (training.batch_size={t.batch_size} over resources.gpus="
                f"{cfg.resources.gpus}); batch halving is not done in distributed training. Lower "
                "training.batch_size, or set model.gradient_checkpointing, a shorter max_length, or more GPUs. "
                f"Last error: {error}"
            )
        smaller = math.ceil(self.batch / 2)
        if smaller < t.min_batch_size or smaller == self.batch:
            raise OutOfMemoryAtMinBatch(
                f"config '{cfg.name}': out of GPU memory at step {step} with a per-device batch of {self.batch} "
                f"(training.min_batch_size={t.min_batch_size}); per-device batch sizes tried: "
                f"{', '.join(map(str, self.tried))} (training.batch_size={t.batch_size}, gradient accumulation up to "
                f"{self.accumulation}). Use a smaller model or max_length, a card with more memory "
                f"(resources.gpu_memory_gb), or lower training.min_batch_size. Last error: {error}"
            )
        self.batch, self.accumulation = smaller, self.accumulation * 2
        self.tried.append(self.batch)
        self.adjustments.append(
            {"step": step, "batch_size": self.batch, "gradient_accumulation_steps": self.accumulation}
        )


def free_memory(trainer, keep_optimizer: bool = False) -> None:
    """Free what a failed attempt holds on the device (gradients; the optimizer state unless kept), then the cache."""
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


def local_checkpoint(work_dir: Path, step: int) -> Path | None:
    """``work_dir/checkpoint-<step>`` if it is a full checkpoint (with optimizer state)."""
    folder = work_dir / f"checkpoint-{step}"
    return folder if (folder / "trainer_state.json").is_file() and (folder / "optimizer.pt").is_file() else None


def checkpoint_of_failed_step(trainer, work_dir: Path, step: int) -> Path | None:
    """Where to go on from after an OOM at ``step``: its checkpoint, saved now if the last one is older.

    Before the first optimizer step (``step`` 0) the weights are untouched: ``None``, training starts over.
    """
    if step == 0:
        return None
    if local_checkpoint(work_dir, step) is None:
        trainer._save_checkpoint(trainer.model, trial=None)  # model/optimizer/scheduler are at `step`
    return local_checkpoint(work_dir, step)
