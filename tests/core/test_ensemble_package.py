"""The shippable ensemble: ``compare_set`` publishes it as a package that predict, serve and the registry use.

Two tiny real FFNN runs (tabular, labels joy/anger, seconds each) in a local store, compared in-process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import assert_refused, write_tiny_tabular

from emotion_core.errors import StoreError
from emotion_core.store import LocalStore

EMOTION = str(Path(sys.executable).with_name("emotion"))
TINY = {
    "model": {"family": "ffnn", "max_features": 200, "hidden_size": 8, "min_df": 1},
    "training": {"epochs": 3, "batch_size": 8, "early_stopping_patience": None, "checkpoint_every_steps": 0},
    "resources": {"gpu_memory_gb": 2},
}
TEXTS = ["happy lovely day", "furious mad day", "calm fine day 7", "happy furious mad lovely"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Two tiny runs trained into a store, then ``compare_set`` (stacking off: the default weighted mean)."""
    from emotion_core import comparison
    from emotion_core.analysis import DataCache, evaluate_run
    from emotion_core.config import ChampionConfig, EnsembleConfig, parse_run_config
    from emotion_core.pipeline import train_config
    from emotion_core.records import ChildOutcome
    from emotion_core.runs import read_run
    from emotion_core.store import LocalStore

    folder = tmp_path_factory.mktemp("ensemble-package")
    write_tiny_tabular(folder / "train.csv", rows=160)
    store = LocalStore(folder / "store")
    runs = []
    for name, hidden, seed in (("tiny-a", 8, 0), ("tiny-b", 16, 3)):
        raw = {
            "name": name,
            **TINY,
            "model": {**TINY["model"], "hidden_size": hidden},
            "training": {**TINY["training"], "seed": seed},
            "data": {"dataset": "tabular", "id_column": "id", "path": str(folder / "train.csv")},
        }
        runs.append(read_run(train_config(parse_run_config(raw), store).removeprefix("file://")))
    cache = DataCache()
    report = store.staging("tiny-cmp")
    entries = [evaluate_run(run, cache.for_run(run), report, bootstrap_samples=100) for run in runs]
    outcomes = [ChildOutcome(config=r.config.name, run_id=r.run_id, state="COMPLETED") for r in runs]
    original_track = comparison.track
    comparison.track = lambda *args: {}  # W&B is not the point here
    try:
        result = comparison.compare_set(
            "tiny-cmp",
            outcomes,
            entries,
            store,
            report,
            "tiny-cmp-1",
            cache,
            bootstrap_samples=100,
            ensemble_top_k=2,
            champion=ChampionConfig(enabled=False),
            ensemble=EnsembleConfig(folds=3),
        )
    finally:
        comparison.track = original_track
    return store, runs, result, folder


def _by_hand(package: Path, runs, texts) -> np.ndarray:
    """The weighted mean of the members' calibrated probabilities, from ensemble.json and each member's logits."""
    from emotion_core.predict import run_logits

    payload = json.loads((package / "ensemble.json").read_text())
    by_id = {r.run_id: r for r in runs}
    total = 0.0
    for weight, member in zip(payload["weights"], payload["members"]):
        run = by_id[member["run_id"]]
        temps = np.array([member["temperatures"][n] for n in run.schema.names])
        total = total + weight / (1 + np.exp(-run_logits(run, texts) / temps))
    return total


