"""Batch inference: score a CSV/TSV/Parquet file in a store with a run or a dataset's champion, in chunks.

Features
- Input: a key in the store (``data/reviews.parquet``), read as a stream of ``chunk_rows`` rows (pyarrow's
  CSV reader / Parquet batches): memory holds one chunk, never the file. An S3 object is downloaded to the cache.
- Columns: ``text_column`` (default ``text``); ids from ``id_column``, else a column named ``id`` in any case,
  else 1-based row numbers named ``row`` (as ``emotion predict``). Output columns and values are
  ``emotion predict``'s (``predict.prediction_frame``): id, 0/1 per label, ``<label>_prob``.
- Model: a run id of the store, a run folder or URI, or ``champion:<dataset>`` (``serving.models.ChampionSource``);
  calibrated like ``emotion predict`` unless ``calibration=False``.
- Resumable: each chunk is published as ``<output>.parts/part-NNNNNN.parquet`` and recorded (rows, sha256)
  in ``<output>.parts/progress.json``; a rerun of the same job (same input bytes, run, chunking, columns)
  reuses every recorded part whose sha256 and rows still match and scores only the rest.
- Atomic: the output (``<stem>.predictions.csv|parquet`` next to the input by default, format from the
  output key's suffix) is assembled from the parts by a streaming sink and published in one step; a failed
  job leaves only the ``.parts/`` folder, never a final-looking file. The parts go once the output is out.

Limits: ids are checked for emptiness everywhere but for duplicates only within a chunk (a whole-file check
would hold every id in memory); two jobs writing the same output at once are not locked out.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import polars as pl

from emotion_core.data.predict_input import default_id_column
from emotion_core.data.tabular import ROW_ID
from emotion_core.errors import DataError, StoreError
from emotion_core.files import sha256_file
from emotion_core.predict import load_predictor, prediction_frame
from emotion_core.settings import cache_root
from emotion_core.store import ArtifactStore, objects
from emotion_core.store.base import is_run_id

__all__ = ["BatchResult", "default_output_key", "predict_batch", "resolve_run"]

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the part layout changes: older progress documents are then stale
_OUTPUT_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class BatchResult:
    """What a batch job wrote: the output key and URI, the rows, and how many chunks it scored or reused."""

    output_key: str
    uri: str
    run_id: str
    rows: int
    chunks: int
    computed: int
    reused: int


# ------------------------------------------------------------------------------------------- what to run
def resolve_run(store: ArtifactStore, ref: str) -> Path | str:
    """``champion:<dataset>`` of ``store``, a run id in ``store``, or a run folder / URI -> the verified run's folder
    (or the URI to read); a run or a published ensemble."""
    from emotion_core.serving.models import CHAMPION_PREFIX, ChampionSource

    if ref.startswith(CHAMPION_PREFIX):
        champion = ChampionSource(store, ref.removeprefix(CHAMPION_PREFIX))  # the resolver `emotion serve` uses
        return store.run_folder(champion.current())
    if is_run_id(ref) and store.has_run(ref):
        return store.run_folder(ref)
    if "/" in ref or "://" in ref:
        return ref
    raise StoreError(
        f"run {ref!r}: not a run of the store {store.uri}, nor a run folder or URI; "
        f"name a run id, a folder, an s3:// URI or champion:<dataset>"
    )


def default_output_key(input_key: str) -> str:
    """``data/x.parquet`` -> ``data/x.predictions.parquet``; ``data/x.csv``/``.tsv`` -> ``data/x.predictions.csv``."""
    path = PurePosixPath(input_key)
    suffix = ".parquet" if path.suffix.lower() == ".parquet" else ".csv"
    return str(path.with_name(f"{path.stem}.predictions{suffix}"))


# ------------------------------------------------------------------------------------------- reading
def _columns(path: Path, where: str, text_column: str | None, id_column: str | None) -> tuple[str, str | None]:
    """The text and id columns of the file's header; ``DataError`` naming the missing one."""
    names = _open_batches(path, where, None).schema.names
    text_name = text_column or "text"
    id_name = id_column or default_id_column(names, where)
    missing = [c for c in (text_name, id_name) if c is not None and c not in names]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(map(repr, missing))}; found: {', '.join(names)}",
            file=where,
            column=missing[0],
        )
    return text_name, id_name


