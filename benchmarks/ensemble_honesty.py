"""Old ensemble (plain mean, thresholds tuned on the validation rows that score it) against the cross-fitted ones.

Two settings:
- ``--store DIR``: small real members on a seeded GoEmotions subset (trained into ``DIR`` once, then reused):
  FFNN, TF-IDF + LR, and a narrower FFNN, sharing one validation split. Test is carved from train (the
  dataset's own dev split is validation), as in every run.
- ``--synthetic``: 20 seeds of logits where one member is good, one weaker and one pure noise (2,000
  validation rows, 28 labels, GoEmotions-like rates): how often each ensemble "wins" on validation and on test.

Prints JSON: per ensemble, validation macro-F1 (in-sample for the old one, out-of-fold for the new ones), test
macro-F1, the paired bootstrap on test against the best member and against the old ensemble, and ``eligible``.

    nice python benchmarks/ensemble_honesty.py --store /tmp/ens-bench/store
    nice python benchmarks/ensemble_honesty.py --synthetic

Measured (2 shared cores). GoEmotions subset (4,000 train, 2,000 validation, 2,000 carved test; test macro-F1):
ffnn 0.311, linear 0.188, ffnn-narrow 0.199; old mean 0.282 (-0.029 vs ffnn; its in-sample validation 0.299);
weighted mean: weights (1, 0, 0), 0.311 (+0.029 vs old, p < 0.001), not eligible (out of fold p = 1.0);
stacking: out-of-fold 0.323, eligible (p = 0.027), test 0.307 (-0.003 vs ffnn, p = 0.68; +0.026 vs old, p = 0.001).
Synthetic (20 seeds, good + weaker + noise): the old mean is worse than the best member on test in 20/20
(mean -0.051); cross-fitted weighted mean +0.001, stacking +0.002; eligible in 2/20, 1 of them worse on test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from emotion_core.calibration import apply_temperatures, fit_temperatures
from emotion_core.ensemble import cross_fit, ensemble_split
from emotion_core.evaluation import paired_bootstrap
from emotion_core.metrics import multilabel_metrics, sigmoid
from emotion_core.thresholds import apply_thresholds, tune_thresholds

SUBSET = {"max_train_samples": 4000, "max_validation_samples": 2000, "max_test_samples": 2000}
MEMBERS = {
    "ffnn": {"family": "ffnn", "max_features": 20000, "hidden_size": 128, "dropout": 0.5},
    "linear": {"family": "linear", "max_features": 20000},
    "ffnn-narrow": {"family": "ffnn", "max_features": 5000, "hidden_size": 32, "dropout": 0.3, "char_ngrams": [3, 3]},
}


def train_members(store_dir: Path) -> list:
    """The members' runs, trained into ``store_dir`` unless a run of that config is already there."""
    from emotion_core.config import load_yaml, parse_run_config
    from emotion_core.pipeline import train_config
    from emotion_core.runs import read_run
    from emotion_core.store import LocalStore

    store = LocalStore(store_dir)
    base = load_yaml(Path("deployments/configs/ffnn-tfidf.yaml").read_text())
    runs = []

    def done(name: str) -> list[str]:
        return [r for r in store.list_runs() if store.read_manifest(r).get("config_name") == f"bench-{name}"]

    for name, model in MEMBERS.items():
        if not done(name):
            raw = {**base, "name": f"bench-{name}", "model": model, "data": {**base["data"], **SUBSET}}
            train_config(parse_run_config(raw), store)
        runs.append(read_run(store.run_folder(done(name)[-1])))
    return runs


def member_arrays(runs) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray, list[str]]:
    from emotion_core.analysis import DataCache, rows_of, run_data

    cache = DataCache()
    arrays = [run_data(r, cache.for_run(r)) for r in runs]
    val_ids, test_ids = arrays[0].ids["validation"], arrays[0].ids["test"]
    for a in arrays[1:]:
        assert set(a.ids["validation"]) == set(val_ids) and set(a.ids["test"]) == set(test_ids)
    val = [rows_of(a.logits["validation"], a.ids["validation"], val_ids) for a in arrays]
    test = [rows_of(a.logits["test"], a.ids["test"], test_ids) for a in arrays]
    return val, arrays[0].truth["validation"], test, arrays[0].truth["test"], arrays[0].names


