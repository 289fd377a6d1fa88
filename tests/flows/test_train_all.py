"""train-all in-process (local dispatch) on a real Prefect server: children, failure, comparison, artifacts."""

from __future__ import annotations

import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.slow

TINY_DATA = {"max_train_samples": 1500, "max_validation_samples": 400, "max_test_samples": 300}


@pytest.fixture
def tiny_set(tmp_path, repo):
    configs = repo / "deployments" / "configs"
    spec = {
        "name": "tiny",
        "overrides": {"data": TINY_DATA},
        "configs": [
            {
                "path": str(configs / "ffnn-tfidf.yaml"),
                "overrides": {"model": {"max_features": 5000, "hidden_size": 32}, "training": {"epochs": 2}},
            },
            {
                "path": str(configs / "minilm.yaml"),
                "overrides": {"name": "broken-model", "model": {"model": "no-such-org/no-such-model"}},
            },
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_failed_child_is_reported_and_fails_the_parent(prefect_server, data_dir, tiny_set, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from emotion_core.errors import RunFailed
    from emotion_core.store import open_store
    from flows.train_all import train_all

    store_path = tmp_path / "store"
    with pytest.raises(RunFailed) as info:
        train_all(config_set=str(tiny_set), store=str(store_path))
    message = str(info.value)
    assert "1 of 2 configs failed" in message and "broken-model" in message and "no-such-org/no-such-model" in message

    # The healthy child's run is complete and the comparison lists both configs.
    store = open_store(store_path)
    runs = store.list_runs()
    assert len(runs) == 1 and runs[0].startswith("ffnn-tfidf-")
    reports = list((store_path / "reports").glob("tiny-*/comparison.csv"))
    assert len(reports) == 1
    table = pl.read_csv(reports[0])
    assert dict(zip(table["config"], table["status"])) == {"ffnn-tfidf": "completed", "broken-model": "failed"}
    assert table.filter(pl.col("config") == "ffnn-tfidf")["val_macro_f1"][0] > 0.05
    markdown = reports[0].with_name("comparison.md").read_text()
    assert "| ffnn-tfidf | completed |" in markdown and "| broken-model | failed |" in markdown

    # The comparison is published as Prefect artifacts on the run.
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["comparison-tiny", "comparison-table-tiny"]))
        )
    kinds = {a.key: a.type for a in artifacts}
    assert kinds == {"comparison-tiny": "markdown", "comparison-table-tiny": "table"}
    assert any("broken-model" in str(a.data) for a in artifacts)


