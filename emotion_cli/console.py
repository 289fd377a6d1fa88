"""What every ``emotion`` command shares: the consoles, and user errors printed as one line (exit 2)."""

from __future__ import annotations

import typer
from rich.console import Console

err = Console(stderr=True)
out = Console()


def fail(exc: Exception) -> None:
    """Print ``exc`` as one red line and exit: 1 for a run that failed (``RunFailed``), else 2."""
    from rich.markup import escape

    from emotion_core.errors import RunFailed

    # Escaped: messages hold brackets (``s3://<bucket>[/<prefix>]``, lists) that are not markup.
    err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1 if isinstance(exc, RunFailed) else 2)


def run_or_exit(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; an ``EmotionError`` is printed by ``fail``, without a traceback."""
    import flows  # noqa: F401  (sets Prefect's environment defaults first)
    from emotion_core.errors import EmotionError

    try:
        return fn(*args, **kwargs)
    except EmotionError as exc:
        fail(exc)
