"""Stop a diverged run with a clear error instead of training on NaN weights.

``NonFiniteGuard`` (a Trainer callback, always added by ``training.fit``) judges every optimizer step by
the loss of each batch (from the loss function) and the logged loss and gradient norm; after
``max_nonfinite_steps`` consecutive bad steps it raises ``TrainingDiverged`` naming the config, the steps,
the values and the remedies. A finite step resets the count.

Limits
- ``grad_norm`` is seen on logged steps only, and not judged under fp16 (its loss scaler makes inf on purpose).
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from emotion_core.errors import TrainingDiverged

__all__ = ["NonFiniteGuard", "TrainingDiverged"]


def _finite(value) -> bool:
    return not isinstance(value, (int, float)) or math.isfinite(value)


class NonFiniteGuard(TrainerCallback):
    """``TrainingDiverged`` after ``max_nonfinite_steps`` consecutive steps with a non-finite loss or grad norm."""

    def __init__(
        self,
        max_nonfinite_steps: int,
        config_name: str = "",
        *,
        learning_rate: float | None = None,
        precision: str = "fp32",
        max_grad_norm: float | None = None,
    ) -> None:
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.limit = max_nonfinite_steps
        self.config_name = config_name
        self.learning_rate = learning_rate
        self.precision = precision
        self.max_grad_norm = max_grad_norm
        self.watch_grad_norm = precision != "fp16"
        self.streak: list[tuple[int, dict[str, float]]] = []  # the current run of bad steps
        self._losses: list[torch.Tensor] = []  # batch losses of the step in progress
        self._pending: tuple[int, dict[str, float]] | None = None  # a step whose log is still to come

    # -- the loss path ------------------------------------------------------------------------------

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Record one training batch's loss (evaluation losses, computed without gradients, are ignored)."""
        if loss.requires_grad:
            self._losses.append(loss.detach())

    # -- Trainer events -----------------------------------------------------------------------------

    def on_step_end(self, args, state, control, **kwargs):
        pending, self._pending = self._pending, None
        if pending is not None:  # its log never came: judge it on what is known
            self._judge(*pending)
        bad = {}
        if self._losses:
            values = torch.stack([v.float().reshape(()) for v in self._losses])
            self._losses.clear()
            broken = values[~torch.isfinite(values)]
            if broken.numel():  # one sync per optimizer step
                bad["loss"] = float(broken[0])
        if control.should_log:  # DefaultFlowCallback has decided: this step's log (with grad_norm) follows
            self._pending = (state.global_step, bad)
        else:
            self._judge(state.global_step, bad)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or ("loss" not in logs and "grad_norm" not in logs):
            return  # evaluation metrics or the end-of-training summary
        step, bad = state.global_step, {}
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == step:
            bad = dict(pending[1])
        elif pending is not None:
            self._judge(*pending)
        if not _finite(logs.get("loss")):
            bad.setdefault("loss", float(logs["loss"]))
        if self.watch_grad_norm and not _finite(logs.get("grad_norm")):
            bad["grad_norm"] = float(logs["grad_norm"])
        self._judge(step, bad)

    # -- verdict ------------------------------------------------------------------------------------

    def _judge(self, step: int, bad: dict[str, float]) -> None:
        if not bad:
            self.streak.clear()  # only consecutive bad steps count
            return
        self.streak.append((step, bad))
        if len(self.streak) >= self.limit:
            raise TrainingDiverged(self.message())

    def message(self) -> str:
        steps = "; ".join(
            f"step {step}: " + ", ".join(f"{k}={v}" for k, v in values.items()) for step, values in self.streak
        )
        who = f"config '{self.config_name}': " if self.config_name else ""
        clip = f" to max_grad_norm={self.max_grad_norm}" if self.max_grad_norm is not None else ""
        lr = f" (now {self.learning_rate:g})" if self.learning_rate is not None else ""
        fp32 = f"training.precision: fp32 (now {self.precision}); " if self.precision != "fp32" else ""
        return (
            f"{who}training diverged: {len(self.streak)} optimizer steps in a row had a non-finite loss or "
            f"gradient norm (training.max_nonfinite_steps={self.limit}): {steps}. Gradients are clipped{clip}, "
            f"but clipping cannot repair NaN/inf. Try: a lower training.learning_rate{lr}; {fp32}"
            "check the data for extreme or degenerate inputs (empty or very long texts, labels outside 0/1)."
        )