def test_compare_set_publishes_an_ensemble_package_with_its_facts(compared):
    from emotion_core import catalog
    from emotion_core.store import resolve_run_folder

    store, runs, result, _ = compared
    package = store.run_folder("tiny-cmp-1-ensemble")  # published, verified like any run
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["kind"] == "ensemble" and manifest["family"] == "ensemble"
    assert {m["run_id"] for m in manifest["members"]} == {r.run_id for r in runs}
    assert set(manifest["files"]) == {
        "labels.json",
        "ensemble.json",
        "probabilities/validation.parquet",
        "probabilities/test.parquet",
    }
    fit = manifest["ensemble"]
    assert fit["method"] == "weighted_mean" and fit["folds"] == 3 and isinstance(fit["eligible"], bool)
    assert sum(fit["weights"]) == pytest.approx(1.0)
    payload = json.loads((package / "ensemble.json").read_text())
    assert payload["labels"] == ["joy", "anger"] and set(payload["thresholds"]) == {"joy", "anger"}
    assert all(set(m["temperatures"]) == {"joy", "anger"} for m in payload["members"])
    row = next(r for r in catalog.list_runs(store) if r.run_id == "tiny-cmp-1-ensemble")
    assert row.family == "ensemble" and row.problem == "" and row.dataset.startswith("tabular-")
    assert row.validation_macro_f1 == pytest.approx(fit["oof_score"])
    ensemble_row = next(r for r in result.summary_rows if r["model"] == "ensemble-top2")
    assert ensemble_row["run_id"] == "tiny-cmp-1-ensemble"
    assert resolve_run_folder(package) == package


