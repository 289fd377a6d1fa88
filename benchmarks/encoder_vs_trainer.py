"""MiniLM training throughput: the project's encoder path against a plain Hugging Face ``Trainer`` script.

    python benchmarks/encoder_vs_trainer.py [--rows 1000] [--epochs 1] [--rounds 2] [--no-warmup-run]
        [--plain-padding dynamic|max_length] [--plain-optim NAME] [--out FILE]

Arms, on the same seeded GoEmotions subset (``--rows``), max length 64, batch 32, each run in its own process:
- ``project``: ``build_family`` on ``deployments/configs/minilm.yaml`` trained by ``training.fit.fit`` (fused
  AdamW with per-group rates, length-grouped batches, dynamic padding, validation on 200 rows once an epoch).
- ``plain``: ``AutoModelForSequenceClassification`` + ``Trainer`` with default arguments (only ``output_dir``,
  epochs or steps, batch 32), the default collator and optimizer; no evaluation.

Order: an optional discarded warm-up pair, then ``--rounds`` x (project, plain) alternating; one
forward+backward warms the kernels in each process. Timing, identical in both arms: ``on_train_begin`` to the
last ``on_step_end`` minus logging, validation and saving. Reported: samples/s per run and arm, the ratio
project / plain, process CPU seconds, load average and the other processes' CPU use (on two shared cores a
busy neighbour halves a figure). Prints a table and writes JSON
(default ``benchmarks/results/encoder_vs_trainer-<device>.json``).

Budget: ~3 minutes on two quiet cores (7-9 shared). On a GPU scale up (``--rows 20000 --epochs 1 --rounds 3``);
the plain arm stays fp32 unless ``--plain-bf16``: quote which.
"""

from __future__ import annotations

import argparse
import hashlib
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

CONFIG = ROOT / "deployments" / "configs" / "minilm.yaml"
NUM_LABELS = 28


# ------------------------------------------------------------------------------------------ child


def _data(spec: dict):
    from emotion_core.config import DataConfig
    from emotion_core.data import load_data

    return DataConfig(
        dataset="goemotions",
        max_train_samples=spec["rows"],
        max_validation_samples=spec["val_rows"],
        max_test_samples=spec["val_rows"],
        seed=spec["data_seed"],
    ), load_data


def _texts_hash(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


class _Counting:
    """Wraps a collator: counts the rows and real tokens of training batches (not while excluded)."""

    def __init__(self, collate, state: dict) -> None:
        self.collate, self.state = collate, state
        self.rows = self.tokens = self.padded = self.batches = 0

    def __call__(self, items):
        batch = self.collate(items)
        if not self.state["excluded"]:
            mask = batch["attention_mask"]
            self.rows += int(mask.shape[0])
            self.tokens += int(mask.sum())
            self.padded += int(mask.numel())
            self.batches += 1
        return batch


def _instrument(trainer) -> dict:
    """Attach the timing callback, the excluded-time wrapper and the counting collator to ``trainer``."""
    from transformers import TrainerCallback

    state = {"excluded": False, "windows": [], "cpu_windows": [], "t0": None, "last": None, "steps": 0}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, st, control, **kwargs):
            state["t0"], state["c0"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, st, control, **kwargs):
            state["last"], state["c_last"] = time.perf_counter(), time.process_time()
            state["steps"] += 1
            state.setdefault("ends", []).append(state["last"])

    original = trainer._maybe_log_save_evaluate

    def timed(*args, **kwargs):
        started, cpu = time.perf_counter(), time.process_time()
        state["excluded"] = True
        try:
            return original(*args, **kwargs)
        finally:
            state["excluded"] = False
            state["windows"].append((started, time.perf_counter()))
            state["cpu_windows"].append((cpu, time.process_time()))

    trainer._maybe_log_save_evaluate = timed
    trainer.add_callback(Timer())
    state["counter"] = _Counting(trainer.data_collator, state)
    trainer.data_collator = state["counter"]
    return state


