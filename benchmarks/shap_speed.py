"""SHAP explanation cost: seconds per text of ``emotion_core.explain.explain_texts`` for MiniLM and the FFNN.

    python benchmarks/shap_speed.py [--n-texts 8] [--max-evals 300] [--models minilm ffnn]
        [--minilm-run RUN_FOLDER] [--ffnn-run RUN_FOLDER] [--out FILE]

Texts: ``explain.sample_texts`` of the GoEmotions test split (``--n-texts``, seed 13: the sample every
run's explanation uses by default). Budget: ``max_evals`` 300, the 3 most probable labels per text,
shap batch 32, model batch 64 (``ExplainConfig``'s defaults).

Models, each in its own process:
- ``minilm``: the encoder family built from ``deployments/configs/minilm.yaml`` (``build_family``),
  masked by its own WordPiece tokenizer (what ``explain_run`` uses for an encoder run);
- ``ffnn``: the TF-IDF FFNN of ``deployments/configs/ffnn-tfidf.yaml``, its featuriser fitted on a
  seeded 2,000-row training subset (cheap), masked by words.
Untrained weights by default: the cost is ``max_evals`` model calls on masked copies per text and
does not depend on what the weights learned (only which 3 labels are explained). ``--minilm-run`` /
``--ffnn-run`` time a trained run's model instead (``load_family`` on a run folder).

Not timed: process start, model build, shap's one-time numba compilation (``warmup_seconds``) and
one whole explanation of a warm-up text outside the sample (first model calls: thread pools,
kernels). Reported per model: seconds per text (mean, median, min, max), model evaluations and
tokens per text, the share of the time spent inside the model's ``predict_proba`` (the rest is
shap: masking, clustering, bookkeeping), and model calls per second. Load average and the other
processes' CPU use are recorded per model. Prints a table and writes JSON (default
``benchmarks/results/shap_speed-<device>.json``).
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
    "minilm": ROOT / "deployments" / "configs" / "minilm.yaml",
    "ffnn": ROOT / "deployments" / "configs" / "ffnn-tfidf.yaml",
}


# ------------------------------------------------------------------------------------------ child


def _family(spec: dict, data):
    """(family, tokenizer or None, label names, how it was made)."""
    import torch

    if spec.get("run"):
        from emotion_core.models import load_family
        from emotion_core.runs import read_run

        run = read_run(spec["run"])
        family = load_family(run.config, run.schema, run.folder / "model")
        tokenizer = None
        if (run.folder / "model" / "tokenizer").is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(run.folder / "model" / "tokenizer")
        names, source = run.schema.names, f"trained run {run.run_id}"
    else:
        from emotion_core.config import load_run_config
        from emotion_core.models import build_family
        from emotion_core.training.fit import seed_everything

        cfg = load_run_config(spec["config"], overrides={"data": {"max_train_samples": spec["train_rows"]}})
        seed_everything(cfg.training.seed)
        family = build_family(cfg, data.schema, data.texts("train"), data.labels("train"))
        tokenizer = None
        if cfg.model.family == "encoder":
            from transformers import AutoTokenizer

            from emotion_core.models.resolve import resolve_model

            tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model.model))
        names, source = data.schema.names, f"untrained {spec['model']} built from {Path(spec['config']).name}"
    if torch.cuda.is_available():
        family.model.to("cuda")
    family.model.eval()
    return family, tokenizer, list(names), source


def child(spec: dict) -> dict:
    import torch

    from emotion_core.config import DataConfig
    from emotion_core.data import load_data
    from emotion_core.explain import explain_texts, family_predict_proba, sample_texts

    data = load_data(DataConfig(dataset="goemotions", max_train_samples=spec["train_rows"], seed=spec["data_seed"]))
    family, tokenizer, names, source = _family(spec, data)
    ids, texts = sample_texts(data.ids("test"), data.texts("test"), spec["n_texts"], spec["sample_seed"])
    chosen = set(ids)
    warm_id, warm_text = next(
        (i, t) for i, t in zip(data.ids("test"), data.texts("test")) if i not in chosen and len(t.split()) >= 8
    )

    inner = family_predict_proba(family, spec["predict_batch_size"])
    calls: list[tuple[int, float]] = []  # (rows, seconds) of every model call

    def predict_proba(batch):
        started = time.perf_counter()
        try:
            return inner(batch)
        finally:
            calls.append((len(batch), time.perf_counter() - started))

    kwargs = dict(
        max_evals=spec["max_evals"],
        top_labels=spec["top_labels"],
        tokenizer=tokenizer,
        batch_size=spec["shap_batch_size"],
        seed=spec["sample_seed"],
    )
    started = time.perf_counter()
    warm = explain_texts(predict_proba, [warm_text], names, ids=[warm_id], **kwargs)  # numba compile + first calls
    warmup_s = time.perf_counter() - started
    calls.clear()
    result = explain_texts(predict_proba, texts, names, ids=ids, **kwargs)
    # explain_texts first predicts all texts at once (outside the per-text timing): not counted here
    initial, calls_in_texts = calls[0], calls[1:]
    clock = {
        "calls": len(calls_in_texts),
        "rows": sum(r for r, _ in calls_in_texts),
        "seconds": sum(t for _, t in calls_in_texts),
    }
    per_text = [row["seconds"] for row in result["texts"]]
    tokens = [len(row["labels"][0]["tokens"]) if row["labels"] else 0 for row in result["texts"]]
    evals = [row["evaluations"] for row in result["texts"]]
    total = result["seconds"]
    return {
        "model": spec["model"],
        "source": source,
        "masker": result["masker"].split(":")[0]
        + (":" + result["masker"].split(":", 1)[1][:24] if ":" in result["masker"] else ""),
        "n_texts": result["n_texts"],
        "sample_ids": ids,
        "max_evals": result["max_evals"],
        "top_labels": result["top_labels"],
        "seconds_per_text": result["seconds_per_text"],
        "median_s": round(statistics.median(per_text), 3),
        "min_s": round(min(per_text), 3),
        "max_s": round(max(per_text), 3),
        "total_s": round(total, 2),
        "per_text_s": per_text,
        "tokens_per_text": tokens,
        "mean_tokens": round(statistics.mean(tokens), 1),
        "evaluations_per_text": evals,
        "mean_evaluations": round(statistics.mean(evals), 1),
        "initial_predict_s": round(initial[1], 3),
        "model_calls": clock["calls"],
        "model_rows": clock["rows"],
        "model_share": round(clock["seconds"] / total, 3) if total else None,
        "model_rows_per_s": round(clock["rows"] / clock["seconds"], 1) if clock["seconds"] else None,
        "shap_numba_warmup_s": warm["warmup_seconds"],
        "warmup_text_s": round(warmup_s, 2),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "shap_version": result["shap_version"],
    }


# ----------------------------------------------------------------------------------------- parent


COLUMNS = [
    "model",
    "seconds_per_text",
    "median_s",
    "min_s",
    "max_s",
    "mean_tokens",
    "mean_evaluations",
    "model_share",
    "model_rows_per_s",
    "warmup_text_s",
    "load_before",
    "other_cpu_cores",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=["minilm", "ffnn"])
    parser.add_argument("--n-texts", type=int, default=8)
    parser.add_argument("--max-evals", type=int, default=300)
    parser.add_argument("--top-labels", type=int, default=3)
    parser.add_argument("--shap-batch-size", type=int, default=32)
    parser.add_argument("--predict-batch-size", type=int, default=64)
    parser.add_argument("--sample-seed", type=int, default=13)
    parser.add_argument("--train-rows", type=int, default=2000, help="training rows (FFNN featuriser, head priors)")
    parser.add_argument("--data-seed", type=int, default=13)
    parser.add_argument("--minilm-run", default=None, help="a trained MiniLM run folder to time instead")
    parser.add_argument("--ffnn-run", default=None, help="a trained FFNN run folder to time instead")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    if args.child:
        _common.emit(child(json.loads(args.child)))
        return 0

    settings = {
        "n_texts": args.n_texts,
        "max_evals": args.max_evals,
        "top_labels": args.top_labels,
        "shap_batch_size": args.shap_batch_size,
        "predict_batch_size": args.predict_batch_size,
        "sample_seed": args.sample_seed,
        "train_rows": args.train_rows,
        "data_seed": args.data_seed,
    }
    runs_given = {"minilm": args.minilm_run, "ffnn": args.ffnn_run}
    print(f"uptime load average at start: {_common.load_average()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-shap-") as tmp:
        for model in args.models:
            spec = {**settings, "model": model, "config": str(CONFIGS[model]), "run": runs_given[model]}
            print(f"{model}: load average {_common.load_average()} ...", flush=True)
            result = _common.run_child(Path(__file__), spec, Path(tmp) / f"{model}.log", timeout=args.timeout)
            result.setdefault("model", model)
            rows.append(result)
            print(
                "  " + json.dumps({k: result.get(k) for k in ("status", "seconds_per_text", "model_share", "error")}),
                flush=True,
            )
    payload = {
        "benchmark": "shap_speed",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": settings,
        "machine": _common.machine(),
        "versions": _common.versions(),
        "rows": rows,
    }
    out = Path(args.out or _common.RESULTS / f"shap_speed-{_common.device_slug()}.json")
    _common.write_json(out, payload)
    table = [
        {
            **r,
            "load_before": r.get("load_average_before", [None])[0],
            "other_cpu_cores": r.get("other_processes_cpu_cores"),
        }
        for r in rows
    ]
    print(
        f"{args.n_texts} GoEmotions test texts (seed {args.sample_seed}), max_evals {args.max_evals}, "
        f"top {args.top_labels} labels; seconds exclude warm-up"
    )
    print(_common.markdown_table(table, COLUMNS))
    print(f"written: {out}")
    return 0 if all(r["status"] == "completed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
