"""Adapters (LoRA, IA3, QLoRA) on tiny random encoders and decoders, through the model families.

Every model here is built from a config with 2 layers and hidden size 32 and saved to a temporary
folder with a 20-word tokenizer: nothing is downloaded, and the whole file runs in well under a
minute on 2 CPU cores. QLoRA runs on the CPU through bitsandbytes' CPU backend.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from emotion_core.config import parse_run_config
from emotion_core.errors import ConfigError
from emotion_core.labels import LabelSchema
from emotion_core.models import adapters, decoder, encoder
from emotion_core.models.family import label_prior_logits
from emotion_core.training.optimizer import param_groups

# peft 0.21 asks transformers 5.23 a deprecated question on every get_peft_model; nothing to act on.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

SCHEMA = LabelSchema(("joy", "anger", "sadness"))
TEXTS = [
    "i am so happy today",
    "this makes me furious",
    "i miss her so much it hurts",
    "what a lovely surprise thank you",
    "ugh stop it",
    "meh",
]
LABELS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
WORDS = sorted({w for t in TEXTS for w in t.split()})

_SMALL = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    pad_token_id=0,
)


def _config(arch: str):
    import transformers as tf

    if arch == "bert":
        return tf.BertConfig(**_SMALL)
    if arch == "roberta":
        return tf.RobertaConfig(**_SMALL)
    if arch == "distilbert":
        return tf.DistilBertConfig(
            vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, pad_token_id=0
        )
    if arch == "deberta-v2":  # deberta-v3's attention: relative positions, shared keys
        return tf.DebertaV2Config(
            **_SMALL,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            position_buckets=16,
            share_att_key=True,
            norm_rel_ebd="layer_norm",
        )
    decoder_kw = dict(_SMALL, num_key_value_heads=1, eos_token_id=4, bos_token_id=None)
    if arch == "llama":
        return tf.LlamaConfig(**decoder_kw)
    if arch == "gemma":
        return tf.GemmaConfig(**decoder_kw, head_dim=16)
    if arch == "gemma2":
        return tf.Gemma2Config(**decoder_kw, head_dim=16, attn_implementation="eager")
    if arch == "qwen2":
        return tf.Qwen2Config(**decoder_kw)
    if arch == "mistral":
        return tf.MistralConfig(**decoder_kw)
    raise ValueError(arch)


ENCODERS = ("bert", "roberta", "distilbert", "deberta-v2")
DECODERS = ("llama", "gemma", "gemma2", "qwen2", "mistral")
# Modules each default target list must adapt on these 2-layer models (per layer x 2).
EXPECTED = {"lora": {a: 12 for a in ENCODERS} | {a: 14 for a in DECODERS}, "ia3": {a: 6 for a in ENCODERS + DECODERS}}


def _tokenizer(decoder_style: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>", "longer", "padding"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if decoder_style:  # no pad token (the family falls back to EOS), no [CLS]/[SEP]
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>", model_input_names=["input_ids", "attention_mask"]
        )
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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matmuls: threads cost more than they give, above all on shared cores (2-3x faster here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """arch -> folder with a random tiny model (safetensors) and a tokenizer; made once per arch."""
    from transformers import AutoModel, AutoModelForCausalLM

    folders = {}

    def make(arch: str):
        if arch not in folders:
            folder = tmp_path_factory.mktemp(arch)
            torch.manual_seed(0)
            is_decoder = arch in DECODERS
            cls = AutoModelForCausalLM if is_decoder else AutoModel  # what a hub checkpoint of each holds
            cls.from_config(_config(arch)).save_pretrained(folder, safe_serialization=True)
            _tokenizer(is_decoder).save_pretrained(folder)
            folders[arch] = folder
        return folders[arch]

    return make


def run_config(arch: str, folder, adapter: dict | None, **model):
    family = "decoder" if arch in DECODERS else "encoder"
    return parse_run_config(
        {
            "name": f"tiny-{arch}",
            "model": {"family": family, "model": str(folder), "adapter": adapter, "max_length": 32, **model},
            "training": {"learning_rate": 1e-2, "head_learning_rate": 1e-2, "weight_decay": 0.0},
        }
    )


def family_module(arch: str):
    return decoder if arch in DECODERS else encoder


def build(arch: str, tiny, adapter: dict | None, **model):
    cfg = run_config(arch, tiny(arch), adapter, **model)
    torch.manual_seed(1)
    return cfg, family_module(arch).build(cfg, SCHEMA, TEXTS, LABELS)


def batch_of(family, texts=TEXTS, labels=LABELS):
    dataset = family.make_dataset(texts, labels)
    return family.collate([dataset[i] for i in range(len(dataset))])


def peft_part(arch: str, family):
    return family.model if arch in DECODERS else family.model.body


def is_head(arch: str, name: str) -> bool:
    return (
        ("score.modules_to_save." in name or name.startswith("score."))
        if arch in DECODERS
        else name.startswith("head.")
    )


def train_step(cfg, family, batch):
    optimizer = torch.optim.AdamW(param_groups(family, cfg.training))
    family.model.train()
    out = family.model(**batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad()
    return out, optimizer


def logits(family, batch):
    family.model.eval()
    with torch.no_grad():
        return family.model(**{k: v for k, v in batch.items() if k != "labels"})["logits"]


# --- pre-flight --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt_neox", "t5"])
def test_an_architecture_without_targets_is_refused_naming_it(arch):
    assert not adapters.supported(arch, "lora")
    with pytest.raises(
        ConfigError,
        match=rf"config 'my-run'.*lora is not supported on architecture '{arch}'; "
        r"supported architectures: bert, roberta, distilbert, deberta-v2, llama",
    ):
        adapters.check_supported(arch, "lora", "my-run")


def test_every_listed_architecture_supports_every_method_and_the_check_needs_no_torch(repo):
    for arch in ENCODERS + DECODERS:
        for method in ("lora", "ia3", "qlora"):
            assert adapters.supported(arch, method)
            adapters.check_supported(arch, method, "c")
    code = (
        "import sys; from emotion_core.models import adapters; adapters.check_supported('llama', 'qlora', 'c')\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_quantization_config_is_nf4_with_the_configured_double_quant_and_compute_dtype():
    def adapter(**fields):
        return parse_run_config(
            {"name": "q", "model": {"family": "decoder", "adapter": {"method": "qlora", **fields}}}
        ).model.adapter

    cfg = adapters.quantization_config(adapter(double_quant=False), skip_modules=["score"])
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and not cfg.bnb_4bit_use_double_quant
    assert cfg.llm_int8_skip_modules == ["score"]
    assert adapters.quantization_config(adapter()).bnb_4bit_use_double_quant
    assert adapters.quantization_config(adapter(compute_dtype="bf16")).bnb_4bit_compute_dtype == torch.bfloat16
    if not torch.cuda.is_available():
        assert cfg.bnb_4bit_compute_dtype == torch.float32  # auto on CPU


# --- LoRA and IA3 on every architecture ----------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
def test_adapter_trains_only_itself_and_the_head_and_reloads_to_identical_logits(arch, method, tiny, tmp_path):
    cfg, family = build(arch, tiny, {"method": method, "r": 4, "alpha": 8})
    model = family.model

    adapted = adapters.adapted_modules(peft_part(arch, family))
    assert len(adapted) == EXPECTED[method][arch], adapted
    assert not any("pooler" in name or "score" in name or "classifier" in name for name in adapted)
    if method == "ia3" and arch in ("bert", "roberta", "deberta-v2"):  # the FF output, not the attention output
        assert not any(name.endswith("attention.output.dense") for name in adapted)

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    marker = "lora_" if method == "lora" else "ia3_l"
    assert trainable and all(marker in n or is_head(arch, n) for n in trainable), trainable
    assert any(is_head(arch, n) for n in trainable) and any(marker in n for n in trainable)
    counts = adapters.trainable_parameters(model)
    assert 0 < counts["trainable"] < counts["total"] / 2

    # Every trainable parameter sits in exactly one optimizer group: adapter at lr, head at head_lr.
    groups = param_groups(family, cfg.training)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)

    batch = batch_of(family)
    assert batch["labels"].dtype == torch.float32
    out, _ = train_step(cfg, family, batch)
    assert out["logits"].shape == (len(TEXTS), len(SCHEMA))
    # Second step: LoRA's A gets a gradient only once B has left zero.
    model.train()
    model(**batch)["loss"].backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not no_grad, no_grad

    before = logits(family, batch)
    family.save(tmp_path)
    saved = {p.name for p in (tmp_path / ("adapter" if arch in DECODERS else "body")).iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= saved and "model.safetensors" not in saved
    assert json.loads((tmp_path / "base.json").read_text())["adapter"]["method"] == method
    reloaded = family_module(arch).load(cfg, SCHEMA, tmp_path)
    after = logits(reloaded, batch)
    assert not reloaded.model.training
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


# --- QLoRA on the CPU ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
def test_qlora_on_a_4bit_body_trains_and_reloads(arch, tiny, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModel

    cfg, family = build(arch, tiny, {"method": "qlora", "r": 4, "alpha": 8})
    model = family.model
    adapted = adapters.adapted_modules(peft_part(arch, family))
    assert len(adapted) == EXPECTED["lora"][arch]
    for name, module in peft_part(arch, family).named_modules():
        if name in adapted:
            assert isinstance(module.base_layer, bnb.nn.Linear4bit), name
    assert all("lora_" in n or is_head(arch, n) for n, p in model.named_parameters() if p.requires_grad)

    # 4-bit weights count as the parameters they stand for: the total is the fp32 model's plus the adapter.
    counts = adapters.trainable_parameters(model)
    fp32_body = sum(p.numel() for p in AutoModel.from_pretrained(tiny(arch)).parameters())
    if arch in ENCODERS:  # the classifier holds the body and the head
        assert counts["total"] == fp32_body + counts["trainable"]
    else:  # the head exists twice: the frozen original and the trained copy
        head = (32 + 1) * len(SCHEMA)
        assert counts["total"] == fp32_body + counts["trainable"] + head
    assert sum(p.numel() for p in model.parameters()) < counts["total"]  # what a naive count would say

    batch = batch_of(family)
    train_step(cfg, family, batch)
    before = logits(family, batch)
    family.save(tmp_path)
    after = logits(family_module(arch).load(cfg, SCHEMA, tmp_path), batch)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_qlora_evaluation_does_not_switch_the_4bit_layers_to_an_inference_kernel(tiny):
    """bitsandbytes would repack the weights for a kernel without gradients at the first eval (see adapters)."""
    cfg, family = build("llama", tiny, {"method": "qlora", "r": 4, "dropout": 0.0})  # llama has no other dropout
    batch = batch_of(family)
    train_step(cfg, family, batch)
    evaluated = logits(family, batch)  # eval mode, no gradients: where the repacking would happen
    layers = [m for m in family.model.modules() if type(m).__name__ == "Linear4bit"]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    family.model.train()
    training = family.model(**batch)
    torch.testing.assert_close(training["logits"].detach(), evaluated, rtol=0, atol=1e-6)
    training["loss"].backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in family.model.named_parameters()
        if p.requires_grad and "lora_B" in n
    )


# --- the decoder family ---------------------------------------------------------------------------


def test_decoder_pads_with_eos_on_the_right_and_padding_does_not_change_logits(tiny):
    cfg, family = build("llama", tiny, {"method": "lora", "r": 4})
    tokenizer_eos = 4
    assert family.model.config.pad_token_id == tokenizer_eos
    train_step(cfg, family, batch_of(family))  # a non-trivial adapter
    short = batch_of(family, ["so happy"], None)
    padded = batch_of(family, ["so happy", "a much longer text that forces padding"], None)
    assert padded["input_ids"].shape[1] > short["input_ids"].shape[1]
    assert padded["input_ids"][0, -1].item() == tokenizer_eos and padded["attention_mask"][0, -1].item() == 0
    torch.testing.assert_close(logits(family, padded)[0], logits(family, short)[0], rtol=1e-5, atol=1e-5)


def test_decoder_head_has_a_bias_at_the_label_priors_and_learns_at_the_head_rate(tiny):
    cfg, family = build("qwen2", tiny, {"method": "lora", "r": 4})
    head = decoder.head_module(family.model)
    assert isinstance(head, decoder.ScoreHead) and head.weight.requires_grad and head.bias.requires_grad
    np.testing.assert_allclose(head.bias.detach().numpy(), label_prior_logits(LABELS), rtol=1e-6)
    cfg2 = cfg.model_copy(update={"training": cfg.training.model_copy(update={"head_learning_rate": 0.5})})
    groups = param_groups(family, cfg2.training)
    head_ids = {id(head.weight), id(head.bias)}
    assert all(g["lr"] == 0.5 for g in groups if any(id(p) in head_ids for p in g["params"]))
    assert all(g["lr"] == 1e-2 for g in groups if not any(id(p) in head_ids for p in g["params"]))


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_decoder_gradient_checkpointing_keeps_every_adapter_learning(method, tiny):
    cfg, family = build("mistral", tiny, {"method": method, "r": 4}, gradient_checkpointing=True)
    assert family.model.get_base_model().model.gradient_checkpointing
    family.model.train()
    family.model(**batch_of(family))["loss"].backward()
    lora_b = [(n, p) for n, p in family.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora_b)


def test_decoder_full_fine_tune_saves_the_whole_model_with_its_head_bias(tiny, tmp_path):
    cfg, family = build("llama", tiny, None)
    assert all(p.requires_grad for p in family.model.parameters())
    batch = batch_of(family)
    train_step(cfg, family, batch)
    before = logits(family, batch)
    family.save(tmp_path)
    assert (tmp_path / "model" / "model.safetensors").is_file() and not (tmp_path / "adapter").exists()
    torch.testing.assert_close(logits(decoder.load(cfg, SCHEMA, tmp_path), batch), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch,method", [("llama", "lora"), ("bert", "ia3")])
def test_merge_on_export_writes_a_merged_model_with_the_same_logits(arch, method, tiny, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    cfg, family = build(arch, tiny, {"method": method, "r": 4, "merge_on_export": True})
    batch = batch_of(family)
    train_step(cfg, family, batch)
    before = logits(family, batch)
    family.save(tmp_path)
    if arch in DECODERS:
        merged = decoder.load_full_model(tmp_path / "merged").eval()
        with torch.no_grad():
            after = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    else:
        body = AutoModel.from_pretrained(tmp_path / "body_merged")
        model = encoder.EncoderClassifier(body, len(SCHEMA), cfg.model.pooling, cfg.model.dropout)
        model.head.load_state_dict(load_file(str(tmp_path / "head.safetensors")))
        model.eval()
        with torch.no_grad():
            after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert adapters.adapted_modules(
        family.model if arch in DECODERS else family.model.body
    )  # the live model kept its adapter


@pytest.mark.parametrize("arch,method", [("llama", "qlora"), ("bert", "lora")])
def test_the_trainer_fits_an_adapter_model_and_predicts(arch, method, tiny, tmp_path):
    """Through ``training.fit`` (the HF Trainer: evaluations, best checkpoint restored) and ``predict_logits``."""
    from emotion_core.training.batch_logits import predict_logits
    from emotion_core.training.fit import fit

    cfg = run_config(arch, tiny(arch), {"method": method, "r": 4})
    cfg = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(update={"epochs": 1.0, "batch_size": 8, "evaluations_per_epoch": 2})
        }
    )
    texts, labels = TEXTS * 3, np.concatenate([LABELS] * 3)
    family = family_module(arch).build(cfg, SCHEMA, texts, labels)
    stats = fit(
        cfg,
        family,
        family.make_dataset(texts, labels),
        family.make_dataset(TEXTS, LABELS),
        tmp_path / "work",
        train_labels=labels,
    )
    assert stats.steps == 3 and stats.best_validation_macro_f1 is not None
    assert adapters.adapted_modules(peft_part(arch, family))  # the best checkpoint went back into the same model
    predicted = predict_logits(family, TEXTS)
    assert predicted.shape == (len(TEXTS), len(SCHEMA)) and np.isfinite(predicted).all()


@pytest.mark.parametrize("arch,method", [("llama", "qlora"), ("bert", "lora")])
def test_an_adapter_run_resumes_from_its_store_checkpoint_to_the_same_weights(arch, method, tiny, tmp_path):
    """Checkpoint (adapter + head, optimizer, schedule, RNG) in the store, interrupted, resumed = never interrupted."""
    from emotion_core.store import open_store
    from emotion_core.training.batch_logits import predict_logits
    from emotion_core.training.checkpoints import RunCheckpoints
    from emotion_core.training.fit import fit

    cfg = run_config(arch, tiny(arch), {"method": method, "r": 4})
    cfg = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(
                update={
                    "epochs": 2.0,
                    "batch_size": 4,
                    "evaluations_per_epoch": 2,
                    "early_stopping_patience": None,
                    "checkpoint_every_steps": 3,
                }
            )
        }
    )
    texts, labels = TEXTS * 4, np.concatenate([LABELS] * 4)

    events = []

    def train(work, checkpoints=None):
        torch.manual_seed(0)
        family = family_module(arch).build(cfg, SCHEMA, texts, labels)
        resume = checkpoints.restore(work) if checkpoints is not None else None
        stats = fit(
            cfg,
            family,
            family.make_dataset(texts, labels),
            family.make_dataset(TEXTS, LABELS),
            work,
            progress=events.append,
            train_labels=labels,
            checkpoints=checkpoints,
            resume=resume,
        )
        return family, stats

    straight, _ = train(tmp_path / "straight")
    store = open_store(tmp_path / "store")

    class Interrupted(Exception):
        pass

    class DiesAfterFirstUpload(RunCheckpoints):
        def upload(self, step, *args, **kwargs):
            super().upload(step, *args, **kwargs)
            raise Interrupted(step)

    with pytest.raises(Interrupted):
        train(tmp_path / "first", DiesAfterFirstUpload(store, "adapter-run", "fp"))
    events.clear()
    resumed, stats = train(tmp_path / "second", RunCheckpoints(store, "adapter-run", "fp"))
    assert stats.resumed_from_step == 3 and stats.steps == len(texts) // 4 * 2
    assert events[0]["event"] == "begin" and events[0]["step"] == 3  # it went on from step 3, not from 0
    torch.testing.assert_close(
        torch.from_numpy(predict_logits(resumed, TEXTS)),
        torch.from_numpy(predict_logits(straight, TEXTS)),
        rtol=1e-4,
        atol=1e-4,
    )
