"""``predict_batch``: a file in a store scored in chunks, resumable, published atomically; local and S3 stores."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from batch_helpers import promote, texts_frame, train_tiny_run

from emotion_core import batch_predict
from emotion_core.batch_predict import predict_batch
from emotion_core.errors import DataError, StoreError
from emotion_core.store import LocalStore

EMOTION = str(Path(sys.executable).with_name("emotion"))
ROWS, CHUNK = 3000, 256  # 12 chunks, the last one short


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A local store with one tiny FFNN run (also the champion of its dataset) and a cache folder."""
    folder = tmp_path_factory.mktemp("batch")
    store = LocalStore(folder / "store")
    run_id = train_tiny_run(folder, store)
    promote(store, run_id)
    return store, run_id


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))


def put_input(store: LocalStore, key: str, frame: pl.DataFrame) -> Path:
    path = store.root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if key.endswith(".parquet"):
        frame.write_parquet(path)
    else:
        frame.write_csv(path, separator="\t" if key.endswith(".tsv") else ",")
    return path


def emotion_predict(run_folder: Path, data: Path, out: Path) -> str:
    result = subprocess.run(
        [EMOTION, "predict", str(run_folder), str(data), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out.read_text()


def test_chunked_output_equals_emotion_predict(tiny, tmp_path):
    store, run_id = tiny
    data = put_input(store, "data/eq.csv", texts_frame(ROWS))
    result = predict_batch(store, "data/eq.csv", run_id, chunk_rows=CHUNK)
    assert (result.rows, result.chunks, result.computed, result.reused) == (ROWS, 12, 12, 0)
    assert result.output_key == "data/eq.predictions.csv"
    expected = emotion_predict(store.run_folder(run_id), data, tmp_path / "expected.csv")
    assert (store.root / "data/eq.predictions.csv").read_text() == expected  # same ids, labels, probabilities
    assert not (store.root / "data/eq.predictions.csv.parts").exists()  # the parts go once the output is out

    # Parquet in, Parquet out: the same table; the champion resolves to the same run.
    put_input(store, "data/eq.parquet", texts_frame(ROWS))
    result = predict_batch(store, "data/eq.parquet", "champion:tabular", chunk_rows=1000)
    assert result.run_id == run_id and result.output_key == "data/eq.predictions.parquet"
    got = pl.read_parquet(store.root / result.output_key)
    assert got.equals(pl.read_csv(tmp_path / "expected.csv", schema_overrides={"id": pl.Utf8}))


def test_ids_are_row_numbers_without_an_id_column_and_tsv_reads(tiny, tmp_path):
    store, run_id = tiny
    data = put_input(store, "data/noid.tsv", texts_frame(700).select("text"))
    predict_batch(store, "data/noid.tsv", run_id, chunk_rows=300)
    expected = emotion_predict(store.run_folder(run_id), data, tmp_path / "expected.csv")
    assert (store.root / "data/noid.predictions.csv").read_text() == expected
    assert expected.splitlines()[1].startswith("1,") and expected.splitlines()[0].startswith("row,")


@contextlib.contextmanager
def killed_after(chunks: int):
    """The part writer dies (as a killed worker would) once ``chunks`` parts are saved; the job must fail."""
    real = batch_predict._save_part
    saved = []

    def dying(*args, **kwargs):
        if len(saved) == chunks:
            raise KeyboardInterrupt("killed")
        saved.append(real(*args, **kwargs))
        return saved[-1]

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(batch_predict, "_save_part", dying)
        yield
    assert len(saved) == chunks


def test_a_killed_job_resumes_where_it_stopped_and_gives_the_same_file(tiny, monkeypatch):
    store, run_id = tiny
    put_input(store, "data/kill.csv", texts_frame(ROWS))
    reference = predict_batch(store, "data/kill.csv", run_id, chunk_rows=CHUNK, output_key="data/ref.csv")

    with killed_after(5):
        predict_batch(store, "data/kill.csv", run_id, chunk_rows=CHUNK)
    assert not (store.root / "data/kill.predictions.csv").exists()  # nothing final-looking after a failed job
    progress = store.read_document("data/kill.predictions.csv.parts/progress.json")
    assert sorted(progress["chunks"]) == ["0", "1", "2", "3", "4"]

    # A recorded part that was damaged since is scored again, not trusted.
    damaged = store.root / "data/kill.predictions.csv.parts/part-000003.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(store.root.parent / "other-machine-cache"))  # no local copies
    result = predict_batch(store, "data/kill.csv", run_id, chunk_rows=CHUNK)
    assert (result.reused, result.computed, result.chunks) == (4, 8, 12)
    assert (store.root / "data/kill.predictions.csv").read_bytes() == (store.root / reference.output_key).read_bytes()


def test_progress_of_another_job_is_not_reused(tiny, monkeypatch):
    store, run_id = tiny
    put_input(store, "data/stale.parquet", texts_frame(1000))
    with killed_after(2):
        predict_batch(store, "data/stale.parquet", run_id, chunk_rows=200)
    result = predict_batch(store, "data/stale.parquet", run_id, chunk_rows=300)  # other chunking: other parts
    assert (result.reused, result.computed) == (0, 4)
    put_input(store, "data/stale.parquet", texts_frame(1001))  # other input bytes, same chunking
    with killed_after(1):
        predict_batch(store, "data/stale.parquet", run_id, chunk_rows=300)
    put_input(store, "data/stale.parquet", texts_frame(1000))
    assert predict_batch(store, "data/stale.parquet", run_id, chunk_rows=300).reused == 0


@pytest.mark.parametrize(
    "frame, key, fragments",
    [
        (
            pl.DataFrame({"id": ["a"], "body": ["x"]}),
            "data/bad1.csv",
            ["data/bad1.csv", "column 'text'", "found: id, body"],
        ),
        (
            pl.DataFrame({"id": [f"i{n}" for n in range(600)], "text": ["ok"] * 450 + ["  "] + ["ok"] * 149}),
            "data/bad2.parquet",
            ["data/bad2.parquet", "row 451", "column 'text'", "empty text"],
        ),
        (
            pl.DataFrame({"id": ["a", "", "c"], "text": ["x", "y", "z"]}),
            "data/bad3.csv",
            ["row 2", "column 'id'", "empty id"],
        ),
        (
            pl.DataFrame({"id": ["a", "b", "a"], "text": ["x", "y", "z"]}),
            "data/bad4.csv",
            ["row 3", "duplicate id 'a'"],
        ),
        (pl.DataFrame({"id": ["a"], "text": [3]}), "data/bad5.parquet", ["column 'text'", "not text"]),
        (
            pl.DataFrame({"id": [], "text": []}, schema={"id": pl.Utf8, "text": pl.Utf8}),
            "data/bad6.csv",
            ["no data rows"],
        ),
    ],
)
def test_bad_input_is_refused_naming_key_row_and_column(tiny, frame, key, fragments):
    store, run_id = tiny
    put_input(store, key, frame)
    with pytest.raises(DataError) as refused:
        predict_batch(store, key, run_id, chunk_rows=200)
    for fragment in fragments:
        assert fragment in str(refused.value)
    assert not (store.root / batch_predict.default_output_key(key)).exists()


def test_bad_files_keys_and_runs_are_refused(tiny):
    store, run_id = tiny
    (store.root / "data").mkdir(exist_ok=True)
    (store.root / "data/ragged.csv").write_text("id,text\na,fine\nb,too,many\n")
    (store.root / "data/latin1.csv").write_bytes("id,text\na,caf\xe9\n".encode("latin-1"))
    for key, fragment in [
        ("data/ragged.csv", "data/ragged.csv"),
        ("data/latin1.csv", "UTF8"),
        ("data/missing.csv", "not found"),
        ("data/x.json", "unsupported file type"),
    ]:
        if key == "data/x.json":
            (store.root / key).write_text("{}")
        with pytest.raises(DataError, match=fragment):
            predict_batch(store, key, run_id)
    for key in ("../outside.csv", "/etc/passwd", "runs/x.csv", "data/.hidden.csv"):
        with pytest.raises(StoreError, match="input key"):
            predict_batch(store, key, run_id)
    with pytest.raises(DataError, match="must end in .csv or .parquet"):
        predict_batch(store, "data/eq.csv", run_id, output_key="data/out.txt")
    with pytest.raises(StoreError, match="no-such-run"):
        predict_batch(store, "data/eq.csv", "no-such-run")
    with pytest.raises(StoreError, match="no champion of dataset 'semeval'"):
        predict_batch(store, "data/eq.csv", "champion:semeval")


@pytest.mark.slow
def test_s3_store_scores_resumes_and_publishes_in_one_put(tiny, s3_bucket, monkeypatch, tmp_path):
    import boto3

    from emotion_core.store import open_store

    local, run_id = tiny
    s3 = open_store(f"s3://{s3_bucket}/team")
    s3.publish(local.run_folder(run_id), run_id)
    promote(s3, run_id)
    data = put_input(local, "data/s3.parquet", texts_frame(ROWS))
    client = boto3.client("s3", endpoint_url=s3.endpoint_url)
    client.upload_file(str(data), s3_bucket, "team/data/s3.parquet")
    expected = predict_batch(local, "data/s3.parquet", run_id, chunk_rows=CHUNK, output_key="data/s3-ref.parquet")

    with killed_after(4):
        predict_batch(s3, "data/s3.parquet", "champion:tabular", chunk_rows=CHUNK)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="team/data/")["Contents"]]
    assert "team/data/s3.predictions.parquet" not in keys  # nothing final-looking after a failed job
    assert sum(k.startswith("team/data/s3.predictions.parquet.parts/part-") for k in keys) == 4

    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "fresh-cache"))  # another worker: parts come from S3
    result = predict_batch(s3, "data/s3.parquet", "champion:tabular", chunk_rows=CHUNK)
    assert (result.reused, result.computed) == (4, 8)
    assert result.uri == f"s3://{s3_bucket}/team/data/s3.predictions.parquet"
    client.download_file(s3_bucket, "team/data/s3.predictions.parquet", str(tmp_path / "got.parquet"))
    assert pl.read_parquet(tmp_path / "got.parquet").equals(pl.read_parquet(local.root / expected.output_key))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="team/data/")["Contents"]]
    assert sorted(keys) == ["team/data/s3.parquet", "team/data/s3.predictions.parquet"]  # parts cleaned up


