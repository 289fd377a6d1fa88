"""The dataset registry (name -> reader, location, hub source, official metric) and tweet preprocessing."""

from __future__ import annotations

import pytest

from emotion_core.config import DataConfig, PreprocessConfig, parse_run_config
from emotion_core.data import load_data
from emotion_core.data.preprocess import preprocess_text, split_hashtag
from emotion_core.data.registry import DATASETS, official_metric, reported_metrics
from emotion_core.errors import ConfigError
from emotion_core.metrics import RANKING_METRICS


def _cfg(data: dict):
    return parse_run_config({"name": "x", "model": {"family": "ffnn"}, "data": data})


def test_each_dataset_declares_its_official_metric():
    assert official_metric(DataConfig(dataset="goemotions")) == "macro_f1"
    assert official_metric(DataConfig(dataset="semeval2018-ec")) == "jaccard_samples"
    assert reported_metrics(DataConfig(dataset="semeval2018-ec")) == ("jaccard_samples", "micro_f1", "macro_f1")
    assert official_metric(DataConfig(dataset="tabular")) == "macro_f1"
    assert official_metric(_cfg({"dataset": "tabular", "path": "x.csv", "metric": "micro_f1"}).data) == "micro_f1"
    for spec in DATASETS.values():
        assert spec.metric is None or spec.metric in RANKING_METRICS


def test_unknown_dataset_and_metric_outside_tabular_are_config_errors():
    with pytest.raises(ConfigError, match="unknown dataset 'semeval'; registered: goemotions, semeval2018-ec"):
        _cfg({"dataset": "semeval"})
    with pytest.raises(ConfigError, match="data.metric applies only to dataset 'tabular'"):
        _cfg({"dataset": "semeval2018-ec", "metric": "macro_f1"})
    with pytest.raises(ConfigError, match="data.metric"):
        _cfg({"dataset": "tabular", "metric": "accuracy"})


def test_registered_reader_loads_tabular(tmp_path):
    (tmp_path / "d.csv").write_text("text,a,b\n" + "".join(f"t{i},{i % 2},{(i // 2) % 2}\n" for i in range(40)))
    data = load_data(DataConfig(dataset="tabular", path=str(tmp_path / "d.csv")))
    assert data.schema.names == ("a", "b") and len(data.split("test")) == 4


@pytest.mark.parametrize(
    "tag, words",
    [
        ("HappyDay", "happy day"),
        ("USElection", "us election"),
        ("happyday", "happyday"),
        ("MondayMotivation2018", "monday motivation 2018"),
        ("BREAKING", "breaking"),
    ],
)
def test_hashtags_split_at_case_changes_and_digits(tag, words):
    assert split_hashtag(tag) == words


def test_tweet_preprocessing_on_real_looking_tweets():
    keep, text = PreprocessConfig(), PreprocessConfig(emoji="text")
    tweet = "@JohnDoe2 this is SO annoying!!! #NotHappy https://t.co/AbC123 😂😂"
    assert preprocess_text(tweet, keep) == "@user this is SO annoying!!! not happy http 😂😂"
    assert preprocess_text(tweet, text) == (
        "@user this is SO annoying!!! not happy http face with tears of joy face with tears of joy"
    )
    # An e-mail address is not a mention; www links are URLs; skin tones and variation selectors are dropped.
    other = "mail a@b.com, see www.example.com/x ❤️ 👍🏽 #HappyDay2018"
    assert preprocess_text(other, text) == "mail a@b.com, see http heavy black heart thumbs up sign happy day 2018"
    off = PreprocessConfig(users=False, urls=False, hashtags=False)
    assert preprocess_text(tweet, off) == tweet


def test_preprocess_applies_at_load_and_changes_the_hash(tmp_path):
    rows = "".join(f"{i},@fan{i} loving it #GoodVibes http://x.co/{i},{i % 2}\n" for i in range(30))
    (tmp_path / "t.csv").write_text("id,text,joy\n" + rows)
    plain = load_data(DataConfig(dataset="tabular", path=str(tmp_path / "t.csv"), id_column="id"))
    tweets = load_data(
        DataConfig(dataset="tabular", path=str(tmp_path / "t.csv"), id_column="id", preprocess=PreprocessConfig())
    )
    assert set(tweets.table["text"].to_list()) == {"@user loving it good vibes http"}
    assert plain.data_hash != tweets.data_hash
    assert plain.table["id"].to_list() == tweets.table["id"].to_list()


def test_semeval_sets_validate(repo):
    from emotion_core.config import load_config_set

    _, entries = load_config_set(repo / "deployments" / "sets" / "semeval-cpu.yaml")
    configs = {e.config.name: e.config for e in entries}
    assert set(configs) == {"ffnn-semeval", "minilm-semeval", "minilm-lora-semeval", "smollm2-zero-shot-semeval"}
    for cfg in configs.values():
        assert cfg.data.dataset == "semeval2018-ec" and cfg.threshold_policy == "auto"
        assert cfg.data.preprocess == PreprocessConfig() and official_metric(cfg.data) == "jaccard_samples"
    assert configs["minilm-lora-semeval"].model.adapter.method == "lora"
    assert configs["smollm2-zero-shot-semeval"].model.family == "zero_shot"
    _, gpu = load_config_set(repo / "deployments" / "sets" / "gpu.yaml")
    semeval = {e.config.name for e in gpu if e.config.data.dataset == "semeval2018-ec"}
    assert {"ffnn-semeval", "minilm-semeval", "minilm-lora-semeval", "roberta-base-semeval"} <= semeval
    assert len({e.config.name for e in gpu}) == len(gpu)
