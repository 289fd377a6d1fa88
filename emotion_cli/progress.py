"""Live progress of a train-all flow run: one line per config, read from the Prefect API while it runs.

- Children are the parent's subflow runs (``train-model-<config>``); each line shows the child's state and
  the description of its latest progress artifact (step/total, epoch, loss, validation macro-F1, ETA), which
  the children already publish (``tasks.training.ProgressReporter``).
- On a terminal the table is redrawn in place (rich ``Live``); elsewhere (CI logs, pipes) a line is printed
  only when a config's line changes, so a log stays short.
- Read-only and best effort: an API error skips one refresh, it never stops the run or the wait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table

CHILD_PREFIX = "train-model-"


@dataclass(frozen=True)
class ConfigLine:
    """What the user sees for one config."""

    config: str
    """Config name (the child's flow-run name without ``train-model-``)."""
    state: str
    """The child's Prefect state name (Scheduled, Running, Completed, Failed...)."""
    progress: str
    """Latest progress line of the child (step/total, validation macro-F1, ETA), or empty before the first."""

    def text(self) -> str:
        return f"{self.config:<28} {self.state:<10} {self.progress}".rstrip()


def read_lines(client, parent_id) -> list[ConfigLine]:
    """One ``ConfigLine`` per child flow run of ``parent_id``, sorted by config name."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
    )
    latest = {}
    if children:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[c.id for c in children]),
                type=ArtifactFilterType(any_=["progress"]),
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
        for artifact in artifacts:
            latest.setdefault(artifact.flow_run_id, artifact.description or "")
    lines = []
    for child in children:
        config = child.name.removeprefix(CHILD_PREFIX)
        progress = latest.get(child.id, "").removeprefix(f"{config}: ")
        lines.append(ConfigLine(config, child.state.name if child.state else "?", progress))
    return sorted(lines, key=lambda line: line.config)


def _table(parent_state: str, lines: list[ConfigLine], started: float) -> Table:
    table = Table(title=f"train-all: {parent_state}, {time.monotonic() - started:.0f} s", title_justify="left")
    for column in ("config", "state", "progress"):
        table.add_column(column)
    for line in lines:
        table.add_row(line.config, line.state, line.progress)
    return table


def watch(client, parent_id, console: Console, poll_s: float = 2.0, timeout_s: float | None = None):
    """Show the children's progress until the parent flow run is final; returns the final flow run."""
    started = time.monotonic()
    printed: dict[str, str] = {}
    live = Live(console=console, refresh_per_second=1, transient=False) if console.is_terminal else None
    if live:
        live.start()
    try:
        while True:
            parent = client.read_flow_run(parent_id)
            try:
                lines = read_lines(client, parent_id)
            except Exception:  # the display is best effort; the next poll tries again
                lines = []
            if live:
                live.update(_table(parent.state.name, lines, started))
            else:
                for line in lines:
                    if printed.get(line.config) != line.text():
                        printed[line.config] = line.text()
                        console.print(line.text(), highlight=False, soft_wrap=True)
            if parent.state.is_final():
                return parent
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                return parent
            time.sleep(poll_s)
    finally:
        if live:
            live.stop()