def test_the_cli_scores_locally_like_emotion_predict_and_names_a_bad_column(tiny, tmp_path):
    """``emotion predict-batch`` (real CLI): a line per chunk, the output URI, ``emotion predict``'s bytes."""
    store, run_id = tiny
    data = put_input(store, "data/cli.csv", texts_frame(700))
    done = subprocess.run(
        [EMOTION, "predict-batch", "data/cli.csv", "--run", run_id, "--store", str(store.root), "--chunk-rows", "300"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("chunk")] == [
        "chunk 0",
        "chunk 1",
        "chunk 2",
    ]
    assert f"written: {(store.root / 'data/cli.predictions.csv').as_uri()}" in done.stdout
    expected = emotion_predict(store.run_folder(run_id), data, tmp_path / "expected.csv")
    assert (store.root / "data/cli.predictions.csv").read_text() == expected

    bad = subprocess.run(
        [EMOTION, "predict-batch", "data/cli.csv", "--run", run_id, "--store", store.root, "--text-column", "body"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    from helpers import assert_refused

    assert_refused(bad, "'body'", "data/cli.csv")
    assert len((bad.stderr).strip().splitlines()) == 1
    missing = subprocess.run(
        [EMOTION, "predict-batch", "data/none.csv", "--run", run_id, "--store", str(store.root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_refused(missing, "data/none.csv", "not found")


def test_fleet_parameters_are_the_flows_with_an_absolute_checked_store(tmp_path, monkeypatch):
    import inspect

    from emotion_cli.batch_commands import batch_parameters
    from flows.predict_batch import predict_batch as flow

    monkeypatch.chdir(tmp_path)
    params = batch_parameters("data/x.csv", "champion:tabular", "rel-store", chunk_rows=10, id_column="ID")
    assert set(params) == set(inspect.signature(flow.fn).parameters)
    assert params["store"] == (tmp_path / "rel-store").as_uri() and params["chunk_rows"] == 10
    assert params["id_column"] == "ID" and params["calibration"] is True and params["output_key"] is None
    with pytest.raises(StoreError, match="credentials in a URI are refused"):
        batch_parameters("data/x.csv", "r", "s3://AKIAXX:secret@bucket/team")
