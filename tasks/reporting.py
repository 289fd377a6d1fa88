"""Task: build the comparison of a config set's runs and publish it (store files + Prefect artifacts)."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from emotion_core.errors import EmotionError
from emotion_core.report import comparison_table, to_markdown, write_comparison
from emotion_core.runs import read_run
from tasks.storage import open_task_store
from tasks.training import slug


@task(name="compare-runs")
def compare_runs(set_name: str, outcomes: list[dict], store_uri: str) -> dict:
    """``outcomes``: ``{"config", "run_id"}`` or ``{"config", "status": "failed", "error"}``, one per config.

    A completed child whose run is missing from the store is reported as failed, never dropped.
    """
    logger = get_run_logger()
    store = open_task_store(store_uri)
    entries = []
    for outcome in outcomes:
        if outcome.get("status") == "failed":
            entries.append(outcome)
            continue
        try:
            entries.append({"config": outcome["config"], "manifest": read_run(store.run_folder(outcome["run_id"])).manifest})
        except EmotionError as exc:
            logger.error("config %s: its child completed but run %s is not readable: %s", outcome["config"], outcome["run_id"], exc)
            entries.append({**outcome, "status": "failed", "error": f"run {outcome['run_id']} not readable in {store.uri}: {exc}"})
    frame = comparison_table(entries)
    name = f"{set_name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    staging = store.staging(name)
    paths = write_comparison(frame, staging, f"Comparison: {set_name}")
    report_uri = store.publish_report(staging, name)
    markdown = to_markdown(frame)
    key = slug(set_name)
    create_markdown_artifact(key=f"comparison-{key}", description=f"train-all {set_name}",
                             markdown=f"# {set_name}\n\n{markdown}\n\nReport: `{report_uri}`\n")
    create_table_artifact(key=f"comparison-table-{key}", table=frame.drop("error").to_dicts(), description=f"train-all {set_name}")
    logger.info("comparison of %s:\n%s", set_name, markdown)
    return {"report": report_uri, "markdown": f"{report_uri}/{paths['markdown'].name}",
            "csv": f"{report_uri}/{paths['csv'].name}", "table": markdown,
            "failed": [{"config": e["config"], "error": e["error"]} for e in entries if e.get("status") == "failed"]}
