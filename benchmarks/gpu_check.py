"""GPU check: one command that measures what a lent GPU says about the project, written to one JSON file.

    python benchmarks/gpu_check.py [--out FILE] [--data-dir DIR] [--only encoder,llama,oom]   # on a GPU
    python benchmarks/gpu_check.py --cpu-smoke                                                # anywhere, < 2 min
    python benchmarks/gpu_check.py --prepare-data                 # copy a GoEmotions subset to carry along

Sections (each in its own process, so a crash or an OOM in one leaves the others' figures):
- ``device``: the card, CUDA, bf16 support, package versions;
- ``encoder``: a roberta-base-sized encoder (random weights from a config; no hub) trained in bf16
  through the project's path (``build_family`` + ``fit``, the shipped ``roberta-base.yaml`` recipe)
  against a plain HF ``Trainer`` on the same model and rows (``AutoModelForSequenceClassification``,
  defaults, ``bf16=True``, a list dataset: ``datasets`` is not needed); samples/s as timed by
  ``benchmarks/encoder_vs_trainer.py`` (its callback: train loop minus logging/evaluation/saving);
- ``qlora_vs_lora``: peak GPU memory and tokens/s of LoRA and QLoRA on a random Llama-3.2-1B-sized
  model through the project's decoder family (``benchmarks/qlora_vs_lora.py``'s child and shape);
- ``oom_halving``: ``fit`` with a per-device batch that does not fit: a real CUDA out-of-memory error
  (the caching allocator capped at ``--oom-cap-gib`` with ``set_per_process_memory_fraction``, so it
  happens in seconds on a 141 GiB card), the batch halved (gradient accumulation doubled) until it
  fits, and training finished;
- ``device_monitor``: ``emotion_core.monitoring.DeviceMonitor`` samples taken while the encoder trained.

Data: ``--data-dir`` (GoEmotions TSVs: ``train.tsv``, ``dev.tsv``, ``labels.txt``), else
``$EMOTION_DATA_DIR/goemotions``, else ``benchmarks/gpu_data/goemotions`` (``--prepare-data`` writes it,
gitignored: carry it), else synthetic texts (recorded). A WordPiece tokenizer is trained on the texts
(no hub): both arms and both variants use it. ``--cpu-smoke``: the same code on CPU with tiny shapes and
sizes (fp32; QLoRA skipped: its 4-bit kernels need CUDA; the OOM injected by a forward hook: a CPU
has no CUDA allocator); every key is still written, ``mode`` says ``cpu-smoke``.
Needs torch, transformers, peft, accelerate, numpy, pyyaml, pydantic, scipy, scikit-learn (``fit``'s
validation metrics) and, for QLoRA, bitsandbytes: ``benchmarks/gpu_check.sh`` installs those missing
from ``benchmarks/gpu_wheels/`` offline. Not needed: polars, datasets, prefect.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402

PREPARED = ROOT / "benchmarks" / "gpu_data" / "goemotions"
ROBERTA_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "vocab_size": 50265,
    "max_position_embeddings": 514,
}
SIZES = {
    "cuda": {
        "encoder_shape": ROBERTA_BASE,
        "train_rows": 6000,
        "val_rows": 500,
        "max_length": 128,
        "batch_size": 32,
        "llama_shape": None,
        "llama_steps": 30,
        "llama_warmup": 5,
        "llama_batch": 16,
        "llama_max_length": 128,
        "oom_rows": 1024,
        "oom_batch": 512,
        "oom_max_length": 256,
        "vocab": 30000,
    },
    "cpu": {
        "encoder_shape": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "vocab_size": 4000,
            "max_position_embeddings": 130,
        },
        "train_rows": 192,
        "val_rows": 48,
        "max_length": 32,
        "batch_size": 16,
        "llama_shape": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "vocab_size": 4000,
        },
        "llama_steps": 4,
        "llama_warmup": 1,
        "llama_batch": 8,
        "llama_max_length": 32,
        "oom_rows": 64,
        "oom_batch": 32,
        "oom_max_length": 32,
        "vocab": 2000,
    },
}
CPU_OOM_ROWS = 8  # --cpu-smoke: a forward on more rows than this raises torch.OutOfMemoryError


# ------------------------------------------------------------------------------------------- data


def read_goemotions(folder: Path, split: str, rows: int | None) -> tuple[list[str], list[list[int]]]:
    """Texts and label ids of a GoEmotions TSV (``text<TAB>ids<TAB>comment id``), first ``rows`` rows."""
    texts, labels = [], []
    with open(folder / f"{split}.tsv", encoding="utf-8", newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if rows is not None and len(texts) >= rows:
                break
            if len(row) < 2:
                raise SystemExit(f"{folder / f'{split}.tsv'} line {line_no}: expected text<TAB>label ids")
            texts.append(row[0])
            labels.append([int(x) for x in row[1].split(",")])
    return texts, labels


def synthetic(rows: int, seed: int) -> tuple[list[str], list[list[int]]]:
    """Random texts of 5-40 words from a small vocabulary, one or two labels each (no data at hand)."""
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)] + "i you we love hate sad happy angry this that so very not".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(rows)]
    return texts, [sorted({rng.randrange(28) for _ in range(rng.choice([1, 1, 1, 2]))}) for _ in range(rows)]


def data_folder(arg: str | None) -> Path | None:
    candidates = [Path(arg)] if arg else []
    if os.environ.get("EMOTION_DATA_DIR"):
        candidates.append(Path(os.environ["EMOTION_DATA_DIR"]) / "goemotions")
    candidates.append(PREPARED)
    return next((c for c in candidates if (c / "train.tsv").is_file() and (c / "dev.tsv").is_file()), None)


def load_rows(folder: Path | None, train_rows: int, val_rows: int) -> dict:
    """``{train, validation: (texts, label ids)}``, label names and where they came from."""
    if folder is None:
        return {
            "train": synthetic(train_rows, 1),
            "validation": synthetic(val_rows, 2),
            "names": [f"label{i}" for i in range(28)],
            "source": "synthetic (no GoEmotions folder found)",
        }
    names = [n.strip() for n in (folder / "labels.txt").read_text(encoding="utf-8").splitlines() if n.strip()]
    return {
        "train": read_goemotions(folder, "train", train_rows),
        "validation": read_goemotions(folder, "dev", val_rows),
        "names": names,
        "source": str(folder),
    }


def multi_hot(ids: list[list[int]], width: int):
    import numpy as np

    matrix = np.zeros((len(ids), width), dtype=np.float32)
    for row, labels in enumerate(ids):
        matrix[row, labels] = 1.0
    return matrix


def prepare_data(source: Path, rows: int, val_rows: int) -> Path:
    """Copy the first rows of GoEmotions into ``benchmarks/gpu_data/goemotions`` (gitignored) to carry along."""
    PREPARED.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", rows), ("dev", val_rows)):
        lines = (source / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (PREPARED / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    shutil.copyfile(source / "labels.txt", PREPARED / "labels.txt")
    return PREPARED


def long_texts(texts: list[str], words: int) -> list[str]:
    """Texts of at least ``words`` words (neighbours joined): the OOM section needs full-length rows."""
    out = []
    for i in range(len(texts)):
        parts, j = [], i
        while sum(len(p.split()) for p in parts) < words:
            parts.append(texts[j % len(texts)])
            j += 1
        out.append(" ".join(parts))
    return out


# ---------------------------------------------------------------------------------------- models


def train_tokenizer(texts: list[str], vocab_size: int, folder: Path):
    """A BERT-style WordPiece tokenizer trained on ``texts`` (the hub is not reachable), saved to ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.save_pretrained(folder)
    return fast