def _timing(state: dict, train_wall: float) -> dict:
    last, t0 = state["last"], state["t0"]
    excluded = sum(end - start for start, end in state["windows"] if end <= last)
    seconds = (last - t0) - excluded
    cpu = (state["c_last"] - state["c0"]) - sum(e - s for s, e in state["cpu_windows"] if e <= state["c_last"])
    counter = state["counter"]
    marks, step_s = [t0, *state.get("ends", [])], []
    for a, b in zip(marks, marks[1:]):  # per step, minus any excluded window inside it
        step_s.append(round((b - a) - sum(e - s for s, e in state["windows"] if a <= s and e <= b), 3))
    return {
        "train_seconds": round(seconds, 3),
        "steps": state["steps"],
        "samples": counter.rows,
        "real_tokens": counter.tokens,
        "padded_tokens": counter.padded,
        "padding_efficiency": round(counter.tokens / max(counter.padded, 1), 3),
        "samples_per_s": round(counter.rows / seconds, 2),
        "real_tokens_per_s": round(counter.tokens / seconds, 1),
        "mean_step_s": round(seconds / max(state["steps"], 1), 4),
        "median_step_s": round(statistics.median(step_s), 4) if step_s else None,
        "cpu_seconds": round(cpu, 2),
        "samples_per_cpu_s": round(counter.rows / max(cpu, 1e-9), 2),
        "excluded_in_loop_s": round(excluded, 2),
        "train_call_wall_s": round(train_wall, 2),
        "after_last_step_s": round(train_wall - (last - t0), 2),
        "step_s": step_s,
    }


