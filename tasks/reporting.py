"""Task: build the comparison of a config set's runs and publish it (store files + Prefect artifacts)."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from emotion_core.report import comparison_table, to_markdown, write_comparison
from emotion_core.runs import read_run
from tasks.storage import open_task_store


@task(name="compare-runs")
def compare_runs(set_name: str, outcomes: list[dict], store_uri: str) -> dict:
    """``outcomes``: ``{"config", "run_uri"}`` or ``{"config", "status": "failed", "error"}``, one per config."""
    logger = get_run_logger()
    store = open_task_store(store_uri)
    entries = []
    for outcome in outcomes:
        if outcome.get("run_uri"):
            run_id = outcome["run_uri"].rstrip("/").rsplit("/", 1)[1]
            entries.append({"config": outcome["config"], "manifest": read_run(store.run_folder(run_id)).manifest})
        else:
            entries.append(outcome)
    frame = comparison_table(entries)
    name = f"{set_name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    staging = store.staging(name)
    paths = write_comparison(frame, staging, f"Comparison: {set_name}")
    report_uri = store.publish_report(staging, name)
    markdown = to_markdown(frame)
    key = "".join(c if c.isalnum() else "-" for c in set_name.lower())
    create_markdown_artifact(key=f"comparison-{key}", markdown=f"# {set_name}\n\n{markdown}", description=f"train-all {set_name}")
    create_table_artifact(key=f"comparison-table-{key}", table=frame.drop("error").to_dicts(), description=f"train-all {set_name}")
    logger.info("comparison of %s:\n%s", set_name, markdown)
    return {"report": report_uri, "markdown": f"{report_uri}/{paths['markdown'].name}",
            "csv": f"{report_uri}/{paths['csv'].name}", "table": markdown}