def test_predict_through_the_package_is_the_weighted_mean_of_calibrated_members(compared, tmp_path):
    from emotion_core.predict import load_predictor

    store, runs, _, _ = compared
    package = store.run_folder("tiny-cmp-1-ensemble")
    predictor = load_predictor(package)
    probs, labels = predictor.predict(TEXTS)
    assert probs == pytest.approx(_by_hand(package, runs, TEXTS), abs=1e-9)
    cuts = json.loads((package / "ensemble.json").read_text())["thresholds"]
    assert (labels == (probs >= np.array([cuts["joy"], cuts["anger"]]))).all()

    # the real CLI, on the package folder: the same numbers in the CSV
    data = tmp_path / "texts.csv"
    pl.DataFrame({"id": [f"t{i}" for i in range(len(TEXTS))], "text": TEXTS}).write_csv(data)
    out = tmp_path / "pred.csv"
    done = subprocess.run(
        [EMOTION, "predict", str(package), str(data), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pl.read_csv(out)
    assert frame["joy_prob"].to_numpy() == pytest.approx(probs[:, 0], abs=1e-6)
    assert frame["anger"].to_list() == labels[:, 1].tolist()


def test_a_tampered_package_is_refused(compared, tmp_path):
    store, _, _, folder = compared
    copy = tmp_path / "store" / "runs" / "tiny-cmp-1-ensemble"
    shutil.copytree(store.run_folder("tiny-cmp-1-ensemble"), copy)
    payload = json.loads((copy / "ensemble.json").read_text())
    payload["weights"] = list(reversed(payload["weights"]))
    (copy / "ensemble.json").write_text(json.dumps(payload))
    data = tmp_path / "texts.csv"
    pl.DataFrame({"text": TEXTS}).write_csv(data)
    done = subprocess.run(
        [EMOTION, "predict", str(copy), str(data), "--out", str(tmp_path / "o.csv")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_refused(done, "ensemble.json does not match the sha256")
    assert not (tmp_path / "o.csv").exists()


def _republished(package: Path, store, payload_edit=None) -> str:
    """The package copied into ``store`` (with ``ensemble.json`` edited and the manifest re-inventoried)."""
    from emotion_core.files import write_json
    from emotion_core.runs import file_inventory

    staging = store.staging("edited")
    shutil.copytree(package, staging, dirs_exist_ok=True)
    if payload_edit is not None:
        payload = json.loads((staging / "ensemble.json").read_text())
        payload_edit(payload)
        write_json(staging / "ensemble.json", payload)
        manifest = json.loads((staging / "manifest.json").read_text())
        (staging / "manifest.json").unlink()
        write_json(staging / "manifest.json", {**manifest, "files": file_inventory(staging)})
    return store.publish(staging, package.name)


def test_members_come_from_the_same_store_and_are_untrusted(compared, tmp_path):
    from emotion_core.predict import load_predictor
    from emotion_core.store import LocalStore

    store, runs, _, _ = compared
    package = store.run_folder("tiny-cmp-1-ensemble")
    lonely = LocalStore(tmp_path / "lonely")  # holds the package and one member only
    lonely.publish(runs[0].folder, runs[0].run_id)
    _republished(package, lonely)
    missing = next(
        m for m in json.loads((package / "ensemble.json").read_text())["members"] if m["run_id"] != runs[0].run_id
    )["run_id"]
    with pytest.raises(StoreError, match=f"member run {missing} cannot be loaded from .*not found"):
        load_predictor(lonely.run_folder(package.name))

    evil = LocalStore(tmp_path / "evil")
    _republished(package, evil, lambda p: p["members"][0].update(run_id="../../etc"))
    with pytest.raises(StoreError, match=r"members\[0\].run_id '../../etc'"):
        load_predictor(evil.run_folder(package.name))

    odd = LocalStore(tmp_path / "odd")
    _republished(package, odd, lambda p: p.update(weights=[2.0, -1.0]))
    with pytest.raises(StoreError, match="weights must be >= 0 and sum to 1"):
        load_predictor(odd.run_folder(package.name))

    outside = tmp_path / "not-a-store" / "pkg"
    shutil.copytree(package, outside)
    with pytest.raises(StoreError, match="not a store's runs/<id>"):
        load_predictor(outside)


def test_stacking_package_round_trip(compared, tmp_path):
    """A stacked ensemble published and read back predicts what its combiner computes."""
    from emotion_core.analysis import DataCache, ensemble_of, entry_of_manifest, run_data
    from emotion_core.ensemble_package import publish_ensemble, read_ensemble
    from emotion_core.predict import load_predictor, run_logits

    store, runs, _, _ = compared
    cache = DataCache()
    arrays = {r.config.name: run_data(r, cache.for_run(r)) for r in runs}
    entries = [entry_of_manifest(r.config.name, r.manifest) for r in runs]
    entry, data, combiner = ensemble_of(
        entries, arrays, tmp_path, top_k=2, method="stacking", folds=3, bootstrap_samples=100
    )
    assert combiner.method == "stacking" and entry.ensemble["method"] == "stacking"
    publish_ensemble(store, "tiny-stacked", entry, combiner, data)
    package = store.run_folder("tiny-stacked")
    read = read_ensemble(package).combiner
    assert read.coef == pytest.approx(combiner.coef) and read.intercept == pytest.approx(combiner.intercept)
    by_id = {r.run_id: r for r in runs}
    logits = [run_logits(by_id[m], TEXTS) for m in read_ensemble(package).member_ids]
    assert load_predictor(package).predict(TEXTS)[0] == pytest.approx(combiner.probabilities(logits), abs=1e-9)


def test_serve_and_the_champion_registry_can_point_at_the_package(compared):
    from fastapi.testclient import TestClient

    from emotion_core.analysis import DataCache, champion_data
    from emotion_core.registry import Registry, candidate_from_manifest, decide
    from emotion_core.serving.app import create_app
    from emotion_core.serving.models import ChampionSource, load_model

    store, runs, _, _ = compared
    package = store.run_folder("tiny-cmp-1-ensemble")
    served = load_model(package)
    with TestClient(create_app(served)) as client:
        answer = client.post("/predict", json={"texts": TEXTS[:2]})
        assert answer.status_code == 200, answer.text
        expected = _by_hand(package, runs, TEXTS[:2])
        assert [p["probabilities"]["joy"] for p in answer.json()["predictions"]] == pytest.approx(expected[:, 0])
        info = client.get("/model").json()
        assert info["run_id"] == "tiny-cmp-1-ensemble" and info["family"] == "ensemble" and info["calibrated"]

    manifest = json.loads((package / "manifest.json").read_text())
    candidate = candidate_from_manifest(manifest)
    Registry(store).record(decide(None, candidate, margin=0.0, alpha=0.05, paired=None))
    champion = ChampionSource(store.uri, "tabular")
    assert champion.current() == "tiny-cmp-1-ensemble"
    model = champion.load(champion.current(), calibration=True, batch_size=8)
    assert model.predictor.predict(TEXTS[:2])[0] == pytest.approx(expected, abs=1e-9)
    # an ensemble champion can be challenged: its stored probabilities and the members' truth
    data = champion_data(store, "tiny-cmp-1-ensemble", DataCache())
    assert data.probabilities and data.ids["test"] and data.truth["test"].shape == data.logits["test"].shape


@pytest.mark.slow
def test_package_round_trip_through_s3(compared, s3_bucket, tmp_path):
    from emotion_core.predict import load_predictor
    from emotion_core.store import open_store

    store, runs, _, _ = compared
    remote = open_store(f"s3://{s3_bucket}/team")
    for run in runs:
        remote.publish(run.folder, run.run_id)
    package = store.run_folder("tiny-cmp-1-ensemble")
    remote.publish(package, package.name)
    local = load_predictor(package).predict(TEXTS)[0]
    from_s3 = load_predictor(f"s3://{s3_bucket}/team/runs/{package.name}")
    assert from_s3.predict(TEXTS)[0] == pytest.approx(local, abs=1e-9)
    assert all(str(m.folder).startswith(str(tmp_path / "cache")) for m in from_s3.members)  # members from S3


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([EMOTION, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_run_options_of_export_are_refused_for_a_package(compared, tmp_path):
    store, _, _, _ = compared
    done = _cli("export", store.run_folder("tiny-cmp-1-ensemble"), tmp_path / "hf", "--merge")
    assert_refused(done, "--merge: does not apply to an ensemble package", "nothing was written")
    assert not (tmp_path / "hf").exists()


def _semeval_file(path: Path) -> Path:
    """A SemEval E-c style test file (``ID``, ``Tweet``; tab-separated) over ``TEXTS``."""
    lines = ["ID\tTweet", *(f"2018-En-{i:05d}\t{t}" for i, t in enumerate(TEXTS))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_submit_an_ensemble_is_what_predict_gives_and_keeps_the_id_column(compared, tmp_path):
    from emotion_core.registry import Registry, candidate_from_manifest, decide
    from emotion_core.store import LocalStore
    from emotion_core.submission import submit_run

    store, runs, _, _ = compared
    package = store.run_folder("tiny-cmp-1-ensemble")
    data = _semeval_file(tmp_path / "E-c-test.txt")
    done = _cli("submit", package, "--data", data, "--out", tmp_path / "sub.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the ensemble's thresholds" in done.stdout
    done = _cli("predict", package, data, "--out", tmp_path / "pred.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    submission, predicted = pl.read_csv(tmp_path / "sub.csv"), pl.read_csv(tmp_path / "pred.csv")
    assert submission.columns == ["ID", "joy", "anger"]
    assert submission["ID"].to_list() == [f"2018-En-{i:05d}" for i in range(len(TEXTS))] == predicted["ID"].to_list()
    assert submission.select("joy", "anger").equals(predicted.select("joy", "anger").cast(pl.Int64))
    assert submission.select("joy", "anger").to_numpy().sum() > 0  # the comparison is not of two empty tables

    # champion:<dataset> that is an ensemble: members from the champion's store, the same submission
    fresh = LocalStore(tmp_path / "fresh")
    for run in runs:
        fresh.publish(run.folder, run.run_id)
    fresh.publish(package, package.name)
    candidate = candidate_from_manifest(json.loads((package / "manifest.json").read_text()))
    Registry(fresh).record(decide(None, candidate, margin=0.0, alpha=0.05, paired=None))
    result = submit_run("champion:tabular", tmp_path / "champ.csv", data_path=data, store=fresh.uri)
    assert result["calibration"] == "ensemble"
    assert pl.read_csv(tmp_path / "champ.csv").equals(submission)

    done = _cli("submit", package, "--data", data, "--out", tmp_path / "raw.csv", "--no-calibration")
    assert_refused(done, "is an ensemble package: --no-calibration does not apply")
    assert not (tmp_path / "raw.csv").exists()


def test_export_is_self_contained_verified_and_refuses_escapes(compared, tmp_path):
    import yaml

    from emotion_core.predict import load_predictor
    from emotion_core.serving.models import load_model
    from emotion_core.submission import submit_run

    store, runs, _, _ = compared
    package = store.run_folder("tiny-cmp-1-ensemble")
    dest = tmp_path / "export"
    done = _cli("export", package, dest)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "export.json", "runs"]
    assert sorted(p.name for p in (dest / "runs").iterdir()) == sorted([package.name, *(r.run_id for r in runs)])
    card = (dest / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["labels"] == ["joy", "anger"] and sorted(meta["ensemble"]["members"]) == sorted(r.run_id for r in runs)
    assert meta["ensemble"]["method"] == "weighted_mean" and sum(meta["ensemble"]["weights"]) == pytest.approx(1)
    assert "## Thresholds" in card and "## Intended use and limits" in card

    # the store is gone for this prediction: the copy of the whole store is moved away
    moved = tmp_path / "elsewhere"
    shutil.move(str(dest), moved)
    texts = tmp_path / "five.csv"
    pl.DataFrame({"id": [f"t{i}" for i in range(5)], "text": [*TEXTS, "ok"]}).write_csv(texts)
    done = _cli("predict", moved, texts, "--out", tmp_path / "pred.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = load_predictor(package).predict([*TEXTS, "ok"])[0]
    frame = pl.read_csv(tmp_path / "pred.csv")
    assert frame.select("joy_prob", "anger_prob").to_numpy() == pytest.approx(expected, abs=1e-6)
    assert all(str(m.folder).startswith(str(moved)) for m in load_predictor(moved).members)
    served = load_model(moved, batch_size=8)  # what `emotion serve DIR` loads
    assert served.run.run_id == package.name
    assert served.predictor.predict(TEXTS)[0] == pytest.approx(expected[: len(TEXTS)], abs=1e-9)
    submitted = submit_run(moved, tmp_path / "sub.csv", data_path=texts)
    assert pl.read_csv(tmp_path / "sub.csv")["joy"].to_list() == frame["joy"].to_list()
    assert submitted["calibration"] == "ensemble"

    done = _cli("export", package, moved)
    assert_refused(done, "already exists and is not an empty folder")

    member = moved / "runs" / runs[0].run_id
    weights = next(p for p in sorted(member.rglob("*")) if p.is_file() and p.name != "manifest.json")
    weights.write_bytes(weights.read_bytes() + b"tampered")
    done = _cli("predict", moved, texts, "--out", tmp_path / "p2.csv")
    assert_refused(done, "does not match the sha256")
    assert not (tmp_path / "p2.csv").exists()

    evil = LocalStore(tmp_path / "evil")
    for run in runs:
        evil.publish(run.folder, run.run_id)
    _republished(package, evil, lambda p: p["members"][0].update(run_id="../" + p["members"][0]["run_id"]))
    done = _cli("export", evil.run_folder(package.name), tmp_path / "escaped")
    assert_refused(done, "members[0].run_id '../")
    assert not (tmp_path / "escaped").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".escaped")] == []  # no temp folder left


def test_a_proven_published_ensemble_challenges_the_champion_and_an_unproven_one_does_not(compared, tmp_path):
    from dataclasses import replace

    from emotion_core.analysis import DataCache, challenge_champions, ensemble_of, entry_of_manifest, run_data
    from emotion_core.store import LocalStore

    store, runs, _, _ = compared
    fresh = LocalStore(tmp_path / "fresh")
    for run in runs:
        fresh.publish(run.folder, run.run_id)
    package = store.run_folder("tiny-cmp-1-ensemble")
    fresh.publish(package, package.name)
    cache = DataCache()
    arrays = {r.config.name: run_data(r, cache.for_run(r)) for r in runs}
    entries = [entry_of_manifest(r.config.name, r.manifest) for r in runs]
    entry, data, _ = ensemble_of(entries, arrays, tmp_path, top_k=2, folds=3, bootstrap_samples=100)
    arrays[entry.name] = data
    published = replace(
        entry, run_id=package.name, validation_macro_f1=1.0, validation_score=1.0
    )  # the best score of the set

    unproven = replace(published, ensemble={**entry.ensemble, "eligible": False})
    records = challenge_champions([*entries, unproven], arrays, fresh, cache, margin=0.0, alpha=0.05)
    assert records[0]["promoted"] and records[0]["challenger_run_id"] != package.name

    proven = replace(published, ensemble={**entry.ensemble, "eligible": True})
    records = challenge_champions([*entries, proven], arrays, fresh, cache, margin=0.0, alpha=1 - 1e-9)
    assert records[0]["challenger_run_id"] == package.name and records[0]["test_rows"] > 0
