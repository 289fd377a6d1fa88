"""Recipe ablations chosen by validation only, each with its paired bootstrap on test against the recipe before it.

A plan is a base config and a list of steps. Each step's overrides are merged into the *current* recipe and
trained; steps that only change ``threshold_policy`` come last and re-tune thresholds on the final run's
validation logits (same model; the policy's effect on checkpoint selection is not measured). A step is kept, and
becomes the current recipe, only if its *held-out* validation score beats the current one: the dataset's official
metric on each of 5 validation folds at thresholds tuned on the other 4 (``thresholds.choose_policy``), because the
in-sample score always favours per-label thresholds. Test decides nothing. Every row reports both validation
scores, the carved test score, the drops to test, the test delta against the current recipe with its one-sided
paired-bootstrap p (1,000 resamples), and training seconds. ``baselines`` are other models on the final recipe's
data and training settings, compared the same way (final recipe minus baseline: TF-IDF + LR against the FFNN).

    nice python benchmarks/recipe_ablation.py ffnn --store /tmp/ablation/store
    nice python benchmarks/recipe_ablation.py minilm --store /tmp/ablation/store

Runs are trained into ``--store`` once (reused by config name) and the result goes to
``benchmarks/results/recipe_ablation-<plan>.json`` with a markdown table. The plans' budgets and the figures measured
on 2 CPU cores are in docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS, machine, markdown_table, versions
from emotion_core.config import deep_merge, load_yaml, parse_run_config
from emotion_core.metrics import metric_score, sigmoid
from emotion_core.thresholds import apply_thresholds, choose_policy, requires_one_label, tune_thresholds

THRESHOLD_KEYS = {"threshold_policy", "threshold_shrinkage"}

PLANS = {
    "ffnn": {
        "base": "deployments/configs/ffnn-tfidf.yaml",
        "overrides": {"name": "abl-ffnn", "explain": {"n_texts": 0}},
        "steps": [
            ("shipped recipe", {}),
            ("thresholds shrunk to the global one (k=20)", {"threshold_policy": "shrunk"}),
            ("thresholds auto (policy chosen on held-out folds)", {"threshold_policy": "auto"}),
            ("hidden 512", {"model": {"hidden_size": 512}}),
            ("200k n-grams", {"model": {"max_features": 200000}}),
            ("ASL loss", {"training": {"loss": {"kind": "asl"}}}),
        ],
        "baselines": [
            ("scikit-learn TF-IDF + LR (liblinear, C chosen on held-out validation)", {"sklearn_lr": [1.0, 4.0, 16.0]}),
            (
                "TF-IDF + LR (lr 0.01, 5 epochs)",
                {"model": {"family": "linear"}, "training": {"learning_rate": 0.01, "epochs": 5}},
            ),
            (
                "TF-IDF + LR (lr 0.002, 5 epochs)",
                {"model": {"family": "linear"}, "training": {"learning_rate": 0.002, "epochs": 5}},
            ),
        ],
    },
    "minilm": {
        "base": "deployments/configs/minilm.yaml",
        "overrides": {"name": "abl-minilm", "explain": {"n_texts": 0}, "data": {"max_train_samples": 6000}},
        "steps": [
            ("shipped recipe", {}),
            ("thresholds shrunk to the global one (k=20)", {"threshold_policy": "shrunk"}),
            ("thresholds auto (policy chosen on held-out folds)", {"threshold_policy": "auto"}),
            ("layer-wise lr decay 0.8, top lr 1e-4", {"training": {"layer_decay": 0.8, "learning_rate": 1e-4}}),
            ("ASL loss", {"training": {"loss": {"kind": "asl"}}}),
            ("label smoothing 0.05", {"training": {"loss": {"label_smoothing": 0.05}}}),
            ("3 epochs (early stopping)", {"training": {"epochs": 3}}),
        ],
        "baselines": [],
    },
}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40]


def train(raw: dict, store) -> tuple[object, float]:
    """The run of ``raw`` in ``store`` (trained unless one of that config name is there) and its training seconds."""
    from emotion_core.pipeline import train_config
    from emotion_core.runs import read_run

    cfg = parse_run_config(raw)
    done = [r for r in store.list_runs() if store.read_manifest(r).get("config_name") == cfg.name]
    if not done:
        started = time.monotonic()
        train_config(cfg, store)
        print(f"trained {cfg.name} in {time.monotonic() - started:.0f} s", flush=True)
        done = [r for r in store.list_runs() if store.read_manifest(r).get("config_name") == cfg.name]
    run = read_run(store.run_folder(done[-1]))
    if run.config.model_dump() != cfg.model_dump():
        raise SystemExit(f"{store.uri} holds a run named {cfg.name} of another recipe: use a new --store")
    return run, float(run.manifest.get("timing", {}).get("train_seconds") or 0.0)


def scored(run, cache, policy: str | None = None) -> dict:
    """Validation and test predictions of ``run`` at thresholds tuned on validation for ``policy`` (default: the
    run's own), and the validation score of that policy on held-out folds (tuned on the other folds)."""
    from emotion_core.analysis import run_data

    arrays = run_data(run, cache.for_run(run))
    pv, pt = sigmoid(arrays.logits["validation"]), sigmoid(arrays.logits["test"])
    yv, yt, metric = arrays.truth["validation"], arrays.truth["test"], arrays.metric
    policy, k = policy or run.config.threshold_policy, run.config.threshold_shrinkage
    held_out = choose_policy(yv, pv, metric, shrinkage=k, **({} if policy == "auto" else {"candidates": [policy]}))
    policy = held_out["policy"]  # auto: the policy it chose
    cuts, one = tune_thresholds(yv, pv, policy, metric=metric, shrinkage=k), requires_one_label(policy)
    preds = {"validation": apply_thresholds(pv, cuts, one), "test": apply_thresholds(pt, cuts, one)}
    return _result(metric, policy, held_out["scores"][policy], yv, yt, preds, arrays.ids["test"])


def _result(metric: str, policy: str, held_out: float, yv, yt, preds: dict, test_ids: list) -> dict:
    """What a row and the paired tests need of one model: scores, test predictions, truth and ids."""
    return {
        "metric": metric,
        "policy": policy,
        "validation": metric_score(yv, preds["validation"], metric),
        "validation_held_out": held_out,
        "test": metric_score(yt, preds["test"], metric),
        "test_preds": preds["test"],
        "test_truth": yt,
        "test_ids": test_ids,
    }


def sklearn_logistic(run, cache, grid: list[float]) -> tuple[dict, float]:
    """TF-IDF (the FFNN's default featurizer) + one scikit-learn logistic regression per label, on ``run``'s data:
    C from ``grid`` by held-out validation score at per-label thresholds; scored like a run."""
    from sklearn.linear_model import LogisticRegression

    from emotion_core.model_configs import FFNNConfig
    from emotion_core.models.ffnn import TfidfFeaturizer

    data = cache.for_run(run)
    started = time.monotonic()
    featurizer = TfidfFeaturizer.fit(data.texts("train"), FFNNConfig())
    x = {split: featurizer.transform(data.texts(split)) for split in ("train", "validation", "test")}
    y = {split: data.labels(split).astype(int) for split in ("train", "validation", "test")}
    metric, best = "macro_f1", None
    for c in grid:
        probs = {split: np.zeros(y[split].shape) for split in ("validation", "test")}
        for j in range(y["train"].shape[1]):
            model = LogisticRegression(C=c, solver="liblinear", max_iter=1000).fit(x["train"], y["train"][:, j])
            for split in probs:
                probs[split][:, j] = model.predict_proba(x[split])[:, 1]
        held_out = choose_policy(y["validation"], probs["validation"], metric, candidates=["per_label"])
        score = held_out["scores"]["per_label"]
        print(f"scikit-learn LR C={c}: held-out validation {metric} {score:.4f}", flush=True)
        if best is None or score > best[0]:
            best = (score, c, probs)
    score, c, probs = best
    cuts = tune_thresholds(y["validation"], probs["validation"], "per_label", metric=metric)
    preds = {split: apply_thresholds(probs[split], cuts) for split in probs}
    out = _result(metric, f"per_label (C={c})", score, y["validation"], y["test"], preds, data.ids("test"))
    return out, time.monotonic() - started


def compare(a: dict, b: dict) -> dict:
    from emotion_core.evaluation import paired_bootstrap

    assert a["test_ids"] == b["test_ids"], "runs of one plan share the carved test rows"
    out = paired_bootstrap(a["test_truth"], a["test_preds"], b["test_preds"], n=1000, seed=0, metric=a["metric"])
    return {"delta": out["delta"], "low": out["low"], "high": out["high"], "p_value": out["p_value"]}


def row(name: str, s: dict, seconds: float, versus: dict | None, kept: bool | None) -> dict:
    return {
        "step": name,
        "thresholds": s["policy"],
        "validation_held_out": round(s["validation_held_out"], 4),
        "validation_in_sample": round(s["validation"], 4),
        "test": round(s["test"], 4),
        "drop_held_out_to_test": round(s["validation_held_out"] - s["test"], 4),
        "drop_in_sample_to_test": round(s["validation"] - s["test"], 4),
        "test_delta": None if versus is None else round(versus["delta"], 4),
        "p_value": None if versus is None else round(versus["p_value"], 4),
        "kept": kept,
        "train_seconds": round(seconds, 1),
    }


def run_plan(plan: dict, store) -> dict:
    """Model steps in order, then threshold steps on the final model (they need no training); each kept only if
    its held-out validation score beats the current recipe's."""
    from emotion_core.analysis import DataCache

    cache, rows = DataCache(), []
    recipe = deep_merge(load_yaml(Path(plan["base"]).read_text()), plan["overrides"])
    steps = list(enumerate(plan["steps"]))
    only_thresholds = {i for i, (_, overrides) in steps if overrides and set(overrides) <= THRESHOLD_KEYS}
    current = current_run = None
    for i, (name, overrides) in sorted(steps, key=lambda step: step[0] in only_thresholds):  # stable: models first
        candidate = deep_merge(recipe, overrides)
        if i in only_thresholds:  # same model, thresholds re-tuned on its validation logits
            run, seconds = current_run, 0.0
            s = scored(run, cache, candidate["threshold_policy"])
        else:
            candidate["name"] = f"{plan['overrides']['name']}-{i}-{slug(name)}"
            run, seconds = train(candidate, store)
            s = scored(run, cache)
        if current is None:
            rows.append(row(name, s, seconds, None, True))
            recipe, current, current_run = candidate, s, run
            continue
        kept = s["validation_held_out"] > current["validation_held_out"]
        rows.append(row(name, s, seconds, compare(s, current), kept))
        if kept:
            recipe, current, current_run = candidate, s, run
    for name, overrides in plan.get("baselines", []):
        if "sklearn_lr" in overrides:
            s, seconds = sklearn_logistic(current_run, cache, overrides["sklearn_lr"])
        else:
            candidate = {**deep_merge(recipe, overrides), "model": overrides["model"]}  # another model, same data
            candidate["name"] = f"{plan['overrides']['name']}-base-{slug(name)}"
            run, seconds = train(candidate, store)
            s = scored(run, cache)
        # the final recipe minus the baseline
        rows.append(row(f"baseline: {name} (delta, p: final recipe minus it)", s, seconds, compare(current, s), None))
    recipe["name"] = plan["overrides"]["name"]
    return {"rows": rows, "final_recipe": recipe, "final_run": current_run.run_id, "metric": current["metric"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", choices=sorted(PLANS))
    parser.add_argument("--store", type=Path, required=True, help="Local store the runs are trained into (reused).")
    args = parser.parse_args()
    from emotion_core.store import LocalStore

    started = time.monotonic()
    result = run_plan(PLANS[args.plan], LocalStore(args.store))
    result |= {"plan": args.plan, "wall_seconds": round(time.monotonic() - started), "machine": machine()}
    result["versions"] = versions()
    out = RESULTS / f"recipe_ablation-{args.plan}.json"
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(markdown_table(result["rows"], list(result["rows"][0])))
    print(f"final run {result['final_run']}; wrote {out}")


if __name__ == "__main__":
    main()
