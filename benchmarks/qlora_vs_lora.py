"""QLoRA against LoRA on a decoder classifier: peak memory, training tokens/s and step time.

    python benchmarks/qlora_vs_lora.py [--steps 8] [--warmup-steps 2] [--batch-size 16] [--max-length 64]
        [--rounds 1] [--only lora|qlora] [--out FILE]
    python benchmarks/qlora_vs_lora.py --random-llama-1b [--steps 40] ...    # on a GPU

- Model: SmolLM2-135M-Instruct through ``deployments/configs/smollm2-{lora,qlora}.yaml`` (LoRA r 8 on every
  attention and MLP projection; QLoRA: 4-bit nf4 body, double quantisation); ``--random-llama-1b``: a random
  Llama of ~1B shape saved once (bf16, MiniLM's WordPiece tokenizer). Random weights train as fast as real
  ones; no F1 is reported.
- Each variant in its own process: ``build_family`` (the project's precision: bf16 on capable GPUs, fp32 on
  CPU), then a loop doing what ``fit``'s Trainer step does (autocast, the configured loss, backward, clipping,
  fused AdamW) on the same seeded batches (``--batching grouped``: length-sorted batches drawn at random;
  ``random``: random rows). Timed: collation + transfer + forward + backward + optimizer, warm-up excluded.
- Reported: trainable/total parameters, ``weights_mb``, peak memory (CUDA ``max_memory_allocated``, or CPU
  ``VmHWM``) over the whole process and over the training steps alone, tokens/s (also per CPU-second),
  samples/s, step times, padding efficiency, load time, load average. Prints a table and writes JSON
  (default ``benchmarks/results/qlora_vs_lora-<model>-<device>.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402

CONFIGS = {
    "lora": ROOT / "deployments" / "configs" / "smollm2-lora.yaml",
    "qlora": ROOT / "deployments" / "configs" / "smollm2-qlora.yaml",
}
LLAMA_1B = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 32000,
}


# ------------------------------------------------------------------------------------------ child


def _peak_memory(device: str) -> dict:
    import torch

    if device == "cuda":
        return {
            "peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        }
    return {"peak_rss_mb": _common.peak_rss_mb()}


def count_parameters(model) -> dict:
    """``pipeline.count_parameters`` without importing the pipeline (polars): the GPU check runs without it."""
    from emotion_core.models.adapters import trainable_parameters

    counts = trainable_parameters(model)
    stored = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {
        **counts,
        "trainable_percent": round(100.0 * counts["trainable"] / max(counts["total"], 1), 4),
        "weights_mb": round(stored / 2**20, 1),
    }


def child(spec: dict, loaded: tuple | None = None) -> dict:
    """One variant's run. ``loaded``: ``(texts, labels, schema)`` of the training rows instead of ``load_data``."""
    import numpy as np
    import torch

    from emotion_core.config import DataConfig, load_run_config
    from emotion_core.models import build_family
    from emotion_core.training.fit import resolve_precision, seed_everything
    from emotion_core.training.losses import trainer_loss
    from emotion_core.training.optimizer import adamw

    device = "cuda" if torch.cuda.is_available() else "cpu"
    data_cfg = DataConfig(
        dataset="goemotions",
        max_train_samples=spec["rows"],
        max_validation_samples=64,
        max_test_samples=64,
        seed=spec["data_seed"],
    )
    model_over = {"max_length": spec["max_length"], "gradient_checkpointing": spec["gradient_checkpointing"]}
    if spec.get("model"):
        model_over["model"] = spec["model"]
    cfg = load_run_config(
        spec["config"],
        overrides={
            "data": data_cfg.model_dump(mode="json"),
            "model": model_over,
            "training": {"batch_size": spec["batch_size"]},
        },
    )
    if loaded is None:
        from emotion_core.data import load_data

        data = load_data(cfg.data)
        texts, labels, schema = data.texts("train"), data.labels("train"), data.schema
    else:
        texts, labels, schema = loaded
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seed_everything(cfg.training.seed)
    started = time.perf_counter()
    family = build_family(cfg, schema, texts, labels)
    model = family.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if device == "cuda" and not getattr(base, "is_quantized", False):
        model.to(device)  # the Trainer moves a non-quantised model; a 4-bit one is placed on the GPU as it loads
    if device == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - started
    params = count_parameters(model)
    after_load = (
        {"gpu_allocated_after_load_mb": round(torch.cuda.memory_allocated() / 2**20, 1)}
        if device == "cuda"
        else {"rss_after_load_mb": _common.rss_mb()}
    )
    load_peak = _peak_memory(device)

    dataset = family.make_dataset(texts, labels)
    bs, total_steps = spec["batch_size"], spec["warmup_steps"] + spec["steps"]
    rng = np.random.default_rng(spec["data_seed"])
    if spec["batching"] == "grouped":
        # Like the Trainer's length grouping (texts of similar length share a batch), without its
        # longest-first order: the rows sorted by length, cut into batches, batches drawn at random.
        by_length = np.argsort([len(dataset[i]["input_ids"]) for i in range(len(dataset))], kind="stable")
        pool = [by_length[i : i + bs] for i in range(0, len(by_length) - bs + 1, bs)]
        picks = rng.choice(len(pool), size=total_steps, replace=total_steps > len(pool))
        batches = [pool[int(i)] for i in picks]
    else:
        order = rng.permutation(len(dataset))
        if total_steps * bs > len(order):
            order = np.concatenate([order] * (total_steps * bs // len(order) + 1))
        batches = [order[i * bs : (i + 1) * bs] for i in range(total_steps)]
    precision = resolve_precision(cfg.training.precision)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if device == "cuda" else None
    compute_loss = trainer_loss(cfg.training.loss, labels)
    optimizer = adamw(family, cfg.training)  # as build_trainer
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset = _common.reset_peak_rss() if device == "cpu" else True
    steps, cpu, tokens, padded, losses = [], [], [], [], []
    for step, idx in enumerate(batches):
        if device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        batch = family.collate([dataset[int(i)] for i in idx])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        targets = batch.pop("labels")
        with torch.autocast(device_type="cuda", dtype=autocast, enabled=autocast is not None):
            outputs = model(**batch)
            loss = compute_loss(outputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.training.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        losses.append(float(loss.detach()))
        if step >= spec["warmup_steps"]:
            steps.append(dt)
            cpu.append(dc)
            tokens.append(int(batch["attention_mask"].sum()))
            padded.append(int(batch["attention_mask"].numel()))
    train_s = sum(steps)
    if device == "cuda":  # whole process: the larger of the loading phase's and the training steps' peaks
        train_peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        memory = {
            "peak_gpu_allocated_mb": max(train_peak, load_peak["peak_gpu_allocated_mb"]),
            "train_peak_gpu_allocated_mb": train_peak,
            "train_peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        }
    else:  # VmHWM was reset after loading: it now holds the training steps' peak
        train_peak = _common.peak_rss_mb()
        memory = {
            "peak_rss_mb": max(train_peak, load_peak["peak_rss_mb"]) if reset else train_peak,
            "train_peak_rss_mb": train_peak if reset else None,
        }
    quant = getattr(base.config, "quantization_config", None)
    return {
        "variant": spec["variant"],
        "model": getattr(base.config, "name_or_path", None) or spec.get("model"),
        "model_type": base.config.model_type,
        "precision": precision,
        "autocast": str(autocast).replace("torch.", "") if autocast else None,
        "quantization": (quant.to_dict().get("bnb_4bit_quant_type") if hasattr(quant, "to_dict") else None),
        "compute_dtype": str(quant.bnb_4bit_compute_dtype).replace("torch.", "") if quant is not None else None,
        "body_dtype": str(
            next(p for n, p in model.named_parameters() if "layers.0" in n and "lora" not in n).dtype
        ).replace("torch.", ""),
        "trainable": params["trainable"],
        "total": params["total"],
        "trainable_percent": params["trainable_percent"],
        "weights_mb": params["weights_mb"],
        "load_s": round(load_s, 1),
        **after_load,
        "load_phase_peak": load_peak,
        **memory,
        "steps": len(steps),
        "warmup_steps": spec["warmup_steps"],
        "batch_size": bs,
        "train_seconds": round(train_s, 3),
        "real_tokens": sum(tokens),
        "padded_tokens": sum(padded),
        "padding_efficiency": round(sum(tokens) / max(sum(padded), 1), 3),
        "batching": spec["batching"],
        "cpu_seconds": round(sum(cpu), 2),
        "tokens_per_cpu_s": round(sum(tokens) / max(sum(cpu), 1e-9), 1),
        "tokens_per_s": round(sum(tokens) / train_s, 1),
        "samples_per_s": round(len(steps) * bs / train_s, 2),
        "mean_step_s": round(train_s / len(steps), 4),
        "median_step_s": round(statistics.median(steps), 4),
        "step_s": [round(s, 4) for s in steps],
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------- parent


def make_random_llama(folder: Path, shape: dict, tokenizer=None) -> dict:
    """A randomly initialised Llama of ``shape`` saved (bf16) with ``tokenizer`` (default: MiniLM's); its facts."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        from emotion_core.models.resolve import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    if len(tokenizer) > shape["vocab_size"]:
        raise SystemExit(f"tokenizer has {len(tokenizer)} ids, more than the vocabulary {shape['vocab_size']}")
    config = LlamaConfig(
        **shape,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    started = time.perf_counter()
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    del model
    return {
        "shape": shape,
        "parameters": n_params,
        "build_and_save_s": round(time.perf_counter() - started, 1),
        "tokenizer": f"{type(tokenizer).__name__}, {len(tokenizer)} ids",
        "saved_dtype": "bfloat16",
    }


COLUMNS = [
    "variant",
    "precision",
    "trainable",
    "weights_mb",
    "peak_mem_mb",
    "train_peak_mem_mb",
    "tokens_per_s",
    "tokens_per_cpu_s",
    "samples_per_s",
    "mean_step_s",
    "median_step_s",
    "padding_efficiency",
    "load_s",
    "load_before",
    "other_cpu_cores",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--random-llama-1b", action="store_true", help="a random ~1B Llama instead of SmolLM2 (GPU)")
    parser.add_argument(
        "--llama-shape",
        default=None,
        help="override the random Llama's shape: hidden,layers,heads,kv_heads,intermediate (testing)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 8 on SmolLM2, 40 on the 1B)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed first steps (default 2, 5 on the 1B)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=None, help="default 64 (SmolLM2), 128 (1B)")
    parser.add_argument("--rows", type=int, default=2000, help="training rows the batches are drawn from")
    parser.add_argument("--data-seed", type=int, default=13)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--batching",
        choices=["grouped", "random"],
        default="grouped",
        help="grouped: batches of similar-length texts (as the project trains); random: random rows",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads per child (default: torch's)")
    parser.add_argument("--rounds", type=int, default=1, help="(lora, qlora) pairs, alternating")
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    if args.child:
        _common.emit(child(json.loads(args.child)))
        return 0

    big = args.random_llama_1b
    steps = args.steps or (40 if big else 8)
    warmup = args.warmup_steps if args.warmup_steps is not None else (5 if big else 2)
    max_length = args.max_length or (128 if big else 64)
    variants = [args.only] if args.only else ["lora", "qlora"]
    print(f"uptime load average at start: {_common.load_average()}", flush=True)
    runs, model_facts = [], {"model": "smollm2 (SmolLM2-135M-Instruct, de-quantised Q4_1 GGUF)"}
    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as tmp:
        model_folder = None
        if big:
            shape = dict(LLAMA_1B)
            if args.llama_shape:
                keys = [
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "intermediate_size",
                ]
                shape.update(zip(keys, (int(x) for x in args.llama_shape.split(","))))
            model_folder = Path(tmp) / "random-llama"
            print(f"building a random Llama {shape} ...", flush=True)
            model_facts = {"model": "random Llama", **make_random_llama(model_folder, shape)}
            print(
                f"  {model_facts['parameters'] / 1e6:.1f}M parameters in {model_facts['build_and_save_s']} s",
                flush=True,
            )
        for i in range(1, args.rounds + 1):
            for variant in variants:
                spec = {
                    "variant": variant,
                    "config": str(CONFIGS[variant]),
                    "model": str(model_folder) if model_folder else None,
                    "steps": steps,
                    "warmup_steps": warmup,
                    "batch_size": args.batch_size,
                    "max_length": max_length,
                    "rows": args.rows,
                    "data_seed": args.data_seed,
                    "gradient_checkpointing": args.gradient_checkpointing,
                    "batching": args.batching,
                }
                print(f"round{i} {variant}: load average {_common.load_average()} ...", flush=True)
                result = _common.run_child(
                    Path(__file__),
                    spec,
                    Path(tmp) / f"{i}-{variant}.log",
                    timeout=args.timeout,
                    env=_common.thread_env(args.threads),
                )
                result.update(run=f"round{i}", variant=variant)
                runs.append(result)
                print(
                    "  "
                    + json.dumps(
                        {
                            k: result.get(k)
                            for k in (
                                "status",
                                "tokens_per_s",
                                "mean_step_s",
                                "peak_rss_mb",
                                "peak_gpu_allocated_mb",
                                "weights_mb",
                                "error",
                            )
                        }
                    ),
                    flush=True,
                )
    done = [r for r in runs if r["status"] == "completed"]
    mean = {}
    for variant in variants:
        vals = [r for r in done if r["variant"] == variant]
        if vals:
            mem_key = "peak_gpu_allocated_mb" if vals[0]["device"] == "cuda" else "peak_rss_mb"
            train_key = "train_peak_gpu_allocated_mb" if vals[0]["device"] == "cuda" else "train_peak_rss_mb"
            mean[variant] = {
                "tokens_per_s": round(statistics.mean(r["tokens_per_s"] for r in vals), 1),
                "tokens_per_cpu_s": round(statistics.mean(r["tokens_per_cpu_s"] for r in vals), 1),
                "median_step_s": round(statistics.mean(r["median_step_s"] for r in vals), 4),
                "mean_step_s": round(statistics.mean(r["mean_step_s"] for r in vals), 4),
                "peak_mem_mb": max(r[mem_key] for r in vals),
                "train_peak_mem_mb": max(r[train_key] or 0 for r in vals),
                "weights_mb": vals[0]["weights_mb"],
                "memory_measure": mem_key,
            }
    summary = {"per_variant": mean}
    if "lora" in mean and "qlora" in mean:
        lo, q = mean["lora"], mean["qlora"]
        summary.update(
            qlora_over_lora_tokens_per_s=round(q["tokens_per_s"] / lo["tokens_per_s"], 3),
            qlora_over_lora_tokens_per_cpu_s=round(q["tokens_per_cpu_s"] / lo["tokens_per_cpu_s"], 3),
            qlora_over_lora_median_step=round(q["median_step_s"] / lo["median_step_s"], 3),
            qlora_over_lora_peak_mem=round(q["peak_mem_mb"] / lo["peak_mem_mb"], 3),
            qlora_over_lora_train_peak_mem=round(q["train_peak_mem_mb"] / lo["train_peak_mem_mb"], 3)
            if lo["train_peak_mem_mb"]
            else None,
            qlora_over_lora_weights=round(q["weights_mb"] / lo["weights_mb"], 3),
        )
    payload = {
        "benchmark": "qlora_vs_lora",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "steps": steps,
            "warmup_steps": warmup,
            "batch_size": args.batch_size,
            "max_length": max_length,
            "rows": args.rows,
            "data_seed": args.data_seed,
            "rounds": args.rounds,
            "batching": args.batching,
            "threads": args.threads,
            "gradient_checkpointing": args.gradient_checkpointing,
            "configs": {k: str(v.relative_to(ROOT)) for k, v in CONFIGS.items()},
        },
        "model": model_facts,
        "machine": _common.machine(),
        "versions": _common.versions(),
        "summary": summary,
        "runs": runs,
    }
    name = "random-llama-1b" if big else "smollm2"
    out = Path(args.out or _common.RESULTS / f"qlora_vs_lora-{name}-{_common.device_slug()}.json")
    _common.write_json(out, payload)
    rows = []
    for r in runs:
        cuda = r.get("device") == "cuda"
        rows.append(
            {
                **r,
                "variant": f"{r['variant']} ({r['run']})" if args.rounds > 1 else r["variant"],
                "peak_mem_mb": r.get("peak_gpu_allocated_mb" if cuda else "peak_rss_mb"),
                "train_peak_mem_mb": r.get("train_peak_gpu_allocated_mb" if cuda else "train_peak_rss_mb"),
                "load_before": r.get("load_average_before", [None])[0],
                "other_cpu_cores": r.get("other_processes_cpu_cores"),
            }
        )
    memory = "peak GPU allocated" if any(r.get("device") == "cuda" for r in runs) else "peak RSS"
    print(f"model: {model_facts['model']}; memory columns: {memory} (whole process / training steps only), MB")
    print(_common.markdown_table(rows, COLUMNS))
    if "qlora_over_lora_tokens_per_s" in summary:
        print(
            f"QLoRA / LoRA: tokens/s x{summary['qlora_over_lora_tokens_per_s']} (per CPU-second "
            f"x{summary['qlora_over_lora_tokens_per_cpu_s']}, median step x{summary['qlora_over_lora_median_step']}), "
            f"peak memory x{summary['qlora_over_lora_peak_mem']} "
            f"(training steps: x{summary['qlora_over_lora_train_peak_mem']}), "
            f"stored weights x{summary['qlora_over_lora_weights']}"
        )
    print(f"written: {out}")
    return 0 if len(done) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