def make_random_encoder(folder: Path, shape: dict, tokenizer) -> dict:
    """A randomly initialised RoBERTa body of ``shape`` saved (fp32) with ``tokenizer``; its facts."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    if len(tokenizer) > shape["vocab_size"]:
        raise SystemExit(f"tokenizer has {len(tokenizer)} ids, more than the vocabulary {shape['vocab_size']}")
    config = RobertaConfig(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    model = RobertaModel(config, add_pooling_layer=False)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return {
        "shape": shape,
        "parameters": n_params,
        "architecture": "RobertaModel (random init)",
        "tokenizer": f"WordPiece trained on the training texts, {len(tokenizer)} ids",
    }


# ----------------------------------------------------------------------------------------- children


def _config(path: Path, model: str, spec: dict, training: dict | None = None):
    from emotion_core.config import load_run_config

    return load_run_config(
        path,
        overrides={
            "model": {"model": model, "max_length": spec["max_length"]},
            "training": {
                "epochs": 1,
                "batch_size": spec["batch_size"],
                "early_stopping_patience": None,
                "evaluations_per_epoch": 1,
                **(training or {}),
            },
        },
    )


def _rows(spec: dict):
    from emotion_core.labels import LabelSchema

    rows = json.loads(Path(spec["rows_file"]).read_text(encoding="utf-8"))
    schema = LabelSchema(tuple(rows["names"]))
    train = (rows["train"][0], multi_hot(rows["train"][1], len(schema)))
    val = (rows["validation"][0], multi_hot(rows["validation"][1], len(schema)))
    return train, val, schema


def child_encoder_project(spec: dict) -> dict:
    """roberta-sized encoder through ``build_family`` + ``fit``, timed as encoder_vs_trainer times it."""
    import torch

    import emotion_core.training.fit as fit_module
    from benchmarks.encoder_vs_trainer import _instrument, _optimizer_facts, _timing, _warm
    from emotion_core.models import build_family
    from emotion_core.monitoring import DeviceMonitor

    (texts, labels), (val_texts, val_labels), schema = _rows(spec)
    cfg = _config(ROOT / "deployments" / "configs" / "roberta-base.yaml", spec["model_folder"], spec)
    fit_module.seed_everything(cfg.training.seed)
    family = build_family(cfg, schema, texts, labels)
    train_ds, val_ds = family.make_dataset(texts, labels), family.make_dataset(val_texts, val_labels)
    _warm(family.model, family.collate([train_ds[i] for i in range(spec["batch_size"])]))
    holder, build = {}, fit_module.build_trainer

    def instrumented(*args, **kwargs):  # fit() calls this; the check only watches the trainer it returns
        trainer, precision = build(*args, **kwargs)
        holder["state"], holder["trainer"] = _instrument(trainer), trainer
        return trainer, precision

    fit_module.build_trainer = instrumented
    monitor = DeviceMonitor(interval_s=spec["monitor_interval_s"])
    samples = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-project-") as tmp, monitor:
        started = time.perf_counter()
        stats = fit_module.fit(
            cfg,
            family,
            train_ds,
            val_ds,
            Path(tmp) / "work",
            train_labels=labels,
            progress=lambda event: samples.append(event.get("device")),
            monitor=monitor,
        )
        wall = time.perf_counter() - started
        snapshot = monitor.snapshot()
    summary = monitor.summary()
    return {
        "arm": "project",
        **_timing(holder["state"], wall),
        "precision": stats.precision,
        "fit_reported_samples_per_s": round(stats.train_samples_per_second, 2),
        "best_validation_macro_f1": stats.best_validation_macro_f1,
        **_optimizer_facts(holder["trainer"]),
        "device_monitor": {
            "kind": monitor.kind,
            "interval_s": monitor.interval_s,
            "summary": summary,
            "latest": snapshot,
            "progress_event_samples": len([s for s in samples if s]),
        },
        "torch_threads": torch.get_num_threads(),
    }


class _ListDataset:
    """Rows as dicts: what a plain script hands the Trainer when it does not use ``datasets``."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def child_encoder_plain(spec: dict) -> dict:
    """The same body and rows through a textbook HF Trainer (bf16 on a GPU, as the project trains)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, set_seed

    from benchmarks.encoder_vs_trainer import _instrument, _optimizer_facts, _timing, _warm

    (texts, labels), _, schema = _rows(spec)
    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_folder"])
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model_folder"], num_labels=len(schema), problem_type="multi_label_classification"
    )
    encoded = tokenizer(texts, truncation=True, max_length=spec["max_length"])
    rows = [
        {"input_ids": ids, "attention_mask": mask, "labels": label.tolist()}
        for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], labels)
    ]
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory(prefix="gpu-check-plain-") as tmp:
        args = TrainingArguments(
            output_dir=str(Path(tmp) / "out"),
            per_device_train_batch_size=spec["batch_size"],
            num_train_epochs=1,
            bf16=bf16,
            report_to="none",
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_ListDataset(rows), processing_class=tokenizer)
        _warm(model, trainer.data_collator(rows[: spec["batch_size"]]))
        state = _instrument(trainer)
        started = time.perf_counter()
        output = trainer.train()
        wall = time.perf_counter() - started
    return {
        "arm": "plain",
        **_timing(state, wall),
        "train_loss": output.training_loss,
        "precision": "bf16" if bf16 else "fp32",
        **_optimizer_facts(trainer),
        "torch_threads": torch.get_num_threads(),
    }


def child_llama(spec: dict) -> dict:
    """LoRA or QLoRA on the random Llama: ``qlora_vs_lora.child`` on our rows."""
    from benchmarks import qlora_vs_lora

    (texts, labels), _, schema = _rows(spec)
    config = str(qlora_vs_lora.CONFIGS[spec["variant"]])
    return qlora_vs_lora.child(
        {
            **spec,
            "config": config,
            "model": spec["model_folder"],
            "steps": spec["llama_steps"],
            "warmup_steps": spec["llama_warmup"],
            "batch_size": spec["llama_batch"],
            "max_length": spec["llama_max_length"],
            "rows": len(texts),
            "data_seed": 13,
            "gradient_checkpointing": False,
            "batching": "grouped",
        },
        loaded=(texts, labels, schema),
    )


def child_oom(spec: dict) -> dict:
    """``fit`` from a per-device batch that does not fit: it halves the batch on a real OOM and finishes."""
    import torch

    from emotion_core.models import build_family
    from emotion_core.training.fit import fit, seed_everything

    (texts, labels), (val_texts, val_labels), schema = _rows(spec)
    texts = long_texts(texts, spec["max_length"])  # every row at max_length: memory grows with the batch
    cfg = _config(
        ROOT / "deployments" / "configs" / "roberta-base.yaml",
        spec["model_folder"],
        spec,
        {"min_batch_size": 1, "eval_batch_size": 8},
    )
    seed_everything(cfg.training.seed)
    family = build_family(cfg, schema, texts, labels)
    source = "cuda"
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        cap = spec["oom_cap_gib"] * 2**30
        if 0 < cap < total:
            torch.cuda.set_per_process_memory_fraction(cap / total)  # the allocator raises OOM past the cap
    else:
        source = f"injected (cpu smoke: a forward on more than {CPU_OOM_ROWS} rows raises torch.OutOfMemoryError)"

        def too_big(module, args, kwargs):
            if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[0] > CPU_OOM_ROWS and module.training:
                raise torch.OutOfMemoryError("injected: no CUDA on this machine")

        family.model.register_forward_pre_hook(too_big, with_kwargs=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-oom-") as tmp:
        started = time.perf_counter()
        stats = fit(
            cfg,
            family,
            family.make_dataset(texts, labels),
            family.make_dataset(val_texts, val_labels),
            Path(tmp) / "work",
            train_labels=labels,
        )
        wall = time.perf_counter() - started
    peak = round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None
    return {
        "source": source,
        "cap_gib": spec["oom_cap_gib"] if torch.cuda.is_available() else None,
        "requested_batch_size": spec["batch_size"],
        "oom_adjustments": stats.oom_adjustments,
        "final_per_device_batch_size": stats.per_device_batch_size,
        "final_gradient_accumulation_steps": stats.gradient_accumulation_steps,
        "effective_batch_size": stats.per_device_batch_size * stats.gradient_accumulation_steps,
        "steps": stats.steps,
        "epochs_completed": stats.epochs_completed,
        "finished": stats.epochs_completed >= 1,
        "wall_s": round(wall, 1),
        "peak_gpu_allocated_mb": peak,
        "max_length": spec["max_length"],
    }


CHILDREN = {
    "encoder-project": child_encoder_project,
    "encoder-plain": child_encoder_plain,
    "llama": child_llama,
    "oom": child_oom,
}


# ------------------------------------------------------------------------------------------ parent


def device_facts() -> dict:
    import torch

    facts = {**_common.machine(), "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            device_count=torch.cuda.device_count(),
            driver=_driver(),
        )
    return facts


def _driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    import subprocess

    out = (
        subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        .stdout.strip()
        .splitlines()
    )
    return out[0] if out else None


def versions() -> dict:
    from importlib import metadata

    out = _common.versions()
    for name in ("pydantic", "pydantic_core", "scipy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run(name: str, spec: dict, tmp: Path, timeout: float) -> dict:
    print(f"{name} ...", flush=True)
    result = _common.run_child(Path(__file__), {**spec, "child": name}, tmp / f"{name}.log", timeout=timeout)
    print(
        "  "
        + json.dumps(
            {
                k: result.get(k)
                for k in (
                    "status",
                    "samples_per_s",
                    "tokens_per_s",
                    "error",
                    "peak_gpu_allocated_mb",
                    "oom_adjustments",
                )
                if k in result
            }
        ),
        flush=True,
    )
    return result


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def check(args) -> dict:
    import torch

    mode = "cpu-smoke" if args.cpu_smoke else "cuda"
    if mode == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu-smoke, or on a GPU machine")
    sizes = SIZES["cpu" if args.cpu_smoke else "cuda"]
    only = set(args.only.split(",")) if args.only else {"encoder", "llama", "oom"}
    started = time.perf_counter()
    payload = {
        "check": "gpu_check",
        "mode": mode,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device_facts(),
        "versions": versions(),
    }
    folder = data_folder(args.data_dir)
    rows = load_rows(folder, sizes["train_rows"], sizes["val_rows"])
    payload["data"] = {
        "source": rows["source"],
        "train_rows": len(rows["train"][0]),
        "validation_rows": len(rows["validation"][0]),
        "labels": len(rows["names"]),
    }
    skipped = {"status": "skipped", "reason": "not in --only"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        rows_file = tmp / "rows.json"
        rows_file.write_text(json.dumps(rows), encoding="utf-8")
        tokenizer = train_tokenizer(rows["train"][0], sizes["vocab"], tmp / "tokenizer")
        base = {
            "rows_file": str(rows_file),
            "max_length": sizes["max_length"],
            "batch_size": sizes["batch_size"],
            "monitor_interval_s": 0.5 if args.cpu_smoke else 1.0,
        }
        encoder_folder = tmp / "random-roberta"
        encoder_facts = make_random_encoder(encoder_folder, sizes["encoder_shape"], tokenizer)
        base["model_folder"] = str(encoder_folder)

        if "encoder" in only:
            project = run("encoder-project", base, tmp, args.timeout)
            plain = run("encoder-plain", base, tmp, args.timeout)
            monitor = project.pop("device_monitor", None)
            payload["encoder"] = {
                "model": encoder_facts,
                "max_length": sizes["max_length"],
                "batch_size": sizes["batch_size"],
                "project": project,
                "plain": plain,
                "project_over_plain_samples_per_s": ratio(project.get("samples_per_s"), plain.get("samples_per_s")),
            }
            payload["device_monitor"] = monitor or {"status": "failed", "reason": "the project arm did not finish"}
        else:
            payload["encoder"] = payload["device_monitor"] = skipped

        if "llama" in only:
            from benchmarks.qlora_vs_lora import LLAMA_1B, make_random_llama

            shape = sizes["llama_shape"] or LLAMA_1B
            llama_folder = tmp / "random-llama"
            llama_facts = make_random_llama(llama_folder, shape, tokenizer)
            llama = {
                **base,
                "model_folder": str(llama_folder),
                **{k: sizes[k] for k in ("llama_steps", "llama_warmup", "llama_batch", "llama_max_length")},
            }
            lora = run("llama", {**llama, "variant": "lora"}, tmp, args.timeout)
            if torch.cuda.is_available():
                qlora = run("llama", {**llama, "variant": "qlora"}, tmp, args.timeout)
            else:
                qlora = {"status": "skipped", "reason": "cpu smoke: bitsandbytes' 4-bit training kernels need CUDA"}
            memory = "peak_gpu_allocated_mb" if torch.cuda.is_available() else "peak_rss_mb"
            payload["qlora_vs_lora"] = {
                "model": llama_facts,
                "memory_measure": memory,
                "lora": lora,
                "qlora": qlora,
                "qlora_over_lora_peak_memory": ratio(qlora.get(memory), lora.get(memory)),
                "qlora_over_lora_tokens_per_s": ratio(qlora.get("tokens_per_s"), lora.get("tokens_per_s")),
            }
            shutil.rmtree(llama_folder, ignore_errors=True)
        else:
            payload["qlora_vs_lora"] = skipped

        if "oom" in only:
            oom = {
                **base,
                "batch_size": sizes["oom_batch"],
                "max_length": sizes["oom_max_length"],
                "oom_cap_gib": args.oom_cap_gib,
            }
            rows_oom = dict(
                rows,
                train=(rows["train"][0][: sizes["oom_rows"]], rows["train"][1][: sizes["oom_rows"]]),
                validation=(rows["validation"][0][:32], rows["validation"][1][:32]),
            )
            oom_file = tmp / "rows-oom.json"
            oom_file.write_text(json.dumps(rows_oom), encoding="utf-8")
            result = run("oom", {**oom, "rows_file": str(oom_file)}, tmp, args.timeout)
            result["halved"] = bool(result.get("oom_adjustments"))
            payload["oom_halving"] = result
        else:
            payload["oom_halving"] = skipped
    payload["wall_s"] = round(time.perf_counter() - started, 1)
    sections = ("encoder", "qlora_vs_lora", "oom_halving")
    payload["failed"] = [s for s in sections if _failed(payload[s])]
    return payload


def _failed(section: dict) -> bool:
    if section.get("status") == "failed":
        return True
    return any(isinstance(v, dict) and v.get("status") == "failed" for v in section.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: the same code, in seconds")
    parser.add_argument(
        "--prepare-data",
        action="store_true",
        help=f"copy a GoEmotions subset from --data-dir / $EMOTION_DATA_DIR to {PREPARED} and exit",
    )
    parser.add_argument("--data-dir", default=None, help="a GoEmotions folder (train.tsv, dev.tsv, labels.txt)")
    parser.add_argument("--only", default=None, help="comma-separated sections: encoder, llama, oom (default: all)")
    parser.add_argument(
        "--oom-cap-gib",
        type=float,
        default=8.0,
        help="GPU memory the OOM section may use (0: the whole card); the rest is never touched",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per section process")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        _common.emit(CHILDREN[spec["child"]](spec))
        return 0
    if args.prepare_data:
        source = data_folder(args.data_dir)
        if source is None or source == PREPARED:
            raise SystemExit("no GoEmotions folder: pass --data-dir or set EMOTION_DATA_DIR")
        print(f"written: {prepare_data(source, SIZES['cuda']['train_rows'], SIZES['cuda']['val_rows'])}")
        return 0
    payload = check(args)
    name = "cpu-smoke" if args.cpu_smoke else _common.device_slug()
    out = _common.write_json(Path(args.out or _common.RESULTS / f"gpu_check-{name}.json"), payload)
    print(f"wall {payload['wall_s']} s; failed sections: {payload['failed'] or 'none'}; written: {out}")
    return 1 if payload["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