def test_train_model_flow_publishes_to_s3_with_a_credentials_block(
    prefect_server, data_dir, repo, s3_bucket, s3_endpoint, monkeypatch, tmp_path
):
    """Credentials and endpoint from a saved Prefect AwsCredentials block; the run lands in S3, and the CLI's
    predict reads it back with the same block."""
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from emotion_core.runs import read_run
    from emotion_core.store import open_store
    from flows.train_model import train_model

    AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint),
    ).save("emotion-s3-test", overwrite=True)
    monkeypatch.setenv("EMOTION_AWS_CREDENTIALS_BLOCK", "emotion-s3-test")
    monkeypatch.delenv("EMOTION_S3_ENDPOINT_URL")  # the endpoint can only come from the block
    uri = train_model(
        config=str(repo / "deployments" / "configs" / "ffnn-tfidf.yaml"),
        store=f"s3://{s3_bucket}/nightly",
        overrides={"data": TINY_DATA, "model": {"max_features": 5000, "hidden_size": 32}, "training": {"epochs": 1}},
    )
    assert uri.startswith(f"s3://{s3_bucket}/nightly/runs/ffnn-tfidf-")
    # `emotion predict` on the s3:// run: keys and endpoint can only come from the block (none in its environment).
    import os
    import subprocess
    import sys
    from pathlib import Path

    texts = tmp_path / "texts.csv"
    texts.write_text("id,text\n1,I am so happy for you\n2,this is terrible news\n", encoding="utf-8")
    hidden = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "EMOTION_S3_ENDPOINT_URL")
    env = {**{k: v for k, v in os.environ.items() if k not in hidden}, "PREFECT_API_URL": prefect_server.api_url}
    emotion = str(Path(sys.executable).with_name("emotion"))
    out = tmp_path / "predictions.csv"
    result = subprocess.run(
        [emotion, "predict", uri, str(texts), "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(out.read_text().splitlines()) == 3 and "testing" not in result.stdout + result.stderr
    monkeypatch.setenv("EMOTION_S3_ENDPOINT_URL", s3_endpoint)
    run = read_run(uri)
    assert run.manifest["config"]["data"]["max_train_samples"] == 1500
    assert run.manifest["timing"]["epochs_completed"] == 1.0
    assert open_store(f"s3://{s3_bucket}/nightly").list_runs() == [run.run_id]


def test_train_all_evaluates_calibrates_explains_ensembles_and_reports(
    prefect_server, data_dir, repo, tmp_path, caplog
):
    """Two real FFNN runs -> evaluation with CIs, calibration, SHAP (each in its child, stored beside the run), an
    ensemble, paired tests, report, artifacts, W&B; a run without usable stored results is evaluated by the parent."""
    import json
    import logging
    import os
    import shutil
    from pathlib import Path

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train_all import train_all

    tiny = repo / "tests" / "data" / "sets" / "tiny-ffnn.yaml"
    spec = {
        "name": "tiny-report",
        "report": {"bootstrap_samples": 200, "ensemble_top_k": 2},
        "overrides": {"explain": {"n_texts": 3, "max_evals": 40, "top_labels": 2}},
        "configs": [
            str(tiny),
            {
                "path": str(tiny),
                "overrides": {"name": "tiny-ffnn-wide", "model": {"hidden_size": 64}, "training": {"seed": 3}},
            },
        ],
    }
    set_path = tmp_path / "tiny-report.yaml"
    set_path.write_text(yaml.safe_dump(spec))
    wandb_before = set(Path(os.environ["WANDB_DIR"]).rglob("offline-run-*"))

    summary = train_all(config_set=str(set_path), store=str(tmp_path / "store"))

    report = Path(summary["report"].removeprefix("file://"))
    table = pl.read_csv(report / "summary.csv")
    assert set(table["model"]) == {"tiny-ffnn", "tiny-ffnn-wide", "ensemble-top2"}
    assert (table["status"] == "completed").all()
    assert (
        (table["test_macro_f1_low"] <= table["test_macro_f1"]) & (table["test_macro_f1"] <= table["test_macro_f1_high"])
    ).all()
    assert (
        table["ece_flat_after"].is_not_null().sum() == 2
    )  # the ensemble's members are calibrated, it is not re-scaled
    best = table.sort("val_macro_f1", descending=True)["model"][0]
    assert summary["best"] == best
    others = table.filter(pl.col("model") != best)
    assert others["p_vs_best"].is_not_null().all() and ((others["p_vs_best"] >= 0) & (others["p_vs_best"] <= 1)).all()
    for name in ("tiny-ffnn", "tiny-ffnn-wide"):
        models = report / "models" / name
        calibration = json.loads((models / "calibration.json").read_text())
        # temperature scaling minimises validation NLL, and T = 1 is among the candidates
        assert calibration["nll"]["validation"]["after"] <= calibration["nll"]["validation"]["before"] + 1e-9
        assert (models / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shap = json.loads((models / "shap.json").read_text())
        assert shap["n_texts"] == 3 and len(shap["texts"]) == 3 and shap["seconds_per_text"] > 0
        assert (models / "shap.html").is_file()
    same_texts = [
        [t["id"] for t in json.loads((report / "models" / n / "shap.json").read_text())["texts"]]
        for n in ("tiny-ffnn", "tiny-ffnn-wide")
    ]
    assert same_texts[0] == same_texts[1]  # every model explains the same sample
    html = (report / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') >= 4 and 'href="models/tiny-ffnn/shap.html"' in html
    assert "http://" not in html and "https://" not in html

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["comparison-tiny-report", "comparison-table-tiny-report"])
            )
        )
    by_key = {a.key: a for a in artifacts}
    assert "ensemble-top2" in str(by_key["comparison-tiny-report"].data) and "report.html" in str(
        by_key["comparison-tiny-report"].data
    )
    rows = by_key["comparison-table-tiny-report"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert {row["config"] for row in rows} == {"tiny-ffnn", "tiny-ffnn-wide", "ensemble-top2"}

    # W&B, offline: one run per trained model and one for the summary table, each a local run folder.
    new_runs = set(Path(os.environ["WANDB_DIR"]).rglob("offline-run-*")) - wandb_before
    assert len(new_runs) == 3 and all(any(r.glob("*.wandb")) for r in new_runs)

    # Each child evaluated, calibrated and explained its own run and stored the results beside it: the parent only
    # gathered them (each entry says so) and the report holds the child's files byte for byte.
    store_path = tmp_path / "store"
    entries = {e["name"]: e for e in json.loads((report / "summary.json").read_text())["entries"]}
    runs = {name: entries[name]["run_id"] for name in ("tiny-ffnn", "tiny-ffnn-wide")}
    assert {name: entries[name]["evaluated_in"] for name in runs} == {"tiny-ffnn": "child", "tiny-ffnn-wide": "child"}
    for name, run_id in runs.items():
        stored = store_path / "analysis" / run_id
        index = json.loads((stored / "analysis.json").read_text())
        assert index["run_id"] == run_id and index["settings"] == {"bootstrap_samples": 200, "seed": 0}
        assert (
            set(index["files"]) == {"evaluation.json", "calibration.json", "reliability.png", "shap.html", "shap.json"}
            and index["explanation"]["texts"] == 3
        )
        for file in index["files"]:
            assert (stored / file).read_bytes() == (report / "models" / name / file).read_bytes()

    # Fallback: a run without stored results (an older run: deleted here) and one whose stored index is malformed
    # are evaluated and explained by the parent, which says so in its log; the evaluation is the same.
    from prefect import flow

    from emotion_core.config import ReportConfig
    from emotion_core.records import ChildOutcome
    from flows.train_all import compare

    shutil.rmtree(store_path / "analysis" / runs["tiny-ffnn"])
    bad_index = store_path / "analysis" / runs["tiny-ffnn-wide"] / "analysis.json"
    bad_index.write_text('{"format": 1, "files": "not a table"}')
    outcomes = [ChildOutcome(config=name, run_id=run_id, state="COMPLETED") for name, run_id in runs.items()]

    @flow
    def compare_again() -> dict:
        return compare("tiny-again", ReportConfig(bootstrap_samples=200, ensemble_top_k=2), outcomes, str(store_path))

    task_logs = logging.getLogger("prefect.task_runs")  # Prefect's run loggers do not propagate to the root logger
    task_logs.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="prefect.task_runs"):
            again = Path(compare_again()["report"].removeprefix("file://"))
    finally:
        task_logs.removeHandler(caplog.handler)
    entries = {e["name"]: e for e in json.loads((again / "summary.json").read_text())["entries"]}
    assert {name: entries[name]["evaluated_in"] for name in runs} == {"tiny-ffnn": "parent", "tiny-ffnn-wide": "parent"}
    assert f"run {runs['tiny-ffnn']} has no stored evaluation" in caplog.text
    assert "stored evaluation unusable" in caplog.text
    assert f"analysis/{runs['tiny-ffnn-wide']}/analysis.json: malformed" in caplog.text  # names the file
    for name in runs:
        for file in ("evaluation.json", "calibration.json"):
            assert (again / "models" / name / file).read_bytes() == (report / "models" / name / file).read_bytes()
        assert (
            json.loads((again / "models" / name / "shap.json").read_text())["texts"]
            == json.loads((report / "models" / name / "shap.json").read_text())["texts"]
        )


def test_nightly_champion_is_replaced_only_by_a_clearly_better_run(prefect_server, data_dir, repo, tmp_path):
    """First run -> champion; a clearly better run -> promoted; a worse one -> kept out. Weights never touched."""
    import hashlib
    import json

    from emotion_core.registry import Registry
    from emotion_core.store import open_store
    from flows.train_all import train_all

    data = {"max_train_samples": 3000, "max_validation_samples": 400, "max_test_samples": 400}
    weak = {"name": "weak", "model": {"max_features": 500, "hidden_size": 8}, "training": {"learning_rate": 1e-4}}
    strong = {"name": "strong", "model": {"max_features": 20000, "hidden_size": 64}, "training": {"epochs": 3}}

    def nightly(entry: dict) -> dict:
        spec = {
            "name": "nightly",
            "report": {"bootstrap_samples": 300, "ensemble_top_k": 0},
            "overrides": {"data": data, "explain": {"n_texts": 0}},
            "configs": [{"path": str(repo / "tests" / "data" / "sets" / "tiny-ffnn.yaml"), "overrides": entry}],
        }
        path = tmp_path / "nightly.yaml"
        path.write_text(yaml.safe_dump(spec))
        return train_all(config_set=str(path), store=str(tmp_path / "store"))

    first = nightly(weak)["champion_decisions"]
    assert len(first) == 1 and first[0]["promoted"] and "no champion yet" in first[0]["reason"]
    key = first[0]["dataset_key"]
    store = open_store(tmp_path / "store")
    weak_run = store.run_folder(first[0]["challenger_run_id"])
    weak_files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in weak_run.rglob("*") if p.is_file()}

    second = nightly(strong)["champion_decisions"][0]
    assert second["promoted"], second["reason"]
    assert (
        second["champion_run_id"] == first[0]["challenger_run_id"] and second["p_value"] < 0.05 and second["delta"] > 0
    )

    third = nightly(weak)["champion_decisions"][0]
    assert not third["promoted"] and "not promoted" in third["reason"] and "margin" in third["reason"]

    registry = Registry(store)
    assert registry.champion(key)["run_id"] == second["challenger_run_id"]
    assert [d["promoted"] for d in registry.decisions(key)] == [True, True, False]
    # the old champion's run is unchanged, byte for byte
    assert {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in weak_run.rglob("*") if p.is_file()
    } == weak_files
    report = sorted((tmp_path / "store" / "reports").glob("nightly-*"))[-1]
    assert "not promoted" in json.loads((report / "summary.json").read_text())["extra"][f"champion of {key}"]