def _warm(model, batch) -> None:
    """One forward+backward to initialise kernels and thread pools; gradients dropped, weights unchanged."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)  # where the Trainer will put it
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()
    out = model(**batch)
    loss = out["loss"] if isinstance(out, dict) else out.loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def _optimizer_facts(trainer) -> dict:
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {
        "optimizer": type(opt).__name__,
        "fused": bool(opt.defaults.get("fused")),
        "foreach": opt.defaults.get("foreach"),
        "param_groups": len(opt.param_groups),
    }


def child_project(spec: dict) -> dict:
    import torch

    import emotion_core.training.fit as fit_module
    from emotion_core.config import load_run_config
    from emotion_core.models import build_family
    from emotion_core.training.fit import seed_everything

    data_cfg, load_data = _data(spec)
    cfg = load_run_config(
        spec["config"],
        overrides={
            "data": data_cfg.model_dump(mode="json"),
            "training": {"epochs": spec["epochs"], "batch_size": spec["batch_size"]},
            "model": {"max_length": spec["max_length"]},
        },
    )
    data = load_data(cfg.data)
    texts, labels = data.texts("train"), data.labels("train")
    seed_everything(cfg.training.seed)  # as pipeline.train_run does before building
    family = build_family(cfg, data.schema, texts, labels)
    train_ds = family.make_dataset(texts, labels)
    val_ds = family.make_dataset(data.texts("validation"), data.labels("validation"))
    _warm(family.model, family.collate([train_ds[i] for i in range(spec["batch_size"])]))

    holder = {}
    build = fit_module.build_trainer

    def instrumented(*args, **kwargs):  # fit() calls this; the benchmark only watches the trainer it returns
        trainer, precision = build(*args, **kwargs)
        if spec.get("max_steps"):
            trainer.args.max_steps = spec["max_steps"]
        holder["state"] = _instrument(trainer)
        holder["trainer"] = trainer
        return trainer, precision

    fit_module.build_trainer = instrumented
    with tempfile.TemporaryDirectory(prefix="bench-project-") as tmp:
        started = time.perf_counter()
        stats = fit_module.fit(cfg, family, train_ds, val_ds, Path(tmp) / "work", train_labels=labels)
        wall = time.perf_counter() - started
    trainer = holder["trainer"]
    return {
        "arm": "project",
        **_timing(holder["state"], wall),
        "fit_reported_samples_per_s": round(stats.train_samples_per_second, 2),
        "fit_reported_train_seconds": round(stats.train_seconds, 2),
        "fit_eval_seconds": round(stats.eval_seconds, 2),
        "train_loss": next((h["train_loss"] for h in reversed(stats.log_history) if "train_loss" in h), None),
        "best_validation_macro_f1": stats.best_validation_macro_f1,
        "precision": stats.precision,
        "sampler": trainer.args.train_sampling_strategy,
        "collator": "family.collate (tokenizer.pad, dynamic)",
        **_optimizer_facts(trainer),
        "train_rows": len(texts),
        "train_texts_sha256_16": _texts_hash(texts),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": _common.peak_rss_mb(),
    }


def child_plain(spec: dict) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, set_seed

    from emotion_core.models.resolve import resolve_model

    data_cfg, load_data = _data(spec)
    data = load_data(data_cfg)
    texts, labels = data.texts("train"), data.labels("train")
    folder = resolve_model("minilm")
    set_seed(42)  # only so the new head is the same every run; speed does not depend on it
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, problem_type="multi_label_classification", num_labels=NUM_LABELS
    )
    padding = "max_length" if spec["plain_padding"] == "max_length" else False
    ds = datasets.Dataset.from_dict({"text": texts, "labels": labels.tolist()}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=spec["max_length"], padding=padding),
        batched=True,
        remove_columns=["text"],
    )
    kwargs = {"max_steps": spec["max_steps"]} if spec.get("max_steps") else {"num_train_epochs": spec["epochs"]}
    if spec.get("plain_optim"):
        kwargs["optim"] = spec["plain_optim"]  # not the default: only when asked for
    if spec.get("plain_bf16"):
        kwargs["bf16"] = True  # not the default: only when asked for (GPU comparisons)
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as tmp:
        args = TrainingArguments(
            output_dir=str(Path(tmp) / "out"), per_device_train_batch_size=spec["batch_size"], **kwargs
        )
        trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        collator = type(trainer.data_collator).__name__
        _warm(model, trainer.data_collator([ds[i] for i in range(spec["batch_size"])]))
        state = _instrument(trainer)
        started = time.perf_counter()
        output = trainer.train()
        wall = time.perf_counter() - started
    return {
        "arm": "plain",
        **_timing(state, wall),
        "train_loss": output.training_loss,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "sampler": getattr(
            args, "train_sampling_strategy", "group_by_length" if getattr(args, "group_by_length", False) else "random"
        ),
        "collator": collator + (" (max_length)" if padding else " (dynamic)"),
        "optim_arg": str(args.optim),
        **_optimizer_facts(trainer),
        "train_rows": len(texts),
        "train_texts_sha256_16": _texts_hash(texts),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": _common.peak_rss_mb(),
    }


# ----------------------------------------------------------------------------------------- parent


COLUMNS = [
    "run",
    "arm",
    "samples_per_s",
    "samples_per_cpu_s",
    "real_tokens_per_s",
    "mean_step_s",
    "median_step_s",
    "padding_efficiency",
    "train_seconds",
    "steps",
    "excluded_in_loop_s",
    "optimizer",
    "fused",
    "sampler",
    "load_before",
    "other_cpu_cores",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1000, help="training rows (seeded GoEmotions subset)")
    parser.add_argument(
        "--val-rows", type=int, default=200, help="validation rows (project arm's in-training validation)"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="train this many steps instead of --epochs")
    parser.add_argument("--rounds", type=int, default=2, help="measured (project, plain) pairs")
    parser.add_argument("--warmup-steps", type=int, default=4, help="steps per arm of the discarded warm-up pair")
    parser.add_argument("--no-warmup-run", action="store_true", help="skip the discarded warm-up pair")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--data-seed", type=int, default=13)
    parser.add_argument(
        "--plain-padding",
        choices=["dynamic", "max_length"],
        default="dynamic",
        help="plain arm: pad per batch (DataCollatorWithPadding) or every text to --max-length",
    )
    parser.add_argument(
        "--plain-optim", default=None, help="plain arm: override TrainingArguments.optim (default: none)"
    )
    parser.add_argument("--plain-bf16", action="store_true", help="plain arm: bf16=True (not a default; for GPU runs)")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads per child (default: torch's)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        _common.emit(child_project(spec) if spec["arm"] == "project" else child_plain(spec))
        return 0

    base = {
        "rows": args.rows,
        "val_rows": args.val_rows,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "data_seed": args.data_seed,
        "config": str(CONFIG),
        "plain_padding": args.plain_padding,
        "plain_optim": args.plain_optim,
        "plain_bf16": args.plain_bf16,
    }
    schedule = [] if args.no_warmup_run else [("warmup", "project"), ("warmup", "plain")]
    for i in range(1, args.rounds + 1):
        schedule += [(f"round{i}", "project"), (f"round{i}", "plain")]
    print(f"uptime load average at start: {_common.load_average()}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-evt-") as tmp:
        for run, arm in schedule:
            spec = {**base, "arm": arm}
            if run == "warmup":
                spec["max_steps"] = args.warmup_steps
            print(f"{run} {arm}: load average {_common.load_average()} ...", flush=True)
            result = _common.run_child(
                Path(__file__),
                spec,
                Path(tmp) / f"{run}-{arm}.log",
                timeout=args.timeout,
                env=_common.thread_env(args.threads),
            )
            result.update(run=run, arm=arm)
            runs.append(result)
            print(
                "  "
                + json.dumps(
                    {
                        k: result.get(k)
                        for k in (
                            "status",
                            "samples_per_s",
                            "train_seconds",
                            "error",
                            "load_average_before",
                            "other_processes_cpu_cores",
                        )
                    }
                ),
                flush=True,
            )
    measured = [r for r in runs if r["run"] != "warmup" and r["status"] == "completed"]
    by_arm = {arm: [r["samples_per_s"] for r in measured if r["arm"] == arm] for arm in ("project", "plain")}
    ratios = []
    for i in range(1, args.rounds + 1):
        pair = {r["arm"]: r for r in measured if r["run"] == f"round{i}"}
        if len(pair) == 2:
            ratios.append(round(pair["project"]["samples_per_s"] / pair["plain"]["samples_per_s"], 3))
    mean = {arm: round(sum(v) / len(v), 2) if v else None for arm, v in by_arm.items()}
    cpu = {arm: [r["samples_per_cpu_s"] for r in measured if r["arm"] == arm] for arm in ("project", "plain")}
    cpu_mean = {arm: round(sum(v) / len(v), 2) if v else None for arm, v in cpu.items()}
    summary = {
        "project_samples_per_s_mean": mean["project"],
        "plain_samples_per_s_mean": mean["plain"],
        "ratio_of_means": round(mean["project"] / mean["plain"], 3) if mean["project"] and mean["plain"] else None,
        "ratio_per_round": ratios,
        "ratio_mean_of_rounds": round(sum(ratios) / len(ratios), 3) if ratios else None,
        "project_samples_per_cpu_s_mean": cpu_mean["project"],
        "plain_samples_per_cpu_s_mean": cpu_mean["plain"],
        "ratio_per_cpu_second": round(cpu_mean["project"] / cpu_mean["plain"], 3)
        if cpu_mean["project"] and cpu_mean["plain"]
        else None,
        "target_ratio": 1.5,
        "same_training_texts": len({r.get("train_texts_sha256_16") for r in measured}) == 1,
    }
    payload = {
        "benchmark": "encoder_vs_trainer",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            **base,
            "rounds": args.rounds,
            "warmup_run": not args.no_warmup_run,
            "warmup_steps": args.warmup_steps,
            "threads": args.threads,
        },
        "machine": _common.machine(),
        "versions": _common.versions(),
        "summary": summary,
        "runs": runs,
        "timing_rule": "on_train_begin -> last on_step_end, minus Trainer._maybe_log_save_evaluate (log/eval/save); "
        "samples and real tokens counted in the collator",
    }
    out = Path(args.out or _common.RESULTS / f"encoder_vs_trainer-{_common.device_slug()}.json")
    _common.write_json(out, payload)
    rows = []
    for r in runs:
        rows.append(
            {
                **r,
                "load_before": r.get("load_average_before", [None])[0],
                "other_cpu_cores": r.get("other_processes_cpu_cores"),
            }
        )
    print(_common.markdown_table(rows, COLUMNS))
    print(
        f"project / plain samples/s: ratio of means {summary['ratio_of_means']}, per round {ratios} "
        f"(target >= 1.5); per CPU-second {summary['ratio_per_cpu_second']}; project fit() reports "
        f"{[r.get('fit_reported_samples_per_s') for r in measured if r['arm'] == 'project']} samples/s"
    )
    print(f"written: {out}")
    return 0 if all(r["status"] == "completed" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
