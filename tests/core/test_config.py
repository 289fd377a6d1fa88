"""Config validation: every shipped config loads; each kind of mistake names its file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emotion_core.config import load_config_set, load_run_config, parse_overrides, parse_run_config
from emotion_core.errors import ConfigError
from emotion_core.model_configs import EncoderConfig, FFNNConfig

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"name": "m", "model": {"family": "encoder", "model": "minilm"}}


def write(tmp_path: Path, payload, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else yaml.safe_dump(payload), encoding="utf-8")
    return path


def merged(**sections):
    out = {**MINIMAL}
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def test_shipped_configs_and_sets_validate():
    configs = sorted((REPO / "deployments" / "configs").glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        # SHAP runs in the child that trained the run, where the model is: on for every shipped config, 7-8B too
        assert load_run_config(path).explain.n_texts > 0, path.name
    spec, entries = load_config_set(REPO / "deployments" / "sets" / "cpu-demo.yaml")
    assert spec.name == "cpu-demo"
    assert [e.config.name for e in entries] == [
        "smollm2-zero-shot",
        "ffnn-tfidf",
        "smollm2-lora-demo",
        "minilm-lora-demo",
        "minilm-demo",
    ]
    demo = entries[4].config
    assert demo.data.max_train_samples == 4000 and demo.training.epochs == 1
    assert isinstance(demo.model, EncoderConfig) and demo.model.model == "minilm"
    _, gpu = load_config_set(REPO / "deployments" / "sets" / "gpu.yaml")
    assert {"roberta-base", "distilbert-base-uncased", "distilroberta-base", "deberta-v3-base"} <= {
        e.config.name for e in gpu
    }
    assert entries[3].config.model.adapter.method == "lora" and entries[0].config.model.family == "zero_shot"
    # every family of the product: FFNN, encoder full and LoRA, decoder LoRA, zero-shot; each explained
    assert entries[2].config.model.family == "decoder" and entries[2].config.model.adapter.method == "lora"
    assert entries[0].config.explain.n_texts == 1 and entries[1].config.explain.n_texts == 8
    # The gpu set names the seeds' systems: full and LoRA encoders, LoRA/QLoRA/IA3 decoders, a zero-shot LLM.
    methods = {
        e.config.name: (e.config.model.family, getattr(getattr(e.config.model, "adapter", None), "method", None))
        for e in gpu
    }
    assert methods["roberta-base-lora"] == ("encoder", "lora") and methods["deberta-v3-base-lora"] == (
        "encoder",
        "lora",
    )
    assert methods["llama-3.2-1b-qlora"] == ("decoder", "qlora") and methods["gemma-1.1-2b-it-ia3"] == (
        "decoder",
        "ia3",
    )
    assert methods["mistral-7b-qlora"] == ("decoder", "qlora") and methods["qwen2.5-0.5b-lora"] == ("decoder", "lora")
    assert methods["llama-3.1-8b-instruct-zero-shot"] == ("zero_shot", None)


def test_defaults_are_the_measured_recipe():
    cfg = parse_run_config(MINIMAL)
    assert cfg.model.pooling == "mean" and cfg.model.max_length == 64
    t = cfg.training
    assert (t.batch_size, t.learning_rate, t.head_learning_rate, t.warmup_ratio, t.epochs) == (
        32,
        5e-5,
        1e-3,
        0.06,
        2.0,
    )
    assert t.group_by_length and t.init_bias_from_prior and cfg.threshold_policy == "per_label"


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (merged(training={"batch_szie": 8}), "training.batch_szie", "Extra inputs are not permitted"),
        (merged(training={"batch_size": "big"}), "training.batch_size", "valid integer"),
        (merged(training={"batch_size": 0}), "training.batch_size", "greater than 0"),
        (merged(training={"epochs": -1}), "training.epochs", "greater than 0"),
        (merged(model={"dropout": 1.5}), "model.dropout", "less than 1"),
        (merged(data={"validation_fraction": 0.7}), "data.validation_fraction", "less than 0.5"),
        (merged(data={"dataset": "imdb"}), "data.dataset", "goemotions"),
        (merged(model={"family": "rnn"}), "model", "does not match any of the expected tags"),
        ({"model": {"family": "ffnn"}}, "name", "Field required"),
        (merged(name="has space"), "name", "letters, digits"),
        ({"name": "f", "model": {"family": "ffnn", "word_ngrams": [3, 1]}}, "model.word_ngrams", "1 <= min <= max"),
        (merged(data={"label_columns": ["a"]}), "(top level)", "applies only to dataset 'tabular'"),
        (merged(threshold_policy="best"), "threshold_policy", "per_label"),
    ],
)
def test_invalid_config_names_file_and_field(tmp_path, raw, field, words):
    path = write(tmp_path, raw, "bad-config.yaml")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    message = str(info.value)
    assert "bad-config.yaml" in message
    assert f"field '{field}'" in message
    assert words in message


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "name: x\nmodel:\n  family: [encoder\n", "broken.yaml")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+, column \d+ invalid YAML"):
        load_run_config(path)


def test_non_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_run_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_run_config(tmp_path / "nope.yaml")


def test_config_set_overrides_merge_in_order(tmp_path):
    write(tmp_path, {"name": "f", "model": {"family": "ffnn"}, "training": {"epochs": 5, "batch_size": 16}}, "f.yaml")
    set_path = write(
        tmp_path,
        {
            "name": "s",
            "overrides": {"training": {"epochs": 3}, "data": {"max_train_samples": 100}},
            "configs": ["f.yaml", {"path": "f.yaml", "overrides": {"name": "f2", "training": {"epochs": 1}}}],
        },
        "set.yaml",
    )
    _, entries = load_config_set(set_path, {"data": {"seed": 7}})
    first, second = (e.config for e in entries)
    assert isinstance(first.model, FFNNConfig)
    assert (first.training.epochs, first.training.batch_size, first.data.max_train_samples, first.data.seed) == (
        3,
        16,
        100,
        7,
    )
    assert (second.name, second.training.epochs, second.data.seed) == ("f2", 1, 7)
    assert entries[1].overrides == {
        "training": {"epochs": 1},
        "data": {"max_train_samples": 100, "seed": 7},
        "name": "f2",
    }


def test_config_set_errors(tmp_path):
    write(tmp_path, {"name": "f", "model": {"family": "ffnn"}}, "f.yaml")
    with pytest.raises(ConfigError, match="config names must be unique in a set; repeated: f"):
        load_config_set(write(tmp_path, {"name": "s", "configs": ["f.yaml", "f.yaml"]}, "dup.yaml"))
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config_set(write(tmp_path, {"name": "s", "configs": ["missing.yaml"]}, "s.yaml"))
    with pytest.raises(ConfigError, match="field 'configs'"):
        load_config_set(write(tmp_path, {"name": "s", "configs": []}, "empty.yaml"))
    write(tmp_path, {"name": "g", "model": {"family": "ffnn", "hidden_size": -1}}, "g.yaml")
    with pytest.raises(ConfigError, match=r"g\.yaml: invalid config\n  field 'model.hidden_size'"):
        load_config_set(write(tmp_path, {"name": "s", "configs": ["g.yaml"]}, "s2.yaml"))


def test_parse_overrides():
    assert parse_overrides(["training.epochs=1", "data.max_train_samples=500", "name=x", "data.path="]) == {
        "training": {"epochs": 1},
        "data": {"max_train_samples": 500, "path": None},
        "name": "x",
    }
    for bad in ["epochs", "=1", "training..epochs=1"]:
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="both as a value and as a section"):
        parse_overrides(["training=1", "training.epochs=2"])


def test_model_zoo_fields_validate_with_named_errors(tmp_path):
    ok = load_run_config(
        write(
            tmp_path,
            {
                "name": "q",
                "model": {"family": "decoder", "model": "smollm2", "adapter": {"method": "qlora", "r": 4}},
                "training": {"loss": {"kind": "combined", "weights": {"bce": 0.5, "asl": 0.5}}, "oversample_rare": 0.5},
            },
            "q.yaml",
        )
    )
    assert (
        ok.model.adapter.method == "qlora"
        and ok.model.adapter.alpha == 16
        and ok.training.loss.weights == {"bce": 0.5, "asl": 0.5}
    )
    assert (
        load_run_config(write(tmp_path, {"name": "z", "model": {"family": "zero_shot"}}, "z.yaml")).model.model
        == "smollm2"
    )
    bad = {
        "model.adapter.method": {"family": "decoder", "adapter": {"method": "prefix"}},
        "model.adapter.r": {"family": "encoder", "adapter": {"r": 0}},
        "model.few_shot": {"family": "zero_shot", "few_shot": 99},
    }
    for field, model in bad.items():
        with pytest.raises(ConfigError, match=f"field '{field}'"):
            load_run_config(write(tmp_path, {"name": "b", "model": model}, "b.yaml"))
    with pytest.raises(ConfigError, match="loss.kind 'combined' needs loss.weights"):
        load_run_config(
            write(
                tmp_path,
                {"name": "b", "model": {"family": "ffnn"}, "training": {"loss": {"kind": "combined"}}},
                "c.yaml",
            )
        )
