"""Champion/challenger registry: the promotion rule, the decision log and the champion pointer.

Runs against a local store and, through boto3 over HTTP, a real moto_server S3 (fixtures in
tests/conftest.py). The paired tests are real ``paired_bootstrap`` runs on synthetic predictions.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import numpy as np
import pytest

from emotion_core.analysis import paired_vs_champion
from emotion_core.errors import StoreError
from emotion_core.registry import ChampionConfig, Decision, Registry, candidate_from_manifest, dataset_key, decide
from emotion_core.run_scores import RunData
from emotion_core.store import open_store
from emotion_core.store.base import DocumentConflict

LABELS = ["joy", "anger", "fear", "sadness", "surprise", "neutral"]
KEY = dataset_key("goemotions", LABELS)
CFG = ChampionConfig()
ROWS = 400


# --------------------------------------------------------------------------- synthetic runs


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return (np.random.default_rng(0).random((ROWS, len(LABELS))) < 0.3).astype(np.int8)


def noisy(truth: np.ndarray, flip: float, seed: int) -> np.ndarray:
    """``truth`` with a share ``flip`` of its cells flipped: the predictions of a model that good."""
    flips = np.random.default_rng(seed).random(truth.shape) < flip
    return np.where(flips, 1 - truth, truth).astype(np.int8)


def run_data(name: str, truth: np.ndarray, preds: np.ndarray, order: slice = slice(None)) -> RunData:
    """A run whose logits give exactly ``preds`` at threshold 0.5 (rows reordered by ``order``)."""
    ids = [f"r{i}" for i in range(len(truth))][order]
    logits = np.where(preds == 1, 4.0, -4.0).astype(np.float32)[order]
    return RunData(
        name, {"test": ids}, {"test": logits}, {"test": truth[order]}, np.full(len(LABELS), 0.5), list(LABELS)
    )


def entry(run_id: str, f1: float, name: str | None = None) -> dict:
    """The report entry fields ``decide`` reads."""
    return {
        "name": name or run_id.split("-")[0],
        "run_id": run_id,
        "status": "completed",
        "validation_macro_f1": f1,
        "dataset_key": KEY,
    }


@pytest.fixture(scope="module")
def paired(truth):
    """Real paired bootstraps: a clearly better challenger vs the champion, and the reverse."""
    champion = run_data("champ", truth, noisy(truth, 0.25, 1))
    better = run_data("better", truth, noisy(truth, 0.05, 2), order=slice(None, None, -1))  # other row order
    worse = run_data("worse", truth, noisy(truth, 0.40, 3))
    return {
        "better": paired_vs_champion(better, champion, n=500),
        "worse": paired_vs_champion(worse, champion, n=500),
        "same": paired_vs_champion(champion, champion, n=500),
    }


# --------------------------------------------------------------------------- decide


def test_first_completed_run_is_promoted():
    decision = decide(None, entry("ffnn-a", 0.41), margin=CFG.margin, alpha=CFG.alpha, paired=None)
    assert decision.promoted and decision.champion_run_id is None and decision.dataset_key == KEY
    assert "no champion" in decision.reason and "0.4100" in decision.reason


def test_clearly_better_challenger_is_promoted(paired):
    result = paired["better"]
    assert result["rows"] == ROWS and result["delta"] > 0.1 and result["p_value"] < 0.01
    decision = decide(
        entry("champ-1", 0.40), entry("better-2", 0.48), margin=CFG.margin, alpha=CFG.alpha, paired=result
    )
    assert decision.promoted, decision.reason
    assert decision.challenger_macro_f1 == 0.48 and decision.champion_macro_f1 == 0.40
    assert decision.p_value == result["p_value"] and decision.margin == 0.005 and decision.test_rows == ROWS
    assert "promoted better" in decision.reason and "+0.0800" in decision.reason and "alpha 0.05" in decision.reason


def test_worse_challenger_is_not_promoted(paired):
    result = paired["worse"]
    assert result["delta"] < 0 and result["p_value"] > 0.99
    decision = decide(entry("champ-1", 0.40), entry("worse-2", 0.35), margin=CFG.margin, alpha=CFG.alpha, paired=result)
    assert not decision.promoted
    assert "not above the margin 0.0050" in decision.reason and "is not below alpha 0.05" in decision.reason
    assert decision.p_value == result["p_value"]


def test_equal_within_margin_is_not_promoted_even_if_significant(paired):
    decision = decide(
        entry("champ-1", 0.400), entry("better-2", 0.403), margin=CFG.margin, alpha=CFG.alpha, paired=paired["better"]
    )
    assert not decision.promoted
    assert "(+0.0030) is not above the margin 0.0050" in decision.reason and "alpha" not in decision.reason


def test_better_on_validation_but_not_significant_on_test(paired):
    assert paired["same"]["p_value"] == 1.0  # identical predictions: delta 0 on every resample
    decision = decide(
        entry("champ-1", 0.40), entry("same-2", 0.45), margin=CFG.margin, alpha=CFG.alpha, paired=paired["same"]
    )
    assert not decision.promoted and "p = 1.000 is not below alpha 0.05" in decision.reason
    no_test = decide(
        entry("champ-1", 0.40),
        entry("x-2", 0.45),
        margin=CFG.margin,
        alpha=CFG.alpha,
        paired={"skipped": "no test rows shared with the champion"},
    )
    assert not no_test.promoted and "no paired bootstrap" in no_test.reason and "no test rows shared" in no_test.reason


def test_decide_refuses_failed_runs_and_bad_settings():
    with pytest.raises(ValueError, match="did not complete"):
        decide(None, {"name": "x", "status": "failed", "run_id": None}, margin=0.005, alpha=0.05, paired=None)
    with pytest.raises(ValueError, match="alpha"):
        decide(None, entry("a-1", 0.4), margin=0.005, alpha=0.0, paired=None)
    with pytest.raises(ValueError, match="finite"):
        decide(None, entry("a-1", float("nan")), margin=0.005, alpha=0.05, paired=None)


def test_dataset_keys_separate_datasets_and_label_schemas():
    assert KEY.startswith("goemotions-") and len(KEY) == len("goemotions-") + 12
    assert dataset_key("semeval2018-ec", LABELS) != KEY
    assert dataset_key("goemotions", list(reversed(LABELS))) != KEY
    manifest = {
        "run_id": "ffnn-1",
        "config_name": "ffnn",
        "status": "completed",
        "threshold_policy": "global",
        "summary": {"validation": {"global": {"macro_f1": 0.42}}},
        "data": {"dataset": "goemotions", "labels": LABELS},
    }
    assert candidate_from_manifest(manifest) == {
        "name": "ffnn",
        "run_id": "ffnn-1",
        "status": "completed",
        "metric": "macro_f1",
        "validation_score": 0.42,
        "validation_macro_f1": 0.42,
        "dataset_key": KEY,
    }


def test_config_defaults_and_validation():
    assert (CFG.enabled, CFG.margin, CFG.alpha) == (True, 0.005, 0.05)
    assert ChampionConfig.model_fields["margin"].description  # every field documented
    with pytest.raises(ValueError):
        ChampionConfig(alpha=1.5)
    with pytest.raises(ValueError):
        ChampionConfig(margin=0.01, extra=1)


# --------------------------------------------------------------------------- stores


class Backend:
    """A store plus raw access to what it holds, bypassing the store (to check and to corrupt)."""

    def __init__(self, store, raw_put, raw_runs):
        self.store, self.raw_put, self.raw_runs = store, raw_put, raw_runs


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def backend(request, tmp_path):
    if request.param == "local":
        store = open_store(tmp_path / "store")

        def raw_put(key: str, body: bytes) -> None:
            (store.root / key).parent.mkdir(parents=True, exist_ok=True)
            (store.root / key).write_bytes(body)

        def raw_runs() -> dict[str, bytes]:
            return {
                p.relative_to(store.root).as_posix(): p.read_bytes()
                for p in (store.root / "runs").rglob("*")
                if p.is_file()
            }

        return Backend(store, raw_put, raw_runs)
    bucket = request.getfixturevalue("s3_bucket")
    store = open_store(f"s3://{bucket}/team/emotion")
    client = boto3.client("s3", endpoint_url=request.getfixturevalue("s3_endpoint"))

    def raw_put(key: str, body: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"team/emotion/{key}", Body=body)

    def raw_runs() -> dict[str, bytes]:
        listed = client.list_objects_v2(Bucket=bucket, Prefix="team/emotion/runs/").get("Contents", [])
        return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}

    return Backend(store, raw_put, raw_runs)


def publish(store, run_id: str) -> None:
    from emotion_core.runs import file_inventory

    folder = store.staging(run_id)
    (folder / "model").mkdir()
    (folder / "model" / "model.safetensors").write_bytes(run_id.encode() * 2000)
    (folder / "metrics.json").write_text('{"macro_f1": 0.4}')
    (folder / "manifest.json").write_text(json.dumps({"run_id": run_id, "files": file_inventory(folder)}))
    store.publish(folder, run_id)


def test_documents_are_conditional_and_never_touch_runs(backend):
    store = backend.store
    assert store.read_document("registry/x.json") is None
    assert store.read_document_versioned("registry/x.json") == (None, None)
    v1 = store.write_document("registry/x.json", {"n": 1}, create_only=True)
    assert store.write_document("registry/x.json", {"n": 1}, create_only=True) == v1  # a retried write is no conflict
    with pytest.raises(DocumentConflict, match="registry/x.json exists already"):
        store.write_document("registry/x.json", {"n": 2}, create_only=True)
    doc, version = store.read_document_versioned("registry/x.json")
    assert doc == {"n": 1} and version == v1
    v2 = store.write_document("registry/x.json", {"n": 2}, if_match=v1)
    assert v2 != v1 and store.read_document("registry/x.json") == {"n": 2}
    with pytest.raises(DocumentConflict, match="changed since it was read"):
        store.write_document("registry/x.json", {"n": 3}, if_match=v1)  # stale version: compare-and-swap fails
    assert store.read_document("registry/x.json") == {"n": 2}
    store.write_document("registry/a/b.json", {"k": True})
    assert store.list_documents("registry") == ["registry/a/b.json", "registry/x.json"]
    assert store.list_documents("registry/a/") == ["registry/a/b.json"] and store.list_documents("nothing") == []
    for bad in (
        "runs/r1/manifest.json",
        "reports/x/index.json",
        "/etc/x.json",
        "registry/../runs/x.json",
        ".staging/x",
    ):
        with pytest.raises(StoreError, match="document key"):
            store.write_document(bad, {})


def test_decisions_are_recorded_in_order_and_the_pointer_follows_promotions(backend, paired):
    store, registry = backend.store, Registry(backend.store)
    for run_id in ("first-1", "worse-2", "better-3", "close-4"):
        publish(store, run_id)
    assert registry.champion(KEY) is None and registry.decisions(KEY) == []
    # Same instant for every decision: the log still keeps the recording order.
    now = datetime(2025, 1, 1, 2, 0, tzinfo=UTC)

    def step(run_id: str, f1: float, result: dict | None) -> Decision:
        decision = decide(registry.champion(KEY), entry(run_id, f1), margin=CFG.margin, alpha=CFG.alpha, paired=result)
        registry.record(decision, now=now)
        return decision

    assert step("first-1", 0.40, None).promoted
    assert not step("worse-2", 0.35, paired["worse"]).promoted
    assert step("better-3", 0.48, paired["better"]).promoted
    assert not step("close-4", 0.483, paired["better"]).promoted  # +0.003: within the margin

    log = registry.decisions(KEY)
    assert [(d["challenger_run_id"], d["promoted"], d["champion_run_id"]) for d in log] == [
        ("first-1", True, None),
        ("worse-2", False, "first-1"),
        ("better-3", True, "first-1"),
        ("close-4", False, "better-3"),
    ]
    assert [d["decided_at"] for d in log] == sorted(d["decided_at"] for d in log) and len({d["key"] for d in log}) == 4
    assert all(
        d["key"].startswith(f"registry/{KEY}/decisions/") and d["key"].endswith(f"-{d['challenger_run_id']}.json")
        for d in log
    )
    assert "margin" in log[3]["reason"] and log[2]["p_value"] == paired["better"]["p_value"]

    champion = registry.champion(KEY)
    assert (
        champion["run_id"] == "better-3" and champion["validation_macro_f1"] == 0.48 and champion["dataset_key"] == KEY
    )
    assert champion["decision_key"] == log[2]["key"] and champion["decision"] == log[2]
    assert champion["promoted_at"] == log[2]["decided_at"]
    # Another dataset (another label schema) has its own champion.
    assert registry.champion(dataset_key("semeval2018-ec", LABELS)) is None


def test_the_champions_run_files_are_never_rewritten(backend, paired):
    store, registry = backend.store, Registry(backend.store)
    publish(store, "champ-1")
    registry.record(decide(None, entry("champ-1", 0.40), margin=CFG.margin, alpha=CFG.alpha, paired=None))
    before = backend.raw_runs()
    assert any(k.endswith("runs/champ-1/model/model.safetensors") for k in before)
    publish(store, "loser-2")
    publish(store, "winner-3")
    registry.record(
        decide(
            registry.champion(KEY), entry("loser-2", 0.30), margin=CFG.margin, alpha=CFG.alpha, paired=paired["worse"]
        )
    )
    registry.record(
        decide(
            registry.champion(KEY), entry("winner-3", 0.48), margin=CFG.margin, alpha=CFG.alpha, paired=paired["better"]
        )
    )
    assert registry.champion(KEY)["run_id"] == "winner-3"
    after = backend.raw_runs()
    assert {k: v for k, v in after.items() if "/champ-1/" in k} == {k: v for k, v in before.items() if "/champ-1/" in k}
    assert set(after) == set(before) | {k for k in after if "/loser-2/" in k or "/winner-3/" in k}


def test_stale_or_unpublished_promotions_are_refused(backend):
    store = backend.store
    publish(store, "a-1")
    publish(store, "b-2")
    one, other = Registry(store), Registry(store)
    # Two writers both saw "no champion" and both decided to promote their run.
    first = decide(one.champion(KEY), entry("a-1", 0.40), margin=CFG.margin, alpha=CFG.alpha, paired=None)
    second = decide(other.champion(KEY), entry("b-2", 0.42), margin=CFG.margin, alpha=CFG.alpha, paired=None)
    one.record(first)
    with pytest.raises(DocumentConflict, match="made against champion None, but the champion is now a-1; decide again"):
        other.record(second)
    assert one.champion(KEY)["run_id"] == "a-1" and len(one.decisions(KEY)) == 1
    # A run that was never published cannot become champion.
    ghost = decide(
        None,
        {**entry("ghost-3", 0.5), "dataset_key": dataset_key("semeval2018-ec", LABELS)},
        margin=CFG.margin,
        alpha=CFG.alpha,
        paired=None,
    )
    with pytest.raises(StoreError, match="ghost-3 is not a complete run"):
        one.record(ghost)


def test_a_corrupt_registry_document_names_its_key(backend):
    registry = Registry(backend.store)
    backend.raw_put(f"registry/{KEY}.json", b'{"run_id": "x", "validation_ma')
    with pytest.raises(StoreError, match=rf"document registry/{KEY}\.json in .* is corrupt: not valid JSON"):
        registry.champion(KEY)
    backend.raw_put(f"registry/{KEY}.json", b'{"dataset_key": "%s", "validation_macro_f1": 0.4}' % KEY.encode())
    with pytest.raises(StoreError, match=rf"registry document registry/{KEY}\.json in .* is corrupt: 'run_id'"):
        registry.champion(KEY)
    backend.raw_put(f"registry/{KEY}.json", b"[1, 2]")
    with pytest.raises(StoreError, match=rf"registry/{KEY}\.json .*expected a JSON object"):
        registry.record(decide(None, entry("a-1", 0.4), margin=CFG.margin, alpha=CFG.alpha, paired=None))
    backend.raw_put(f"registry/{KEY}/decisions/20250101T000000000000Z-a-1.json", b"{}")
    with pytest.raises(
        StoreError, match=rf"registry/{KEY}/decisions/20250101T000000000000Z-a-1\.json .*not a decision"
    ):
        registry.decisions(KEY)


def test_a_promotion_racing_another_writer_loses_at_the_conditional_write(backend, paired, monkeypatch):
    store = backend.store
    for run_id in ("a-1", "b-2", "c-3"):
        publish(store, run_id)
    registry = Registry(store)
    registry.record(decide(None, entry("a-1", 0.40), margin=CFG.margin, alpha=CFG.alpha, paired=None))
    seen = registry._champion_versioned(KEY)  # what this writer read (champion a-1, and its version)
    decision = decide(seen[0], entry("c-3", 0.48), margin=CFG.margin, alpha=CFG.alpha, paired=paired["better"])
    # Meanwhile another writer promotes b-2 over a-1.
    Registry(store).record(
        decide(seen[0], entry("b-2", 0.47), margin=CFG.margin, alpha=CFG.alpha, paired=paired["better"])
    )
    monkeypatch.setattr(registry, "_champion_versioned", lambda key: seen)  # this writer still holds its old read
    with pytest.raises(DocumentConflict, match=rf"registry/{KEY}\.json changed since it was read"):
        registry.record(decision)
    fresh = Registry(store)
    assert fresh.champion(KEY)["run_id"] == "b-2"
    assert [d["challenger_run_id"] for d in fresh.decisions(KEY)] == ["a-1", "b-2"]  # nothing logged for c-3


# --- the champion gate on each dataset's official metric ----------------------------------------------------------


def test_gate_uses_the_official_metric_and_reads_old_macro_f1_documents():
    paired = {"p_value": 0.01, "delta": 0.03, "rows": 684}
    old_champion = {"run_id": "old", "name": "ffnn", "validation_macro_f1": 0.50}  # written before metrics existed
    jaccard = {
        "run_id": "new",
        "name": "minilm",
        "metric": "jaccard_samples",
        "validation_score": 0.56,
        "validation_macro_f1": 0.45,
    }
    decision = decide(old_champion, jaccard, margin=0.005, alpha=0.05, paired=paired, dataset_key="semeval-x")
    # Jaccard 0.56 is not compared with macro-F1 0.50: the paired test on Jaccard decides.
    assert decision.promoted and decision.metric == "jaccard_samples" and decision.champion_score is None
    assert "judged by the paired test only" in decision.reason and "Jaccard" in decision.reason
    same = {"run_id": "champ", "metric": "jaccard_samples", "validation_score": 0.558, "validation_macro_f1": 0.6}
    blocked = decide(same, jaccard, margin=0.005, alpha=0.05, paired=paired, dataset_key="semeval-x")
    # +0.002 Jaccard is under the margin, although macro-F1 is 0.15 lower: the official metric gates.
    assert not blocked.promoted
    assert "validation Jaccard (example-based) 0.5600 vs champion 0.5580" in blocked.reason
    # An old decision record (no metric fields) reads back as macro-F1.
    old = decide(None, {"run_id": "a", "validation_macro_f1": 0.4}, margin=0.0, alpha=0.05, paired=None).to_dict()
    for field in ("metric", "challenger_score", "champion_score"):
        old.pop(field)
    back = Decision.from_dict(old)
    assert back.metric == "macro_f1" and back.challenger_score == 0.4


def test_champion_document_without_a_score_for_its_metric_is_corrupt(tmp_path):
    store = open_store(tmp_path / "store")
    registry = Registry(store)
    document = {"run_id": "r1", "dataset_key": KEY, "metric": "jaccard_samples", "validation_macro_f1": 0.5}
    store.write_document(registry.champion_key(KEY), document)
    with pytest.raises(StoreError, match="validation_score must be a finite number"):
        registry.champion(KEY)
