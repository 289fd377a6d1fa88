"""Rank helpers for training on several ranks under torchrun; one process is a world of one.

    world() / is_main() / barrier() / broadcast() / gather() / main_first()   who am I, collectives
    check(cfg) / per_device_batch(cfg) / trainer_arguments(cfg)               what this world trains, and how
    device_map() / device_index()                                             this rank's card

- The global batch is ``training.batch_size``: each rank takes ``batch_size / N`` rows a step (a batch
  that does not divide is refused).
- Collective timeout: ``EMOTION_DDP_TIMEOUT_S`` (default 300 s).
- Test-only fault hook: ``EMOTION_FAULT_KILL_RANK_AT_STEP=<rank>:<step>`` makes that rank ``os._exit(1)``
  at the end of that optimizer step.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from emotion_core.errors import ConfigError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "EMOTION_DDP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300
FAULT_ENV = "EMOTION_FAULT_KILL_RANK_AT_STEP"  # test-only: "<rank>:<step>"


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int


def world() -> World:
    """This process's rank, local rank and the world size, from torchrun's environment (0, 0, 1 without it)."""
    return World(
        int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    )


def is_main() -> bool:
    return world().rank == 0


def collective_timeout_s() -> int:
    """Seconds a collective may wait for a peer (``EMOTION_DDP_TIMEOUT_S``, default 300)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = int(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a whole number of seconds") from None
    if value < 1:
        raise ConfigError(f"{TIMEOUT_ENV}={value} must be at least 1 second")
    return value


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_process_group() -> str:
    """Join the ranks (NCCL on GPUs, gloo on CPU) with the collective timeout; returns the backend."""
    w = world()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(w.local_rank)
    torch.distributed.init_process_group(backend, timeout=timedelta(seconds=collective_timeout_s()))
    return backend


def barrier() -> None:
    if initialized():
        torch.distributed.barrier()


def broadcast(value):
    """Rank 0's ``value`` on every rank (``value`` itself without a process group)."""
    if not initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list | None:
    """Every rank's ``value`` in rank order on rank 0, ``None`` on the others (``[value]`` without a group)."""
    if not initialized():
        return [value]
    out = [None] * torch.distributed.get_world_size() if is_main() else None
    torch.distributed.gather_object(value, out, dst=0)
    return out


@contextmanager
def main_first():
    """Rank 0 runs the block first (downloads, caches), the others after it: no two ranks fill a cache at once."""
    main = is_main()
    if not main:
        barrier()
    yield
    if main:
        barrier()


def device_map() -> dict[str, int] | None:
    """Where a 4-bit (QLoRA) model is loaded: this rank's own GPU under torchrun, else ``None`` (the default)."""
    w = world()
    if w.size > 1 and torch.cuda.is_available():
        return {"": w.local_rank}
    return None


def device_index() -> int | None:
    """This rank's CUDA device under torchrun (its local rank), else ``None`` (the current device)."""
    w = world()
    return w.local_rank if w.size > 1 and torch.cuda.is_available() else None


def check(cfg) -> None:
    """Refuse what this process cannot train: several GPUs without torchrun, an unsplittable batch, FSDP on CPU."""
    gpus, w, name = cfg.resources.gpus, world(), cfg.name
    if gpus > 1 and w.size == 1:
        raise ConfigError(
            f"config '{name}': resources.gpus={gpus} needs {gpus} ranks started by torchrun (the train-model flow "
            f"does it; by hand: torchrun --nproc_per_node {gpus} -m emotion_core.training.distributed --config ... "
            "--store ...); this is one process, and DataParallel is not supported"
        )
    if w.size > 1 and w.size != gpus:
        raise ConfigError(f"config '{name}': started with {w.size} ranks but resources.gpus={gpus}")
    if gpus > 1:
        check_batch(cfg)
        check_strategy(cfg)


def check_batch(cfg) -> None:
    gpus, batch = cfg.resources.gpus, cfg.training.batch_size
    if batch % gpus:
        raise ConfigError(
            f"config '{cfg.name}': training.batch_size={batch} is the global batch and must divide by "
            f"resources.gpus={gpus} (each rank takes batch_size / gpus rows a step); use e.g. "
            f"{max(gpus, batch - batch % gpus)}"
        )


def check_strategy(cfg) -> None:
    if cfg.resources.strategy != "fsdp":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"config '{cfg.name}': resources.strategy=fsdp needs CUDA GPUs; on CPU use resources.strategy: ddp"
        )
    adapter = getattr(cfg.model, "adapter", None)
    if adapter is not None and adapter.method == "qlora":
        raise ConfigError(
            f"config '{cfg.name}': resources.strategy=fsdp does not shard 4-bit (QLoRA) weights here; "
            "use resources.strategy: ddp (each rank holds the 4-bit model on its own card)"
        )


def per_device_batch(cfg) -> int:
    """Rows each rank takes a step: the global ``training.batch_size`` split over the ranks."""
    return cfg.training.batch_size // max(world().size, 1)


def trainer_arguments(cfg) -> dict:
    """Extra ``TrainingArguments`` for this world: collective timeout, and FSDP when asked for."""
    if world().size == 1:
        return {}
    cuda = torch.cuda.is_available()
    # use_cpu on CPU: without it accelerate sees no distributed setup (DistributedType.NO), does not wrap the
    # model in DDP and does not sum the label counts across ranks: each rank would train alone.
    extra = {"ddp_timeout": collective_timeout_s(), "ddp_backend": "nccl" if cuda else "gloo", "use_cpu": not cuda}
    if cfg.resources.strategy == "fsdp":
        extra.update(fsdp="full_shard auto_wrap", fsdp_config={"use_orig_params": True})
    return extra


def rank_usage(device_usage: dict, peak_memory: dict) -> dict:
    """What the manifest records per rank: rank, device, its monitor summary and peak memory."""
    w = world()
    device = f"cuda:{w.local_rank}" if torch.cuda.is_available() else "cpu"
    return {
        "rank": w.rank,
        "local_rank": w.local_rank,
        "device": device,
        "device_usage": device_usage,
        "memory": peak_memory,
    }


def manifest_entry(cfg, ranks: list[dict] | None) -> dict:
    """The manifest's ``distributed`` entry: world size, strategy, backend, batch split and per-rank device usage."""
    size = world().size
    backend = torch.distributed.get_backend() if initialized() else None
    return {
        "world_size": size,
        "strategy": cfg.resources.strategy if size > 1 else None,
        "backend": backend,
        "global_batch_size": cfg.training.batch_size,
        "per_rank_batch_size": per_device_batch(cfg),
        "ranks": ranks or [],
    }


class NoCheckpoints:
    """Store checkpoints on ranks other than 0: they save with rank 0 (same steps) but upload and restore nothing."""

    uploaded: tuple[int, ...] = ()

    def restore(self, work_dir: Path):
        return None

    def upload(self, *args, **kwargs) -> bool:
        return False

    def delete(self) -> None:
        pass


def fault_callbacks() -> list:
    """The test-only fault hook (``EMOTION_FAULT_KILL_RANK_AT_STEP``) as a Trainer callback, if set for this rank."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return []
    rank, _, step = spec.partition(":")
    if int(rank) != world().rank:
        return []
    from transformers import TrainerCallback

    class KillAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(step):
                log.error("%s: rank %s exits at step %s (test-only fault injection)", FAULT_ENV, rank, step)
                os._exit(1)

    return [KillAtStep()]
