"""Weights & Biases tracking: one W&B run per trained model and one per compared set; offline by default.

Features
- ``log_run(manifest, evaluation, config)``: the run's numbers (manifest and evaluation, nested keys joined
  with ``/``) as W&B summary; ``log_summary(table_rows, set_name)``: the comparison as a ``wandb.Table``.
- Mode (``wandb_mode``): ``$WANDB_MODE``, else ``online`` when ``$WANDB_API_KEY`` is set, else ``offline``.
- ``live_report_to()``: live training curves and system metrics through the Trainer's W&B callback when
  online (or ``$EMOTION_WANDB_LIVE=1``); project ``$WANDB_PROJECT`` (default ``emotion-pipeline``), entity
  ``$WANDB_ENTITY``.
- W&B's folders default under ``.emotion/wandb``, never the home folder.
- Never fatal: failures are one warning and ``{"status": "failed", "mode", "error"}``; the API key is
  redacted and tracebacks are not logged.

Limits
- Each call ends with ``wandb.teardown()`` (``finish`` alone lost offline records), ending any other W&B
  run of the process. Online, ``wandb.init`` waits up to 60 s. ``wandb`` is imported lazily (~1 s).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "emotion-pipeline"
LIVE_ENV = "EMOTION_WANDB_LIVE"
INIT_TIMEOUT_S = 60.0
_DIRS = {"WANDB_DIR": "", "WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data", "WANDB_CONFIG_DIR": "config"}


def wandb_mode() -> str:
    """``$WANDB_MODE`` if set, else ``online`` when ``$WANDB_API_KEY`` is set, else ``offline``."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return mode
    return "online" if os.environ.get("WANDB_API_KEY", "").strip() else "offline"


def project_name() -> str:
    """``$WANDB_PROJECT``, else ``emotion-pipeline`` (the entity comes from ``$WANDB_ENTITY``, read by wandb)."""
    return os.environ.get("WANDB_PROJECT", "").strip() or DEFAULT_PROJECT


def live_report_to() -> str | list[str]:
    """The Trainer's ``report_to``: ``["wandb"]`` for live curves and system metrics while training, else ``"none"``.

    Live when ``$EMOTION_WANDB_LIVE`` is ``1``, or when it is unset and W&B is online (offline, the curves are in the
    run's ``train_log.json`` already); never when W&B is disabled.
    """
    flag = os.environ.get(LIVE_ENV, "").strip()
    mode = wandb_mode()
    if mode == "disabled" or not (flag == "1" if flag else mode == "online"):
        return "none"
    prepare_environment()
    os.environ.setdefault("WANDB_PROJECT", DEFAULT_PROJECT)  # the Trainer's callback reads these two from here
    os.environ.setdefault("WANDB_MODE", mode)
    return ["wandb"]


def end_live_run() -> None:
    """Finish and flush the W&B run the Trainer's callback started, if any; never raises."""
    import sys

    wandb = sys.modules.get("wandb")  # not imported: no live run to end
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish()
        wandb.teardown()
    except Exception as exc:  # tracking never fails training
        log.warning("finishing the live W&B run failed: %s", redact(f"{type(exc).__name__}: {exc}"))


def default_directory() -> Path:
    return Path.cwd() / ".emotion" / "wandb"


def prepare_environment(directory: str | Path | None = None) -> dict[str, str]:
    """Point W&B's folders under ``directory`` where unset, silence it; return the folders in effect."""
    root = Path(directory) if directory is not None else default_directory()
    for var, sub in _DIRS.items():
        os.environ.setdefault(var, str(root / sub) if sub else str(root))
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return {var: os.environ[var] for var in _DIRS}


def redact(text: str) -> str:
    """``text`` with the W&B API key (from the environment) replaced by ``***``."""
    key = os.environ.get("WANDB_API_KEY", "").strip()
    if key:
        text = text.replace(key, "***")
    return re.sub(r"(api[_-]?key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+", r"\1***", text, flags=re.IGNORECASE)


def flatten(payload: Mapping[str, Any], prefix: str = "") -> dict[str, float | int | bool]:
    """Numeric and boolean leaves of a nested dict, keys joined with ``/`` (lists and text are skipped)."""
    out: dict[str, float | int | bool] = {}
    for key, value in payload.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif isinstance(value, bool) or (isinstance(value, (int, float)) and value == value):  # not NaN
            out[name] = value
        elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
            out[name] = value.item()
    return out


def _settings(wandb, mode: str):
    return wandb.Settings(
        mode=mode,
        silent=True,
        console="off",
        disable_git=True,
        save_code=False,
        disable_code=True,
        x_disable_stats=True,
        x_disable_meta=True,
        x_disable_machine_info=True,
        x_save_requirements=False,
        init_timeout=INIT_TIMEOUT_S,
    )


