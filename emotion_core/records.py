"""Typed records passed between the steps of ``train-all``: a child's outcome and a model's report entry.

Both are frozen dataclasses; ``to_dict``/``from_dict`` give the plain-dict form that crosses Prefect
(task parameters and results, table artifacts) and that the report writes as JSON. ``to_dict`` leaves
out the keys that do not apply (a failed entry has no metrics; a local child has no flow run), so the
dicts keep the shape the report, the artifacts and the tests read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["ChildOutcome", "ReportEntry"]


@dataclass(frozen=True)
class ChildOutcome:
    """How the ``train-model`` child of one config ended, as the parent ``train-all`` saw it."""

    config: str
    """Config name (``RunConfig.name``)."""
    run_id: str
    """The run id the parent assigned; the run is found in the store under it."""
    state: str
    """Final Prefect state type of the child's (last) flow run: ``COMPLETED``, ``FAILED``, ``CRASHED``, ..."""
    error: str | None = None
    """Why the config failed; ``None`` when it completed. A failed outcome is a failed row of the report."""
    flow_run_id: str | None = None
    """Deployment dispatch only (``None``: the child ran in-process): the child's last flow run."""
    queue: str | None = None
    """Deployment dispatch only: the work queue the child was placed on."""
    attempts: int | None = None
    """Deployment dispatch only: flow runs started for this config (crashed ones are re-dispatched)."""
    earlier_attempts: str = ""
    """Deployment dispatch only: ``<flow run id> <state>: <message>`` of each earlier attempt, ``; ``-joined."""
    dispatch_s: float | None = None
    """Deployment dispatch only: seconds from creating the last flow run to its start."""
    run_s: float | None = None
    """Deployment dispatch only: seconds the last flow run ran."""

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        """``{config, run_id, [flow_run_id, queue,] state, [attempts, earlier_attempts, dispatch_s, run_s,]
        [status: "failed", error]}``: the children table and the ``compare-runs`` parameter."""
        out: dict[str, Any] = {"config": self.config, "run_id": self.run_id}
        deployed = self.flow_run_id is not None
        if deployed:
            out |= {"flow_run_id": self.flow_run_id, "queue": self.queue}
        out["state"] = self.state
        if deployed:
            out |= {
                "attempts": self.attempts,
                "earlier_attempts": self.earlier_attempts,
                "dispatch_s": self.dispatch_s,
                "run_s": self.run_s,
            }
        if self.failed:
            out |= {"status": "failed", "error": self.error}
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ChildOutcome:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in payload.items() if k in known}
        if payload.get("status") == "failed":
            values["error"] = payload.get("error") or "unknown error"
        return cls(**values)


_FAILED_KEYS = ("name", "status", "error", "run_id")
_RUN_ONLY = ("dataset_key",)
_ENSEMBLE_ONLY = ("members", "rows", "ensemble")


@dataclass(frozen=True)
class ReportEntry:
    """One model of a compared set: a trained run, the ensemble, or a config that failed.

    ``test`` and ``calibration`` are the dicts of ``evaluation.evaluate_split`` and
    ``calibration.calibrate_run``; ``report.summary`` turns entries into the summary table.
    """

    name: str
    """Config name, or ``ensemble-top<k>``."""
    status: str
    """``completed`` or ``failed``."""
    error: str | None = None
    """Why it failed (``None`` when completed)."""
    family: str | None = None
    """Model family (``ffnn``, ``encoder``, ...; ``ensemble``)."""
    method: str | None = None
    """``full``, ``lora``, ``qlora``, ``ia3``, ``prompted`` or ``ensemble``."""
    model: str | None = None
    """Base model (for the ensemble: its members joined with `` + ``)."""
    run_id: str | None = None
    """The run's id in the store (the ensemble: its published package, if any; ``None`` for a config that never
    produced a run)."""
    trainable_params: int | None = None
    """Trained parameters (the ensemble: its members' sum)."""
    total_params: int | None = None
    """All parameters (the ensemble: its members' sum)."""
    train_seconds: float | None = None
    """Training wall time (the ensemble: its members' sum)."""
    train_samples_per_s: float | None = None
    """Training throughput."""
    devices: int | None = None
    """Devices (ranks) that trained it: training cost = ``train_seconds`` x ``devices``."""
    inference_ms_per_text: float | None = None
    """Batched inference time per text, measured when the run predicted validation and test (older runs: None)."""
    peak_memory_mb: float | None = None
    """Peak GPU memory allocated, else peak RSS, of training."""
    validation_macro_f1: float | None = None
    """Validation macro-F1 at the run's thresholds (reported for every dataset)."""
    threshold_policy: str | None = None
    """The run's threshold policy (``thresholds.POLICIES``)."""
    metric: str | None = None
    """The dataset's official metric (``data.registry.official_metric``): what ranks the models."""
    validation_score: float | None = None
    """Validation ``metric`` at the run's thresholds: what ranks the models (test is only reported)."""
    validation_held_out: float | None = None
    """Validation ``metric`` on held-out folds, each at thresholds tuned on the others (the ensemble: out of fold):
    what test is likely to show; the in-sample score above overstates it. Runs from before it was recorded: None."""
    dataset_key: str | None = None
    """``registry.dataset_key`` of its data (which champion a run challenges; the ensemble: its members')."""
    members: list[str] | None = None
    """Ensemble only: the member configs, best first."""
    rows: dict[str, int] | None = None
    """Ensemble only: validation/test rows its members share."""
    ensemble: dict | None = None
    """Ensemble only: ``ensemble.CrossFit.summary()`` (method, out-of-fold scores, weights, ``eligible``) and the
    members left out with why (``excluded``)."""
    test: dict | None = None
    """``evaluate_split`` on test at the model's thresholds (CIs, PR/ROC-AUC, Brier, ECE); ``None``: no test split."""
    calibration: dict | None = None
    """``calibrate_run``: per-label temperatures, re-tuned thresholds, ECE and reliability before/after."""
    paired_vs_best: dict | None = None
    """Paired bootstrap of test macro-F1 against the best model (``None`` for the best one itself)."""
    explanation: dict | None = None
    """The ``explain-run`` result (SHAP files), ``{"error"}`` if it failed, ``None`` if skipped."""
    files: dict[str, str] = field(default_factory=dict)
    """Files of this model under the report folder: ``evaluation``, ``calibration``, ``reliability``."""
    evaluated_in: str | None = None
    """Where its evaluation, calibration and explanation ran: ``child`` (the ``train-model`` flow run that trained
    it, read back from the store) or ``parent`` (``train-all`` itself: an older run, or the child's results were
    missing or unusable); ``None`` for the ensemble."""

    @classmethod
    def failure(cls, name: str, error: str, run_id: str | None = None) -> ReportEntry:
        """A config that failed: it stays a row of the report, with its error."""
        return cls(name=name, status="failed", error=error, run_id=run_id)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        """The report's model entry: a failed one has ``name, status, error, run_id`` only; the
        ``dataset_key`` is a run's, ``members`` and ``rows`` are the ensemble's."""
        values = asdict(self)
        if not self.completed:
            return {k: values[k] for k in _FAILED_KEYS}
        skip = _RUN_ONLY if self.family == "ensemble" else _ENSEMBLE_ONLY
        return {k: v for k, v in values.items() if k not in skip}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ReportEntry:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known and v is not None})
