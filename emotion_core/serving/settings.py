"""Settings of ``emotion serve``: request limits, micro-batching, the explanation budget, champion reloads."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServeSettings(BaseModel):
    """What the server accepts and how it schedules work; every field has a safe default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_texts: int = Field(256, ge=1)
    """Texts per ``/predict`` request; more: 413."""
    max_chars: int = Field(10_000, ge=1)
    """Characters per text (``/predict`` and ``/explain``); longer: 413."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Request body size in bytes, checked while reading (a body is never held past this); larger: 413."""
    max_connections: int = Field(128, ge=2)
    """Connections and requests in progress at once (uvicorn's ``limit_concurrency``); over it a request gets 503."""
    max_batch_texts: int = Field(64, ge=1)
    """Texts scored in one model call, gathered across concurrent requests (one request's texts are never split)."""
    max_wait_ms: float = Field(5.0, ge=0.0, le=1000.0)
    """How long the first request of a batch waits for others to join it."""
    batch_size: int = Field(64, ge=1)
    """Texts per forward pass inside a model call."""
    explain_max_evals: int = Field(100, ge=10)
    """shap model evaluations per ``/explain`` text: its cost bound."""
    explain_top_labels: int = Field(3, ge=1)
    """Labels explained per text: the most probable ones."""
    explain_max_chars: int = Field(2_000, ge=1)
    """Characters of an ``/explain`` text; longer: 413 (explaining costs ``explain_max_evals`` model calls)."""
    explain_timeout_s: float = Field(60.0, gt=0)
    """Seconds an explanation may take, waiting included; later: 504 (the first one compiles shap's code, ~5 s)."""
    explain_queue: int = Field(4, ge=1)
    """Explanations running or waiting at once; more: 429."""
    reload_every_s: float = Field(30.0, gt=0)
    """``champion:<dataset>``: seconds between reads of the registry; a new champion is loaded, then swapped in."""
    calibration: bool = True
    """Use the run's ``calibration.json`` (as ``emotion predict``); False: raw sigmoid at ``thresholds.json``'s."""
