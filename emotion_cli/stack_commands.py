"""``emotion stack up | down``, ``emotion demo`` and ``emotion pools``: the local Prefect stack and the work pools."""

from __future__ import annotations

from pathlib import Path

import typer

from emotion_cli.console import out, run_or_exit

stack_app = typer.Typer(
    no_args_is_help=True, help="The embedded default: local Prefect server, pools, workers, deployments."
)
PORT_HELP = "Port of the local Prefect server and UI (127.0.0.1)."
DATABASE_HELP = (
    "Database of the Prefect server, e.g. postgresql+asyncpg://prefect@127.0.0.1:5432/prefect "
    "(password: ~/.pgpass or this variable, never the command line); default SQLite."
)

CODE_STORE_HELP = (
    "s3://bucket/prefix: deploy deployments/fleet/prefect.yaml, pushing the code under prefix/<code version>; "
    "workers pull it into a fresh folder (no checkout, no shared disk). Default: workers run this checkout."
)


def _database_option():
    return typer.Option(
        None,
        "--database",
        envvar="PREFECT_SERVER_DATABASE_CONNECTION_URL",
        show_envvar=True,
        show_default=False,
        help=DATABASE_HELP,
    )


def _code_store_option():
    return typer.Option(
        None,
        "--code-store",
        envvar="EMOTION_CODE_STORE",
        show_envvar=True,
        show_default=False,
        help=CODE_STORE_HELP,
    )


def _start_stack(port: int, cpu_workers: int, database: str | None, code_store: str | None = None):
    """``emotion stack up``'s work, shared with ``emotion demo``: the stack, started, its lines printed."""
    from emotion_cli.stack import Stack

    stack = run_or_exit(Stack, port=port, cpu_workers=cpu_workers, database=database, code_store=code_store)
    for line in run_or_exit(stack.up):
        out.print(line, highlight=False, soft_wrap=True)
    return stack


@stack_app.command("up")
def stack_up(
    port: int = typer.Option(4200, help=PORT_HELP),
    cpu_workers: int = typer.Option(1, min=1, help="gpu-pool workers on a machine without GPUs."),
    database: str | None = _database_option(),
    code_store: str | None = _code_store_option(),
) -> None:
    """Start the local server, pools, workers and deployments (reuses what already runs)."""
    _start_stack(port, cpu_workers, database, code_store)
    out.print("stop it with: emotion stack down  (or: make stop)", highlight=False)


@stack_app.command("down")
def stack_down(port: int = typer.Option(4200, help=PORT_HELP)) -> None:
    """Stop the workers and the server that `stack up` started."""
    from emotion_cli.stack import Stack

    stopped = run_or_exit(Stack(port=port).down)
    out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"), highlight=False)


def demo(
    config_set: Path = typer.Argument(Path("deployments/sets/cpu-demo.yaml"), help="Config set to run."),
    port: int = typer.Option(4200, help=PORT_HELP),
    cpu_workers: int = typer.Option(1, min=1, help="gpu-pool workers on a machine without GPUs."),
    database: str | None = _database_option(),
    code_store: str | None = _code_store_option(),
) -> None:
    """The main job: stack up, run train-all/nightly on a config set, wait, print the summary and UI URL."""
    from emotion_cli.stack import latest_artifact, trigger

    stack = _start_stack(port, cpu_workers, database, code_store)
    run_or_exit(stack.wait_for_workers, {"orchestration": 1, "gpu": 1})
    from emotion_core.config import load_config_set

    spec, _ = run_or_exit(load_config_set, config_set)
    out.print(f"running train-all/nightly on {config_set} ...", highlight=False)
    run = run_or_exit(trigger, stack, "train-all/nightly", {"config_set": str(config_set.resolve())}, timeout_s=0)
    run = run_or_exit(stack.run_with_api, _watch_progress, run.id)
    from tasks.artifacts import artifact_key

    artifact = run_or_exit(latest_artifact, stack, f"comparison-{artifact_key(spec.name)}", run.id)
    if artifact is not None:
        out.print(artifact.data, highlight=False, soft_wrap=True)
    out.print(
        f"train-all/nightly: {run.state.name} ({run.state.message or ''})".rstrip(" ()"),
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"flow run in the UI: {stack.ui_url}/runs/flow-run/{run.id}", highlight=False)
    out.print(f"Prefect UI: {stack.ui_url}   stop everything: emotion stack down  (or: make stop)", highlight=False)
    if not run.state.is_completed():
        raise typer.Exit(1)


def _watch_progress(flow_run_id):
    """One line per config (state, step/total, validation macro-F1, ETA) until the flow run is final."""
    from prefect import get_client

    from emotion_cli.progress import watch

    with get_client(sync_client=True) as client:
        return watch(client, flow_run_id, out)


def pools() -> None:
    """Create or update the work pools and queues of deployments/pools/pools.yaml on $PREFECT_API_URL."""
    from emotion_cli.pools import apply_pools

    for line in run_or_exit(apply_pools):
        out.print(line, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``demo``, ``pools`` and the ``stack`` group to ``app``."""
    app.command()(demo)
    app.command()(pools)
    app.add_typer(stack_app, name="stack")
