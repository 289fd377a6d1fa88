"""Training progress as events: ``ProgressCallback(report, monitor, min_interval_s)`` calls ``report(event)``.

    {"event": "begin" | "step" | "evaluate" | "end", "step", "max_steps", "epoch", "fraction",
     "elapsed_s", "eta_s", "loss", "learning_rate", "metrics", "device"}

Features
- ``begin``/``end`` always; ``step`` at most every ``min_interval_s``; ``evaluate`` after each validation.
- ``device``: a ``monitoring.DeviceMonitor`` sample. A ``report`` that raises is logged once, then ignored.

Limits
- ``report`` runs in the training loop: keep it quick. The ETA assumes steps of even cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from transformers import TrainerCallback

if TYPE_CHECKING:
    from emotion_core.monitoring import DeviceMonitor

log = logging.getLogger(__name__)


def _plain(value):
    """Numbers as plain float/int (metrics may hold numpy scalars), so events stay JSON-able."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class ProgressCallback(TrainerCallback):
    """Reports begin / throttled step / evaluate / end events to ``report``; see the module docstring."""

    def __init__(
        self, report: Callable[[dict], None], monitor: DeviceMonitor | None = None, min_interval_s: float = 10.0
    ) -> None:
        self.report = report
        self.monitor = monitor
        self.min_interval_s = min_interval_s
        self.started = time.monotonic()
        self.first_step = 0
        self.last_sent = float("-inf")
        self.last_step_sent = -1
        self.loss: float | None = None
        self.learning_rate: float | None = None
        self.warned = False

    def _event(self, kind: str, state, metrics: dict | None = None) -> dict:
        elapsed = time.monotonic() - self.started
        step, max_steps = int(state.global_step), int(state.max_steps or 0)
        fraction = 1.0 if kind == "end" else (min(step / max_steps, 1.0) if max_steps else 0.0)
        done = step - self.first_step
        eta = (0.0 if kind == "end" else elapsed * max(max_steps - step, 0) / done) if done > 0 else None
        device = self.monitor.snapshot() if self.monitor is not None else None
        return {
            "event": kind,
            "step": step,
            "max_steps": max_steps,
            "epoch": None if state.epoch is None else round(float(state.epoch), 4),
            "fraction": round(fraction, 4),
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "loss": self.loss,
            "learning_rate": self.learning_rate,
            "metrics": {k: _plain(v) for k, v in (metrics or {}).items()},
            "device": device,
        }

    def _send(self, kind: str, state, metrics: dict | None = None) -> None:
        self.last_sent = time.monotonic()
        if kind == "step":
            self.last_step_sent = int(state.global_step)
        try:
            self.report(self._event(kind, state, metrics))
        except Exception as exc:  # a broken progress sink must not stop training
            if not self.warned:
                self.warned = True
                log.warning("progress report failed; training goes on, further failures are not logged: %r", exc)

    def _step_due(self, state) -> bool:
        return int(state.global_step) > self.last_step_sent and time.monotonic() - self.last_sent >= self.min_interval_s

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.first_step = int(state.global_step)  # > 0 when resuming from a checkpoint
        self._send("begin", state)

    def on_step_end(self, args, state, control, **kwargs):
        # The Trainer's flow callback (which runs before this one) has decided whether this step is
        # logged; if it is, report from on_log so the event carries this step's loss.
        if not control.should_log and self._step_due(state):
            self._send("step", state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:  # evaluation logs and the final summary carry no training loss
            return
        self.loss = _plain(logs["loss"])
        self.learning_rate = _plain(logs.get("learning_rate", self.learning_rate))
        if self._step_due(state):
            self._send("step", state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._send("evaluate", state, metrics)

    def on_train_end(self, args, state, control, **kwargs):
        self._send("end", state)
