"""Training checkpoints in the artefact store: one every ``training.checkpoint_every_steps``, resumed from.

    RunCheckpoints(store, run_id, fingerprint)   .restore(work_dir) / .upload(step, ...) / .delete()
    CheckpointCallback(every_steps, on_save)     the Trainer callback that saves and uploads

Features
- A checkpoint is the Trainer's own (weights, optimizer, scheduler, RNG, state) plus the best step's
  weights, under ``checkpoints/<run_id>/checkpoint-<step>/`` with its marker written last.
- The marker records the config+data fingerprint (another config's checkpoint is ignored) and the batch
  shape at that step, so a resumed run keeps the batch that fitted.
- A failed upload is logged and training goes on.

Limits
- Uploads are synchronous. Two processes training one run id upload over each other.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from emotion_core.errors import StoreError

log = logging.getLogger(__name__)

TRAINER_DIR = "trainer"
BEST_DIR = "best"
# Files of a Trainer checkpoint that only resuming needs: not kept for the best checkpoint's copy.
_RESUME_ONLY = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")


@dataclass
class ResumePoint:
    """A checkpoint restored into the work folder: ``trainer.train(resume_from_checkpoint=checkpoint)``."""

    checkpoint: Path
    step: int
    meta: dict = field(default_factory=dict)


def _link_tree(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """Hard-link (else copy) every file of ``source`` into ``target``: no second copy of big weights."""
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or rel.as_posix() in skip or (skip and rel.name.startswith("rng_state")):
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target / rel)
        except OSError:
            shutil.copy2(path, target / rel)


class RunCheckpoints:
    """The checkpoint area of ``run_id`` in ``store``; ``fingerprint`` identifies config + data."""

    def __init__(self, store, run_id: str, fingerprint: str) -> None:
        self.store = store
        self.run_id = run_id
        self.fingerprint = fingerprint
        self.uploaded: list[int] = []

    def restore(self, work_dir: Path) -> ResumePoint | None:
        """Download the run's latest complete checkpoint into ``work_dir``; ``None`` if there is none to use.

        The Trainer checkpoint lands in ``work_dir/checkpoint-<step>``, the best one's weights in
        ``work_dir/checkpoint-<best step>``; ``trainer_state.json`` is pointed at the latter.
        A store that cannot be read is logged and the run starts from step 0.
        """
        try:
            marker = self.store.latest_checkpoint(self.run_id)
        except StoreError as exc:
            log.warning("run %s: cannot read its checkpoints (%s); training starts from step 0", self.run_id, exc)
            return None
        if marker is None:
            return None
        meta, step = marker.get("meta") or {}, int(marker["step"])
        if meta.get("fingerprint") != self.fingerprint:
            log.warning(
                "run %s: the checkpoint at step %d was written for another config or data (fingerprint %s, "
                "this run %s); ignoring it, training starts from step 0",
                self.run_id,
                step,
                meta.get("fingerprint"),
                self.fingerprint,
            )
            return None
        work_dir.mkdir(parents=True, exist_ok=True)
        download = work_dir / f".download-{step}"
        shutil.rmtree(download, ignore_errors=True)
        try:
            self.store.fetch_checkpoint(self.run_id, step, download)
        except StoreError as exc:
            log.warning(
                "run %s: cannot download its checkpoint at step %d (%s); training starts from step 0",
                self.run_id,
                step,
                exc,
            )
            return None
        checkpoint = work_dir / f"checkpoint-{step}"
        shutil.rmtree(checkpoint, ignore_errors=True)
        os.replace(download / TRAINER_DIR, checkpoint)
        best_step = meta.get("best_step")
        state_file = checkpoint / "trainer_state.json"
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if (download / BEST_DIR).is_dir() and best_step is not None:
            best = work_dir / f"checkpoint-{best_step}"
            shutil.rmtree(best, ignore_errors=True)
            os.replace(download / BEST_DIR, best)
            state["best_model_checkpoint"] = str(best)
        elif best_step == step:
            state["best_model_checkpoint"] = str(checkpoint)
        else:
            state["best_model_checkpoint"] = None
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        shutil.rmtree(download, ignore_errors=True)
        log.info("run %s: resuming from its checkpoint at step %d (%s)", self.run_id, step, self.store.uri)
        return ResumePoint(checkpoint=checkpoint, step=step, meta=meta)

    def upload(self, step: int, trainer_dir: Path, best_dir: Path | None, meta: dict) -> bool:
        """Put the checkpoint of ``step`` into the store (a failure is logged, not raised); True if it landed."""
        bundle = trainer_dir.parent / f".upload-{step}"
        shutil.rmtree(bundle, ignore_errors=True)
        try:
            _link_tree(trainer_dir, bundle / TRAINER_DIR)
            if best_dir is not None and best_dir.is_dir() and best_dir.resolve() != trainer_dir.resolve():
                _link_tree(best_dir, bundle / BEST_DIR, skip=_RESUME_ONLY)
            uri = self.store.put_checkpoint(self.run_id, step, bundle, {**meta, "fingerprint": self.fingerprint})
        except (StoreError, OSError) as exc:
            log.warning("run %s: checkpoint at step %d not uploaded (%s); training goes on", self.run_id, step, exc)
            return False
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
        self.uploaded.append(step)
        log.info("run %s: checkpoint at step %d uploaded to %s", self.run_id, step, uri)
        return True

    def delete(self) -> None:
        """Remove the run's checkpoints from the store (after publishing); a failure is only logged."""
        try:
            self.store.delete_checkpoints(self.run_id)
        except StoreError as exc:
            log.warning("run %s: its checkpoints could not be deleted from %s (%s)", self.run_id, self.store.uri, exc)


class CheckpointCallback(TrainerCallback):
    """Saves a full Trainer checkpoint every ``every_steps`` optimizer steps and hands it to ``on_checkpoint``.

    ``on_checkpoint(step, trainer_dir, best_dir)`` runs after the Trainer wrote ``checkpoint-<step>``
    (and rotated old ones: the best checkpoint is still on disk). Checkpoints the Trainer saves for
    validation at other steps are not handed on.
    """

    def __init__(self, every_steps: int, on_checkpoint: Callable[[int, Path, Path | None], None]) -> None:
        self.every_steps = every_steps
        self.on_checkpoint = on_checkpoint
        self.last_step = -1

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        step = int(state.global_step)
        if not self.every_steps or step % self.every_steps or step == self.last_step:
            return
        self.last_step = step
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank's RNG state is in the checkpoint before it is uploaded
        trainer_dir = Path(args.output_dir) / f"checkpoint-{step}"
        best = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
        self.on_checkpoint(step, trainer_dir, best)