def _open_batches(path: Path, where: str, columns: list[str] | None):
    """A pyarrow record-batch reader of ``path`` (``columns`` only, as text for CSV/TSV), with ``.schema``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            parquet = pq.ParquetFile(path)
            return _ParquetBatches(parquet, columns)
        if suffix in (".csv", ".tsv"):
            convert = pacsv.ConvertOptions(
                include_columns=columns or [],
                strings_can_be_null=False,
                column_types={c: pa.string() for c in columns or []},
            )
            return pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=4 << 20),
                parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True),
                convert_options=convert,
            )
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read the file: {exc}", file=where) from None
    raise DataError(f"unsupported file type {suffix or '(none)'}: expected .csv, .tsv or .parquet", file=where)


class _ParquetBatches:
    """Parquet batches with the CSV reader's shape (``schema`` + iteration)."""

    def __init__(self, parquet, columns: list[str] | None) -> None:
        self.parquet, self.columns = parquet, columns
        self.schema = parquet.schema_arrow

    def __iter__(self):
        return self.parquet.iter_batches(batch_size=64_000, columns=self.columns)


def _chunks(path: Path, where: str, text_name: str, id_name: str | None, chunk_rows: int) -> Iterator[pl.DataFrame]:
    """Frames of exactly ``chunk_rows`` rows (the last may be shorter) with ``id``/``text`` columns as text."""
    import pyarrow as pa

    columns = [text_name] + ([id_name] if id_name and id_name != text_name else [])
    reader = _open_batches(path, where, columns)
    text_type = reader.schema.field(text_name).type
    if not (
        pa.types.is_string(text_type)
        or pa.types.is_large_string(text_type)
        or pa.types.is_null(text_type)
        or (pa.types.is_dictionary(text_type) and pa.types.is_string(text_type.value_type))
    ):
        raise DataError(f"the text column holds {text_type} values, not text (strings)", file=where, column=text_name)
    pending: list[pl.DataFrame] = []
    held = 0
    offset = 0
    batches = iter(reader)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:  # a malformed row, invalid UTF-8 or a damaged file, mid-way
            raise DataError(f"cannot read the file after data row {offset + held}: {exc}", file=where) from None
        if batch is not None and batch.num_rows:
            frame = pl.from_arrow(batch)
            ids = pl.col(id_name).cast(pl.Utf8) if id_name else pl.int_range(1, frame.height + 1) + offset + held
            pending.append(frame.select(ids.cast(pl.Utf8).alias("id"), pl.col(text_name).cast(pl.Utf8).alias("text")))
            held += batch.num_rows
        while held >= chunk_rows or (batch is None and held):
            joined = pl.concat(pending)
            chunk, rest = joined.head(chunk_rows), joined.slice(chunk_rows)
            pending, held = ([rest] if rest.height else []), rest.height
            yield chunk
            offset += chunk.height
        if batch is None:
            if offset == 0:
                raise DataError("no data rows", file=where)
            return


def _check_chunk(chunk: pl.DataFrame, offset: int, where: str, text_name: str, id_name: str | None) -> None:
    """Empty texts or ids, and ids repeated within the chunk: ``DataError`` naming the first one's row."""
    rows = chunk.with_row_index("n")
    checks = [("text", text_name, "empty text")] + ([("id", id_name, "empty id")] if id_name else [])
    for column, name, reason in checks:
        blank = rows.filter(pl.col(column).is_null() | (pl.col(column).str.strip_chars() == ""))
        if blank.height:
            raise DataError(reason, file=where, row=offset + blank["n"][0] + 1, column=name)
    if id_name:
        repeated = rows.filter(pl.col("id").is_duplicated())
        if repeated.height:
            first = repeated.filter(pl.col("id") == repeated["id"][0])["n"]
            raise DataError(
                f"duplicate id {repeated['id'][0]!r} (first at row {offset + first[0] + 1})",
                file=where,
                row=offset + first[1] + 1,
                column=id_name,
            )