def _failed(what: str, mode: str, exc: BaseException) -> dict:
    error = redact(f"{type(exc).__name__}: {exc}")
    log.warning("W&B tracking of %s failed (mode %s); nothing else is affected: %s", what, mode, error)
    return {"status": "failed", "mode": mode, "error": error}


def _logged(run, mode: str) -> dict:
    run_dir = str(run.settings.sync_dir)
    out = {"status": "logged", "mode": mode, "wandb_id": run.id, "name": run.name, "run_dir": run_dir, "url": None}
    if mode == "online":
        out["url"] = run.url
    else:
        out["sync_command"] = f"wandb sync {run_dir}"
    return out


def _with_run(what: str, directory, init_kwargs: dict, body) -> dict:
    """Init a W&B run, call ``body(wandb, run)``, finish and flush; never raise (see the module docstring)."""
    mode = wandb_mode()
    if mode == "disabled":
        return {"status": "disabled", "mode": mode}
    run = wandb = None
    try:
        dirs = prepare_environment(directory)
        import wandb

        run = wandb.init(dir=dirs["WANDB_DIR"], settings=_settings(wandb, mode), reinit="create_new", **init_kwargs)
        body(wandb, run)
        result = _logged(run, mode)
        run.finish()
        run = None
        wandb.teardown()  # flush the offline file now (see Limits)
        log.info("W&B %s: %s run %s at %s", what, mode, result["wandb_id"], result["run_dir"])
        return result
    except Exception as exc:  # tracking never fails the caller
        return _failed(what, mode, exc)
    finally:
        if run is not None:
            try:
                run.finish(exit_code=1)
                wandb.teardown()
            except Exception:
                pass


def log_run(
    manifest: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    project: str | None = None,
    directory: str | Path | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
) -> dict:
    """Log one trained run (its manifest, evaluation metrics and config) as a W&B run.

    ``config``: the W&B config (default: the manifest's ``config``). ``evaluation``: any nested metrics
    dict (``metrics.json``, an analysis entry); its numbers become summary keys. Returns
    ``{"status": "logged", "mode", "wandb_id", "name", "run_dir", "url", "sync_command" (offline),
    "summary_keys"}``, ``{"status": "failed", "mode", "error"}`` or ``{"status": "disabled", "mode"}``.
    """
    run_id = str(manifest.get("run_id", "run"))
    facts = {key: manifest.get(key) or {} for key in ("timing", "parameters", "memory")}
    summary = {f"run/{k}": v for k, v in flatten(facts).items()}
    summary.update(flatten(manifest.get("summary") or {}, "manifest"))
    summary.update(flatten(evaluation or {}))
    kwargs = {
        "project": project or project_name(),
        "name": run_id,
        "group": group,
        "job_type": "train",
        "config": dict(config if config is not None else manifest.get("config") or {}),
        "tags": [str(t) for t in (*tags, manifest.get("family"), (manifest.get("data") or {}).get("dataset")) if t],
        "notes": f"run {run_id} ({manifest.get('model', '')})",
    }

    def body(wandb, run) -> None:
        run.summary.update(summary)

    result = _with_run(f"run {run_id}", directory, kwargs, body)
    if result["status"] == "logged":
        result["summary_keys"] = len(summary)
    return result


def format_cell(value: Any) -> Any:
    # wandb.Table columns hold scalars; lists and dicts (flags, per-label numbers) go in as JSON text.
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return json.dumps(value, default=str)


def table_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows, in order of first appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(map(str, row)))
    return list(columns)


def log_summary(
    table_rows: Sequence[Mapping[str, Any]],
    set_name: str,
    *,
    project: str | None = None,
    directory: str | Path | None = None,
    columns: Sequence[str] | None = None,
) -> dict:
    """Log a config set's comparison (one row per model) as a ``wandb.Table`` named ``comparison``.

    Returns ``log_run``'s dict with ``rows`` and ``columns`` instead of ``summary_keys``.
    """
    rows = list(table_rows)
    names = list(columns) if columns is not None else table_columns(rows)
    kwargs = {
        "project": project or project_name(),
        "name": f"{set_name}-summary",
        "group": set_name,
        "job_type": "summary",
        "config": {"set": set_name, "models": len(rows)},
    }

    def body(wandb, run) -> None:
        table = wandb.Table(columns=names, data=[[format_cell(row.get(c)) for c in names] for row in rows])
        run.log({"comparison": table})
        run.summary.update({"models": len(rows)})

    result = _with_run(f"summary of {set_name}", directory, kwargs, body)
    if result["status"] == "logged":
        result.update(rows=len(rows), columns=names)
    return result
