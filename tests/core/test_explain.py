"""SHAP explanations: a model whose answer is known, the seeded sample, the cache, the HTML, and MiniLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from emotion_core import explain
from emotion_core.config import ExplainConfig, parse_run_config
from emotion_core.explain import explain_run, explain_texts, family_predict_proba, render_html, sample_texts
from emotion_core.labels import LabelSchema
from emotion_core.models import build_family
from emotion_core.runs import Run

NAMES = ["joy", "anger", "sadness"]


def word_counting_proba(texts) -> np.ndarray:
    """joy rises with each "happy", anger with each "mad"; sadness is constant."""
    happy = np.array([len(re.findall(r"\bhappy\b", str(t))) for t in texts])
    mad = np.array([len(re.findall(r"\bmad\b", str(t))) for t in texts])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    return np.stack([sig(2.0 * happy - 2.0), sig(1.5 * mad - 3.0), np.full(len(happy), 0.05)], axis=1)


def test_the_word_that_drives_a_label_gets_its_largest_attribution():
    texts = ["today I feel happy and a little mad about the weather", "so happy so happy, nothing else"]
    out = explain_texts(word_counting_proba, texts, NAMES, max_evals=200, top_labels=2, ids=["a", "b"])
    assert out["n_texts"] == 2 and out["seconds_per_text"] > 0 and out["masker"] == "regex:\\W+"
    first = out["texts"][0]
    assert first["id"] == "a" and [entry["label"] for entry in first["labels"]] == ["joy", "anger"]  # by probability
    joy = first["labels"][0]
    best = joy["tokens"][int(np.argmax(joy["values"]))]
    assert best.strip() == "happy"
    others = [v for t, v in zip(joy["tokens"], joy["values"]) if t.strip() != "happy"]
    assert max(map(abs, others)) < 1e-9 < joy["values"][joy["tokens"].index("happy ")]
    anger = first["labels"][1]
    assert anger["tokens"][int(np.argmax(anger["values"]))].strip() == "mad"
    for row in out["texts"]:  # probability scale: values + base value = predicted probability
        for entry in row["labels"]:
            assert sum(entry["values"]) + entry["base_value"] == pytest.approx(entry["prob"], abs=1e-6)
            assert entry["prob"] == pytest.approx(row["probs"][entry["label"]])
    json.dumps(out)  # JSON-able as returned


def test_texts_of_one_token_or_none_get_exact_values():
    out = explain_texts(word_counting_proba, ["happy", "  "], NAMES, max_evals=50, top_labels=1)
    one, empty = (row["labels"][0] for row in out["texts"])
    assert one["tokens"] == ["happy"] and one["prob"] == pytest.approx(0.5)
    assert one["values"][0] == pytest.approx(0.5 - one["base_value"]) and one["base_value"] < 0.2  # masked: "..."
    assert empty["tokens"] == [] and empty["base_value"] == empty["prob"]


def test_explanations_are_reproducible():
    texts = ["happy happy mad and more words to spread the tree", "nothing here"]
    a = explain_texts(word_counting_proba, texts, NAMES, max_evals=20, top_labels=3, seed=5)
    b = explain_texts(word_counting_proba, texts, NAMES, max_evals=20, top_labels=3, seed=5)
    assert [r["labels"] for r in a["texts"]] == [r["labels"] for r in b["texts"]]


def test_sample_is_seeded_and_independent_of_row_order():
    ids = [f"id{i:03d}" for i in range(50)]
    texts = [f"text {i}" for i in range(50)]
    first = sample_texts(ids, texts, 5, seed=13)
    assert first == sample_texts(ids, texts, 5, seed=13)
    assert first == sample_texts(ids[::-1], texts[::-1], 5, seed=13)  # another read order, same rows
    assert first[0] == sorted(first[0]) and len(first[0]) == 5
    assert all(texts[ids.index(i)] == t for i, t in zip(*first))  # ids stay with their texts
    assert sample_texts(ids, texts, 5, seed=14) != first
    assert set(first[0]) <= set(sample_texts(ids, texts, 10, seed=13)[0])  # growing n only adds rows
    assert sample_texts(ids, texts, 500, seed=1)[0] == ids
    assert sample_texts(ids, texts, 0, seed=1) == ([], [])
    with pytest.raises(ValueError, match="unique"):
        sample_texts(["a", "a"], ["x", "y"], 1, seed=0)
    with pytest.raises(ValueError, match="2 ids but 1 texts"):
        sample_texts(["a", "b"], ["x"], 1, seed=0)


def test_bad_predict_proba_is_named():
    with pytest.raises(ValueError, match=r"shape \(1, 2\), expected \(1, 3\)"):
        explain_texts(lambda t: np.zeros((len(t), 2)), ["x"], NAMES)


def test_html_holds_every_text_and_label(tmp_path):
    texts = ["I am happy <b>now</b>", "mad mad mad", "happy", "   "]  # also one token, and none
    out = explain_texts(word_counting_proba, texts, NAMES, max_evals=50, top_labels=2, ids=["t1", "t2", "t3", "t4"])
    path = render_html(out, tmp_path / "report" / "shap.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "I am happy &lt;b&gt;now&lt;/b&gt;" in page and "mad mad mad" in page  # escaped source text
    assert page.count('<div class="label">') == 8 and "joy: p = " in page and "anger: p = " in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # self-contained
    assert not list(path.parent.glob(".*.tmp"))


def tiny_ffnn(schema: LabelSchema):
    texts = ["so happy today", "this makes me mad", "sad and tired", "happy happy", "mad at you", "meh"]
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    cfg = parse_run_config(
        {"name": "f", "model": {"family": "ffnn", "max_features": 200, "min_df": 1, "hidden_size": 8}}
    )
    torch.manual_seed(0)
    return cfg, build_family(cfg, schema, texts, labels)


def test_cache_hits_and_invalidation(tmp_path, monkeypatch):
    schema = LabelSchema(tuple(NAMES))
    cfg, family = tiny_ffnn(schema)
    ids = [f"r{i}" for i in range(10)]
    texts = [f"i am happy and mad number {i}" for i in range(10)]
    budget = ExplainConfig(n_texts=3, max_evals=30, top_labels=2)
    first = explain_run(family, texts, ids, NAMES, budget, tmp_path / "cache")
    assert first["cached"] is False and first["model_key"].startswith("weights:") and first["n_texts"] == 3
    assert [r["id"] for r in first["texts"]] == sample_texts(ids, texts, 3, 13)[0]

    def fail(*args, **kwargs):
        raise AssertionError("recomputed despite a cached result")

    monkeypatch.setattr(explain, "explain_texts", fail)
    again = explain_run(family, texts, ids, NAMES, budget, tmp_path / "cache", html_path=tmp_path / "shap.html")
    assert again["cached"] is True and again["cache_key"] == first["cache_key"]
    assert again["texts"] == first["texts"] and (tmp_path / "shap.html").is_file()
    monkeypatch.undo()

    Path(first["cache_path"]).write_text("{not json", encoding="utf-8")  # a damaged entry is recomputed
    assert explain_run(family, texts, ids, NAMES, budget, tmp_path / "cache")["cached"] is False
    assert explain_run(family, texts, ids, NAMES, budget, tmp_path / "cache")["cached"] is True

    changed = explain_run(family, texts, ids, NAMES, budget.model_copy(update={"max_evals": 40}), tmp_path / "cache")
    assert changed["cached"] is False and changed["cache_key"] != first["cache_key"]
    with torch.no_grad():
        family.model.features.weight.add_(0.1)  # other weights: another model
    retrained = explain_run(family, texts, ids, NAMES, budget, tmp_path / "cache")
    assert retrained["cached"] is False and retrained["model_key"] != first["model_key"]
    assert len(list((tmp_path / "cache").glob("explain-*.json"))) == 3

    # A run is keyed by its id and loaded from its folder (only on a cache miss).
    folder = tmp_path / "run"
    (folder / "model").mkdir(parents=True)
    family.save(folder / "model")
    run = Run(folder, {"run_id": "f-20260101T000000Z-abcdef12"}, cfg, schema)
    from_run = explain_run(run, texts, ids, None, {"n_texts": 2, "max_evals": 30}, tmp_path / "cache")
    assert from_run["model_key"] == "run:f-20260101T000000Z-abcdef12" and from_run["label_names"] == NAMES
    assert from_run["masker"] == "regex:\\W+"  # the FFNN has no tokenizer: words
    assert explain_run(run, texts, ids, None, {"n_texts": 2, "max_evals": 30}, tmp_path / "cache")["cached"] is True
    assert explain_run(run, texts, ids, None, {"n_texts": 0}, tmp_path / "cache")["skipped"]


def test_family_predict_proba_is_sigmoid_of_logits():
    from emotion_core.training.batch_logits import predict_logits

    _, family = tiny_ffnn(LabelSchema(tuple(NAMES)))
    texts = np.array(["so happy", "mad"])  # what shap passes: a numpy array of strings
    probs = family_predict_proba(family, batch_size=1)(texts)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-predict_logits(family, list(texts)))), rtol=1e-6)


@pytest.mark.slow
def test_minilm_explanations_use_its_wordpieces(tmp_path):
    from transformers import AutoTokenizer

    from emotion_core.models.resolve import resolve_model

    schema = LabelSchema(tuple(NAMES))
    cfg = parse_run_config({"name": "m", "model": {"family": "encoder", "model": "minilm"}})
    torch.manual_seed(0)
    family = build_family(cfg, schema, ["a", "b"], np.array([[1, 0, 0], [0, 1, 1]], dtype=np.float32))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    texts = ["I am so happy today!", "This unbelievably annoying delay makes me furious."]
    out = explain_texts(family_predict_proba(family), texts, NAMES, max_evals=40, top_labels=3, tokenizer=tokenizer)
    assert out["masker"].startswith("BertTokenizer") and out["n_texts"] == 2
    for row, text in zip(out["texts"], texts):
        assert len(row["labels"]) == 3 and set(row["probs"]) == set(NAMES)
        for entry in row["labels"]:
            assert set(entry) == {"label", "prob", "base_value", "tokens", "values"}
            assert len(entry["tokens"]) == len(entry["values"]) > 3
            assert entry["tokens"][0] == entry["tokens"][-1] == ""  # [CLS] and [SEP]
            assert "".join(entry["tokens"]) == text  # segments of the original text, in order
            assert sum(entry["values"]) + entry["base_value"] == pytest.approx(entry["prob"], abs=1e-5)
        assert row["evaluations"] <= 40
    assert "unbeliev" in "".join(out["texts"][1]["labels"][0]["tokens"])
    tokenizer.save_pretrained(tmp_path / "copy")  # same vocabulary elsewhere: same cache key
    assert explain.masker_name(AutoTokenizer.from_pretrained(tmp_path / "copy")) == out["masker"]