# ------------------------------------------------------------------------------------------- progress
def _job(
    input_key: str,
    input_sha256: str,
    run,
    calibrated: bool,
    chunk_rows: int,
    text_name: str,
    id_name: str | None,
    output_key: str,
) -> dict:
    """What makes a part reusable: the same input bytes, run, decision rule, chunking, columns and output."""
    return {
        "format": FORMAT,
        "input": input_key,
        "input_sha256": input_sha256,
        "run_id": run.run_id,
        "calibrated": calibrated,
        "chunk_rows": chunk_rows,
        "text_column": text_name,
        "id_column": id_name,
        "output": output_key,
    }


def _recorded_chunks(progress: dict | None, job: dict, where: str) -> dict[int, dict]:
    """The chunks a previous attempt of this same job finished; {} for another job's or a malformed document."""
    if not progress:
        return {}
    chunks = progress.get("chunks")
    if progress.get("job") != job or not isinstance(chunks, dict):
        log.warning("%s belongs to another job (other input, run or settings): starting over", where)
        return {}
    done = {}
    for index, facts in chunks.items():  # untrusted: only well-formed entries count
        if (
            isinstance(index, str)
            and index.isdigit()
            and isinstance(facts, dict)
            and isinstance(facts.get("rows"), int)
            and isinstance(facts.get("sha256"), str)
        ):
            done[int(index)] = {"rows": facts["rows"], "sha256": facts["sha256"]}
    return done


def _reusable(store: ArtifactStore, key: str, facts: dict, rows: int, local: Path) -> Path | None:
    """A verified local copy of a recorded part (its sha256 and row count match), else None."""
    if facts["rows"] != rows:
        return None
    try:
        if local.is_file() and sha256_file(local) == facts["sha256"]:
            return local
        if not objects.exists(store, key):
            return None
        path = objects.download_file(store, key, local)
    except (OSError, DataError):
        return None
    return path if sha256_file(path) == facts["sha256"] else None


def _save_part(store: ArtifactStore, key: str, frame: pl.DataFrame, local: Path) -> dict:
    """Write a chunk's predictions locally, publish them as ``key``; return its record (rows, sha256)."""
    tmp = local.with_name(f".{local.name}.tmp")
    frame.write_parquet(tmp)
    tmp.replace(local)
    objects.put_file(store, key, local)
    return {"rows": frame.height, "sha256": sha256_file(local)}


