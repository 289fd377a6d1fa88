"""Batch inference benchmark: rows/s and peak RSS of ``predict_batch`` on generated files of growing size.

    python benchmarks/batch_predict.py --run RUN_FOLDER [--rows 50000 200000] [--chunk-rows 20000] [--format parquet]
    python benchmarks/batch_predict.py --train-store .emotion/bench-store --rows 50000 200000   # trains the FFNN

For each size a file of ``rows`` generated texts (GoEmotions-like sentences with a counter, ids ``b0``...)
is written into a fresh local store, then a child process (own memory) runs ``predict_batch`` on it with
the run: wall time, rows/s, RSS once a 100-row warm-up job has imported torch and loaded the model, and
the resident high-water mark of the real job (``VmHWM``, reset after the warm-up). Memory is bounded if
the peak stays flat while the rows grow. JSON in ``benchmarks/results/batch_predict-<device>.json``
(``--out``), a markdown table on stdout.

``--train-store DIR``: trains, if not there yet, the small FFNN of ``serve_load.py`` (8,000 GoEmotions rows).

Limits: a local store (no S3 transfer in the figures); the text pool is small, so tokenizer caches may
flatter the FFNN's featurizer a little; on shared cores the rows/s move with the other users' load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    RESULTS,
    device_slug,
    emit,
    machine,
    markdown_table,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    run_child,
    versions,
    write_json,
)

WORDS = [
    "Thank you so much, this made my day!",
    "I can't believe they did that, I'm furious.",
    "Not sure what to think about this.",
    "That is hilarious, I laughed so hard",
    "I miss her every day.",
    "Wow, I did not expect that at all!",
    "This is disgusting behaviour.",
    "I'm so proud of you!",
]


def write_input(path: Path, rows: int) -> None:
    """``rows`` texts: two sentences and a counter per row (lazy polars, so the parent stays small too)."""
    import polars as pl

    n = pl.int_range(0, rows, eager=False)
    frame = (
        pl.LazyFrame()
        .select(n.alias("i"))
        .select(
            ("b" + pl.col("i").cast(pl.Utf8)).alias("id"),
            pl.concat_str(
                [
                    pl.lit(pl.Series(WORDS)).gather(pl.col("i") % 8),
                    pl.lit(" "),
                    pl.lit(pl.Series(WORDS)).gather((pl.col("i") * 5 + 3) % 8),
                    pl.lit(" #"),
                    (pl.col("i") % 1000).cast(pl.Utf8),
                ]
            ).alias("text"),
        )
    )
    if path.suffix == ".parquet":
        frame.sink_parquet(path)
    else:
        frame.sink_csv(path)


def child(spec: dict) -> None:
    """In a fresh process: resolve the run, then time ``predict_batch`` and read its memory high-water mark."""
    from emotion_core.batch_predict import predict_batch
    from emotion_core.store import LocalStore

    store = LocalStore(spec["store"])
    write_input(store.root / "data/warm.parquet", 100)
    predict_batch(store, "data/warm.parquet", spec["run"])  # imports torch, loads the model once: the baseline
    rss_loaded = rss_mb()
    reset_peak_rss()
    started = time.perf_counter()
    result = predict_batch(store, spec["key"], spec["run"], chunk_rows=spec["chunk_rows"])
    wall = time.perf_counter() - started
    emit(
        {
            "rows": result.rows,
            "chunks": result.chunks,
            "wall_s": round(wall, 1),
            "rows_per_s": round(result.rows / wall),
            "rss_model_loaded_mb": rss_loaded,
            "peak_rss_mb": peak_rss_mb(),
            "output_mb": round((store.root / result.output_key).stat().st_size / 2**20, 1),
        }
    )


def train(store_dir: Path) -> str:
    """The small FFNN run of ``serve_load.py`` in ``store_dir`` (trained once); returns its folder."""
    from benchmarks.serve_load import ROOT, SMALL_RUNS
    from emotion_core.config import load_run_config, parse_overrides
    from emotion_core.pipeline import train_config
    from emotion_core.store import LocalStore

    store = LocalStore(store_dir)
    config, overrides = SMALL_RUNS["ffnn"]
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("name="))
    existing = [r for r in store.list_runs() if r.startswith(f"{name}-")]
    if existing:
        return str(store.run_folder(existing[-1]))
    print("training the FFNN ...", file=sys.stderr, flush=True)
    return train_config(load_run_config(ROOT / config, parse_overrides(overrides)), store).removeprefix("file://")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run", help="run folder or URI to score with")
    parser.add_argument("--train-store", type=Path, help="local store: train the small FFNN there (once)")
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--chunk-rows", type=int, default=20_000)
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    if not args.run and not args.train_store:
        parser.error("give --run or --train-store")
    run = args.run or train(args.train_store)
    results = []
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        for rows in args.rows:
            store = Path(tmp) / f"store-{rows}"
            key = f"data/bench.{args.format}"
            (store / "data").mkdir(parents=True)
            write_input(store / key, rows)
            spec = {"store": str(store), "key": key, "run": run, "chunk_rows": args.chunk_rows}
            result = run_child(
                Path(__file__),
                spec,
                Path(tmp) / f"child-{rows}.log",
                env={"EMOTION_CACHE_DIR": str(Path(tmp) / "cache")},
            )
            results.append({"input_rows": rows, "format": args.format, "chunk_rows": args.chunk_rows, **result})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    out = args.out or RESULTS / f"batch_predict-{device_slug()}.json"
    write_json(out, {"run": run, "machine": machine(), "versions": versions(), "results": results})
    print(
        markdown_table(
            results,
            [
                "input_rows",
                "format",
                "chunk_rows",
                "status",
                "wall_s",
                "rows_per_s",
                "rss_model_loaded_mb",
                "peak_rss_mb",
                "output_mb",
                "load_average_after",
            ],
        )
    )
    print(f"\n{out}")
    return 0 if all(r["status"] == "completed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