def compare(
    val: list[np.ndarray],
    yv: np.ndarray,
    test: list[np.ndarray],
    yt: np.ndarray,
    names: list[str],
    member_names: list[str],
    *,
    bootstrap_n: int = 1000,
    seed: int = 0,
) -> dict:
    """Every member alone (calibrated, thresholds from validation), the old ensemble and the cross-fitted ones."""
    f1 = lambda y, p: float(multilabel_metrics(y, p, names)["macro_f1"])  # noqa: E731
    out, test_preds = {"members": {}}, {}
    for name, zv, zt in zip(member_names, val, test):
        temps = fit_temperatures(zv, yv)
        cuts = tune_thresholds(yv, apply_temperatures(zv, temps), "per_label")
        test_preds[name] = apply_thresholds(apply_temperatures(zt, temps), cuts)
        out["members"][name] = {
            "validation_in_sample": f1(yv, apply_thresholds(apply_temperatures(zv, temps), cuts)),
            "test": f1(yt, test_preds[name]),
        }
    best = max(out["members"], key=lambda n: out["members"][n]["validation_in_sample"])
    val_ids, test_ids = list(range(len(yv))), list(range(len(yt)))
    old = ensemble_split([(val_ids, z) for z in val], yv, [(test_ids, z) for z in test])
    test_preds["old"] = apply_thresholds(old["test"][1], old["thresholds"])
    out["old_mean_in_sample"] = {
        "validation_in_sample": f1(yv, apply_thresholds(old["validation"][1], old["thresholds"])),
        "test": f1(yt, test_preds["old"]),
    }
    for method in ("weighted_mean", "stacking"):
        fit = cross_fit(val, yv, names, method=method, folds=5, bootstrap_n=bootstrap_n, seed=seed)
        test_preds[method] = fit.combiner.predict(test)
        out[method] = {
            "validation_out_of_fold": fit.oof_score,
            "test": f1(yt, test_preds[method]),
            "eligible": fit.eligible,
            "p_oof_vs_best_member": fit.paired["p_value"],
            "weights": None if fit.combiner.weights is None else fit.combiner.weights.round(3).tolist(),
        }
    for name in ("old", "weighted_mean", "stacking"):
        key = "old_mean_in_sample" if name == "old" else name
        vs_best = paired_bootstrap(yt, test_preds[name], test_preds[best], n=bootstrap_n, seed=seed)
        out[key]["test_vs_best_member"] = {"best": best, "delta": vs_best["delta"], "p_value": vs_best["p_value"]}
        if name != "old":
            vs_old = paired_bootstrap(yt, test_preds[name], test_preds["old"], n=bootstrap_n, seed=seed)
            out[key]["test_vs_old"] = {"delta": vs_old["delta"], "p_value": vs_old["p_value"]}
    return out


def synthetic(seeds: int = 20) -> dict:
    """Per seed: 3 members (good, weaker, noise) on 2,000 validation and 5,000 test rows; tallies."""
    tally = {
        "old_beats_best_member_on_validation": 0,
        "old_worse_than_best_member_on_test": 0,
        "new_eligible": 0,
        "new_eligible_and_worse_on_test": 0,
        "seeds": seeds,
    }
    deltas = {"old": [], "weighted_mean": [], "stacking": []}
    names = [f"l{i}" for i in range(28)]
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        rates = np.clip(rng.lognormal(-3.2, 0.9, 28), 0.003, 0.3)  # GoEmotions-like: many rare labels
        n = 7000
        signal = rng.normal(0, 1.0, (n, 28)) + np.log(rates / (1 - rates))
        y = (rng.random(signal.shape) < sigmoid(1.5 * signal)).astype(int)
        members = [
            2.0 * signal + rng.normal(0, 1.2, signal.shape),
            0.7 * signal + rng.normal(0, 1.2, signal.shape),
            rng.normal(-3, 1.5, signal.shape),
        ]
        result = compare(
            [m[:2000] for m in members],
            y[:2000],
            [m[2000:] for m in members],
            y[2000:],
            names,
            ["good", "weaker", "noise"],
            bootstrap_n=300,
            seed=seed,
        )
        best_val = max(v["validation_in_sample"] for v in result["members"].values())
        old = result["old_mean_in_sample"]
        tally["old_beats_best_member_on_validation"] += old["validation_in_sample"] > best_val
        tally["old_worse_than_best_member_on_test"] += old["test_vs_best_member"]["delta"] < 0
        tally["new_eligible"] += result["weighted_mean"]["eligible"]
        tally["new_eligible_and_worse_on_test"] += (
            result["weighted_mean"]["eligible"] and result["weighted_mean"]["test_vs_best_member"]["delta"] < 0
        )
        for name in deltas:
            key = "old_mean_in_sample" if name == "old" else name
            deltas[name].append(result[key]["test_vs_best_member"]["delta"])
    tally["mean_test_delta_vs_best_member"] = {k: float(np.mean(v)) for k, v in deltas.items()}
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="Store for the small real GoEmotions members (reused).")
    parser.add_argument("--synthetic", action="store_true", help="The synthetic 20-seed experiment.")
    args = parser.parse_args()
    if args.synthetic:
        print(json.dumps({"synthetic": synthetic()}, indent=2))
    if args.store:
        runs = train_members(args.store)
        val, yv, test, yt, names = member_arrays(runs)
        result = compare(val, yv, test, yt, names, list(MEMBERS))
        print(
            json.dumps(
                {
                    "goemotions_subset": {
                        "rows": {"validation": len(yv), "test": len(yt)},
                        "runs": [r.run_id for r in runs],
                        **result,
                    }
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