# ------------------------------------------------------------------------------------------- the job
def predict_batch(
    store: ArtifactStore,
    input_key: str,
    run: str,
    *,
    output_key: str | None = None,
    chunk_rows: int = 50_000,
    calibration: bool = True,
    text_column: str | None = None,
    id_column: str | None = None,
    batch_size: int = 128,
    on_chunk: Callable[[int, int, bool], None] = lambda index, rows, reused: None,
) -> BatchResult:
    """Score ``input_key`` of ``store`` with ``run`` (module docstring); ``on_chunk(index, rows so far, reused)``
    after each chunk (``emotion predict-batch`` prints it). Returns what was written."""
    input_key, output_key = _checked_keys(input_key, output_key, chunk_rows)
    where = objects.object_name(store, input_key)
    predictor = load_predictor(resolve_run(store, run), calibration=calibration, batch_size=batch_size, store=store)
    path = objects.local_file(store, input_key)
    text_name, id_name = _columns(path, where, text_column, id_column)

    job = _job(
        input_key, sha256_file(path), predictor.run, predictor.calibrated, chunk_rows, text_name, id_name, output_key
    )
    parts_folder = f"{output_key}.parts"
    progress_key = f"{parts_folder}/progress.json"
    recorded = _recorded_chunks(store.read_document(progress_key), job, objects.object_name(store, progress_key))
    if not recorded:
        objects.delete_folder(store, parts_folder)  # another job's leftovers are never mixed in
    work = cache_root() / "batch" / hashlib.sha256(repr(sorted(job.items())).encode()).hexdigest()[:16]
    work.mkdir(parents=True, exist_ok=True)
    progress = {"job": job, "chunks": {}}
    parts: list[Path] = []
    computed = reused = rows = 0
    started = time.monotonic()
    for index, chunk in enumerate(_chunks(path, where, text_name, id_name, chunk_rows)):
        key, local = f"{parts_folder}/part-{index:06d}.parquet", work / f"part-{index:06d}.parquet"
        part = _reusable(store, key, recorded[index], chunk.height, local) if index in recorded else None
        was_reused = part is not None
        if was_reused:
            progress["chunks"][str(index)] = recorded[index]
            reused += 1
        else:
            _check_chunk(chunk, rows, where, text_name, id_name)
            progress["chunks"][str(index)] = _save_part(
                store, key, _chunk_predictions(predictor, chunk, id_name), local
            )
            store.write_document(progress_key, progress)  # after the part: a recorded part always exists
            part, computed = local, computed + 1
        parts.append(part)
        rows += chunk.height
        _log_progress(where, index, rows, started)
        on_chunk(index, rows, was_reused)

    uri = _publish_output(store, output_key, parts, work)
    objects.delete_folder(store, parts_folder)
    _remove_work(work)
    result = BatchResult(output_key, uri, predictor.run.run_id, rows, len(parts), computed, reused)
    _log_done(result, "calibrated" if predictor.calibrated else "uncalibrated")
    return result


def _checked_keys(input_key: str, output_key: str | None, chunk_rows: int) -> tuple[str, str]:
    """The checked input and output keys (default output: ``default_output_key``); a bad chunk size or output key
    is a ``DataError`` before anything is read."""
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise DataError(f"chunk_rows must be a positive whole number, got {chunk_rows!r}")
    input_key = objects.check_object_key(input_key, "input key")
    output_key = objects.check_object_key(output_key or default_output_key(input_key), "output key")
    if PurePosixPath(output_key).suffix.lower() not in _OUTPUT_SUFFIXES:
        raise DataError("the output key must end in .csv or .parquet (its format)", file=output_key)
    if output_key == input_key:
        raise DataError("the output key is the input key; give another output key", file=output_key)
    return input_key, output_key


def _chunk_predictions(predictor, chunk: pl.DataFrame, id_name: str | None) -> pl.DataFrame:
    """The output table of one chunk (``predict.prediction_frame``): its ids, 0/1 labels and probabilities."""
    probs, predicted = predictor.predict(chunk["text"].to_list())
    names = list(predictor.run.schema.names)
    return prediction_frame(names, id_name or ROW_ID, chunk["id"].to_list(), probs, predicted)


def _log_progress(where: str, index: int, rows: int, started: float) -> None:
    rate = rows / max(time.monotonic() - started, 1e-9)
    log.info("%s: chunk %d done (%d rows so far, %.0f rows/s)", where, index, rows, rate)


def _log_done(result: BatchResult, rule: str) -> None:
    log.info(
        "wrote %d predictions of run %s (%s) to %s: %d chunks scored, %d reused",
        result.rows,
        result.run_id,
        rule,
        result.uri,
        result.computed,
        result.reused,
    )


def _publish_output(store: ArtifactStore, output_key: str, parts: list[Path], work: Path) -> str:
    """Stream the parts, in order, into one file of the output's format; publish it in one step."""
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        final = Path(scratch) / PurePosixPath(output_key).name
        scan = pl.scan_parquet([str(p) for p in parts])
        if final.suffix.lower() == ".parquet":
            scan.sink_parquet(final)
        else:
            scan.sink_csv(final)
        return objects.put_file(store, output_key, final)


def _remove_work(work: Path) -> None:
    import shutil

    shutil.rmtree(work, ignore_errors=True)
