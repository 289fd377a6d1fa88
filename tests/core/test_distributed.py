"""Distributed training (``resources.gpus`` > 1) on CPU: 2 gloo ranks started by torchrun against one process.

Tiny random models (a 2-layer BERT encoder, a 2-layer Llama with LoRA; nothing downloaded) on a small
tabular CSV. Dropout is 0 in these configs: each rank draws its own dropout masks, so with dropout the
2-rank run and the 1-process run would differ by design. The global batch (16) divides the training rows,
so every optimizer step sees the same 16 rows in both runs (the last batch is not padded across ranks).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from emotion_core import pipeline
from emotion_core.config import parse_run_config
from emotion_core.data import load_data
from emotion_core.errors import ConfigError, OutOfMemoryAtMinBatch, RankFailed
from emotion_core.models import build_family
from emotion_core.models.ffnn import FFNNClassifier
from emotion_core.runs import read_run
from emotion_core.store import open_store
from emotion_core.training import distributed, ranks
from emotion_core.training import fit as fit_module

WORDS = ["happy", "lovely", "calm", "furious", "mad", "fine", "day", "sad", "great", "angry", "ok", "bright"]
TRAIN_ROWS = 64  # after the validation/test carve-outs of 100 rows: a multiple of the global batch


def _tokenizer(decoder_style: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if decoder_style:
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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind ("encoder" | "decoder") -> folder with a random tiny model and its tokenizer."""
    import transformers as tf

    small = {
        "vocab_size": 32,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
    }
    folders = {}
    for kind in ("encoder", "decoder"):
        folder = tmp_path_factory.mktemp(kind)
        torch.manual_seed(0)
        if kind == "encoder":
            model = tf.AutoModel.from_config(
                tf.BertConfig(**small, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            )
        else:
            model = tf.AutoModelForCausalLM.from_config(
                tf.LlamaConfig(**small, num_key_value_heads=1, eos_token_id=4, bos_token_id=None)
            )
        model.save_pretrained(folder, safe_serialization=True)
        _tokenizer(kind == "decoder").save_pretrained(folder)
        folders[kind] = folder
    return folders


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp-data")
    rng = np.random.default_rng(0)
    rows = ["id,text,joy,anger"]
    for i in range(100):
        joy, anger = int(rng.random() < 0.5), int(rng.random() < 0.4)
        words = rng.choice(WORDS[6:], 3).tolist() + (["happy", "lovely"] if joy else ["calm"])
        words += ["mad"] if anger else []
        rows.append(f"r{i},{' '.join(words)},{joy},{anger}")
    path = folder / "train.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def config(kind: str, folder, csv, gpus: int, training: dict | None = None, strategy: str = "ddp"):
    model = {"family": kind, "model": str(folder), "max_length": 16}
    if kind == "decoder":
        model["adapter"] = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
    else:
        model["dropout"] = 0.0
    return parse_run_config(
        {
            "name": f"ddp-{kind}",
            "model": model,
            "data": {
                "dataset": "tabular",
                "path": str(csv),
                "id_column": "id",
                "validation_fraction": 0.18,
                "test_fraction": 0.18,
            },
            "training": {
                "epochs": 2,
                "batch_size": 16,
                "eval_batch_size": 16,
                "learning_rate": 1e-3,
                "head_learning_rate": 1e-3,
                "early_stopping_patience": None,
                "evaluations_per_epoch": 2,
                "group_by_length": False,
                "seed": 7,
                **(training or {}),
            },
            "resources": {"gpu_memory_gb": 1, "gpus": gpus, "strategy": strategy},
        }
    )


def manifest_of(folder) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture
def fast_timeout(monkeypatch):
    monkeypatch.setenv(ranks.TIMEOUT_ENV, "30")  # a lost peer ends a collective in 30 s, not 300


# -- refusals (no torchrun needed) -------------------------------------------------------------------------


def test_several_gpus_in_one_process_are_refused_never_data_parallel(tiny, csv, tmp_path):
    store = open_store(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"resources.gpus=2 needs 2 ranks started by torchrun.*DataParallel"):
        pipeline.train_run(config("encoder", tiny["encoder"], csv, gpus=2), store)
    assert store.list_runs() == []


def test_a_global_batch_that_does_not_split_and_fsdp_on_cpu_are_refused(tiny, csv, tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size=15 is the global batch and must divide by resources.gpus=2"):
        distributed.launch(config("encoder", tiny["encoder"], csv, gpus=2, training={"batch_size": 15}), str(tmp_path))
    cfg = config("encoder", tiny["encoder"], csv, gpus=2, strategy="fsdp")
    with pytest.raises(ConfigError, match="strategy=fsdp needs CUDA GPUs; on CPU use resources.strategy: ddp"):
        distributed.launch(cfg, str(tmp_path))


def test_qlora_rank_loads_onto_its_own_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ranks.device_map() is None  # one process: the loader's default placement
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ranks.device_map() == {"": 1}


def test_a_dead_rank_is_named_ahead_of_the_ranks_that_lost_it(tmp_path):
    (tmp_path / "torchrun.log").write_text(
        "Root Cause (first observed failure):\n[0]:\n  time      : 2026\n  host      : h\n"
        "  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 10)\n"
        "[1]:\n  rank      : 1 (local_rank: 1)\n  exitcode  : 1 (pid: 11)\n"
    )
    (tmp_path / "error-rank0.json").write_text(
        json.dumps({"rank": 0, "type": "DistBackendError", "message": "[gloo] Connection closed by peer", "time": 1.0})
    )
    assert distributed.failure(tmp_path, 2).startswith("rank 1 of 2 died without an error (exit code 1")


# -- 2 gloo ranks against one process ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_two_gloo_ranks_reach_the_logits_of_one_process_and_publish_once(kind, tiny, csv, tmp_path, fast_timeout):
    single = pipeline.train_config(config(kind, tiny[kind], csv, gpus=1), open_store(tmp_path / "single"))
    store = open_store(tmp_path / "store")
    events = []
    staging, run_id = distributed.launch(
        config(kind, tiny[kind], csv, gpus=2), str(tmp_path / "store"), progress=events.append
    )
    pipeline.publish_run(store, staging, run_id)

    assert store.list_runs() == [run_id]  # exactly one run, from rank 0
    assert not list((store.root / ".staging").iterdir())
    one, two = read_run(single.removeprefix("file://")), read_run(store.run_folder(run_id))
    assert one.manifest["data"]["rows"]["train"] == TRAIN_ROWS
    # DDP averages the two ranks' gradients of 8 rows each: the 16-row mean up to float summation order.
    np.testing.assert_allclose(two.logits("validation")[1], one.logits("validation")[1], atol=1e-4, rtol=0)
    manifest = two.manifest
    assert manifest["timing"]["steps"] == one.manifest["timing"]["steps"] == 2 * TRAIN_ROWS // 16
    entry = manifest["distributed"]
    assert entry["world_size"] == 2 and entry["strategy"] == "ddp" and entry["backend"] == "gloo"
    assert entry["per_rank_batch_size"] == 8 and [r["rank"] for r in entry["ranks"]] == [0, 1]
    assert all(r["device"] == "cpu" and r["device_usage"]["pid"] for r in entry["ranks"])
    assert entry["ranks"][0]["device_usage"]["pid"] != entry["ranks"][1]["device_usage"]["pid"]
    assert {e["event"] for e in events} >= {"begin", "evaluate", "end"}  # rank 0's progress reached the parent
    worst = float(np.abs(two.logits("validation")[1] - one.logits("validation")[1]).max())
    print(
        f"\n{kind}: max |logit diff| {worst:.2e}; "
        f"samples/s 1 process {one.manifest['timing']['train_samples_per_second']}, "
        f"2 gloo ranks {manifest['timing']['train_samples_per_second']}"
    )


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_naming_it_and_the_redispatched_run_resumes(
    tiny, csv, tmp_path, fast_timeout, monkeypatch
):
    store = open_store(tmp_path / "store")
    cfg = config("encoder", tiny["encoder"], csv, gpus=2, training={"checkpoint_every_steps": 3})
    monkeypatch.setenv(ranks.FAULT_ENV, "1:5")  # rank 1 exits hard after step 5; checkpoint at 3 is stored
    started = time.monotonic()
    with pytest.raises(RankFailed, match=r"rank 1 of 2 died without an error \(exit code 1"):
        distributed.launch(cfg, str(tmp_path / "store"), run_id="crashed")
    assert time.monotonic() - started < 120  # torchrun stops rank 0 at once; no collective waits its timeout
    assert store.list_runs() == [] and not list((store.root / ".staging").iterdir())  # nothing half-published
    assert store.latest_checkpoint("crashed")["step"] == 3

    monkeypatch.delenv(ranks.FAULT_ENV)
    staging, run_id = distributed.launch(cfg, str(tmp_path / "store"), run_id="crashed")  # the re-dispatch
    manifest = manifest_of(staging)
    assert run_id == "crashed" and manifest["resumed_from_step"] == 3 and manifest["timing"]["steps"] == 8
    pipeline.publish_run(store, staging, run_id)
    assert store.list_runs() == ["crashed"] and store.latest_checkpoint("crashed") is None
    # Resumed on 2 ranks from rank 0's checkpoint: the weights of one uninterrupted process.
    single = pipeline.train_config(config("encoder", tiny["encoder"], csv, gpus=1), open_store(tmp_path / "single"))
    np.testing.assert_allclose(
        read_run(store.run_folder("crashed")).logits("validation")[1],
        read_run(single.removeprefix("file://")).logits("validation")[1],
        atol=1e-4,
        rtol=0,
    )


def test_out_of_memory_on_a_rank_is_refused_saying_what_to_change(csv, tmp_path, monkeypatch):

    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    monkeypatch.setattr(FFNNClassifier, "forward", no_memory)
    # Rank 1 of 2, as torchrun would start it, minus the process group (the OOM comes before any collective).
    monkeypatch.setattr(ranks, "world", lambda: ranks.World(rank=1, local_rank=1, size=2))
    monkeypatch.setattr(ranks, "trainer_arguments", lambda cfg: {})
    cfg = parse_run_config(
        {
            "name": "ddp-oom",
            "model": {"family": "ffnn", "max_features": 200, "hidden_size": 8},
            "data": {"dataset": "tabular", "path": str(csv), "id_column": "id"},
            "training": {"epochs": 1, "batch_size": 16, "early_stopping_patience": None},
            "resources": {"gpus": 2},
        }
    )
    data = load_data(cfg.data)
    family = build_family(cfg, data.schema, data.texts("train"), data.labels("train"))
    with pytest.raises(OutOfMemoryAtMinBatch) as info:
        fit_module.fit(
            cfg,
            family,
            family.make_dataset(data.texts("train"), data.labels("train")),
            family.make_dataset(data.texts("validation"), data.labels("validation")),
            tmp_path / "work",
            train_labels=data.labels("train"),
        )
    message = str(info.value)
    assert "out of GPU memory on rank 1 at step 0 with 8 rows per rank" in message
    assert "batch halving is not done in distributed training. Lower training.batch_size" in message
