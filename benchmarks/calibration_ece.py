"""ECE of ``emotion predict``'s probabilities with and without the run's shipped calibration.

    python benchmarks/calibration_ece.py RUN [--out results/calibration_ece.json]

For the run's validation and test splits (its own dataset, as the run carved it): the split's texts go
through ``predict.predict_file`` (what ``emotion predict`` runs) with ``calibration`` on and off; the
written ``<label>_prob`` columns are scored against the split's labels with ``evaluation.ece``
(15 bins, flattened and mean per label), plus macro-F1 at the labels predict wrote. Validation is where
the temperatures were fitted; test is the held-out figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion_core.analysis import DataCache
from emotion_core.evaluation import ece
from emotion_core.metrics import multilabel_metrics
from emotion_core.predict import predict_file
from emotion_core.runs import read_run


def split_scores(run, data, split: str, folder: Path) -> dict:
    """ECE and macro-F1 of predict's output on ``split``, calibrated and not."""
    frame = data.split(split)
    names = list(run.schema.names)
    source = folder / f"{split}.parquet"
    frame.select(["id", "text"]).write_parquet(source)
    truth = frame.select(names).to_numpy().astype(int)
    out = {"rows": frame.height}
    for calibration in (False, True):
        path = predict_file(run.folder, source, folder / f"{split}-{calibration}.csv", calibration=calibration)
        pred = pl.read_csv(path, schema_overrides={"id": pl.Utf8})
        assert pred["id"].to_list() == [str(i) for i in frame["id"].to_list()], "predict changed the row order"
        probs = pred.select([f"{n}_prob" for n in names]).to_numpy()
        scores = ece(truth, probs)
        macro = multilabel_metrics(truth, pred.select(names).to_numpy(), names)["macro_f1"]
        out["calibrated" if calibration else "uncalibrated"] = {
            "ece_flat": scores["flat"],
            "ece_per_label_mean": scores["per_label_mean"],
            "macro_f1": macro,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    run = read_run(args.run)
    data = DataCache().for_run(run)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "run_id": run.run_id,
            "temperatures": run.calibration().payload["temperatures"],
            **{split: split_scores(run, data, split, Path(tmp)) for split in ("validation", "test")},
        }
    t = np.array(list(result["temperatures"].values()))
    print(f"run {run.run_id}: temperatures min {t.min():.3f} median {np.median(t):.3f} max {t.max():.3f}")
    print("| split | rows | ECE flat (raw -> calibrated) | ECE per-label mean (raw -> cal.) | macro-F1 (raw -> cal.) |")
    print("|---|---|---|---|---|")
    for split in ("validation", "test"):
        s, u, c = result[split], result[split]["uncalibrated"], result[split]["calibrated"]
        print(
            f"| {split} | {s['rows']} | {u['ece_flat']:.4f} -> {c['ece_flat']:.4f} | "
            f"{u['ece_per_label_mean']:.4f} -> {c['ece_per_label_mean']:.4f} | "
            f"{u['macro_f1']:.4f} -> {c['macro_f1']:.4f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
