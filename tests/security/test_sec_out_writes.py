"""Issue 11, class 5 (``--out`` never replaces what it names unless it is a regular output file) and
class 8 (``predict``/``submit`` keep a CSV's ``id`` column), through the real ``emotion`` CLI.

We run as root, so "unwritable" cannot be a chmod: it is a folder under ``/proc`` (no file can be
created there) and a path under a regular file. The device is a character device made with
``mknod`` in the test's folder (the /dev/full numbers), never /dev/full itself.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from helpers import assert_refused, write_tiny_tabular

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EMOTION = str(Path(sys.executable).with_name("emotion"))
TEXTS = "id,text\nx1,what a happy day\nx2,this makes me furious\n"


@pytest.fixture(scope="module")
def ffnn_run(tmp_path_factory) -> str:
    """A real tiny tabular FFNN run (labels joy, anger), trained in a few seconds."""
    from emotion_core.config import parse_run_config
    from emotion_core.pipeline import train_config
    from emotion_core.store import open_store

    folder = tmp_path_factory.mktemp("ffnn-run")
    write_tiny_tabular(folder / "train.csv")
    cfg = parse_run_config(
        {
            "name": "tiny-out",
            "model": {"family": "ffnn", "max_features": 200, "hidden_size": 8, "min_df": 1},
            "training": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None},
            "resources": {"gpu_memory_gb": 2},
            "data": {"dataset": "tabular", "path": str(folder / "train.csv"), "id_column": "id"},
        }
    )
    return train_config(cfg, open_store(folder / "store")).removeprefix("file://")


def emotion(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "EMOTION_CACHE_DIR": str(tmp_path / "cache"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    return subprocess.run([EMOTION, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def predict(run: str, data: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return emotion("predict", run, str(data), "--out", str(out), tmp_path=tmp_path)


def submit(run: str, data: Path, out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return emotion("submit", run, "--out", str(out), "--no-calibrated", "--data", str(data), tmp_path=tmp_path)


@pytest.mark.parametrize("command", [predict, submit], ids=["predict", "submit"])
def test_out_symlink_is_refused_and_its_target_kept(ffnn_run, tmp_path, command):
    (tmp_path / "in.csv").write_text(TEXTS, encoding="utf-8")
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's notes\n", encoding="utf-8")
    link = tmp_path / "out.csv"
    link.symlink_to(victim)
    assert_refused(command(ffnn_run, tmp_path / "in.csv", link, tmp_path), "out.csv", "symbolic link")
    assert link.is_symlink() and victim.read_text(encoding="utf-8") == "the user's notes\n"


def test_out_fifo_is_refused_without_hanging(ffnn_run, tmp_path):
    (tmp_path / "in.csv").write_text(TEXTS, encoding="utf-8")
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert_refused(predict(ffnn_run, tmp_path / "in.csv", fifo, tmp_path), "pipe.csv", "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_out_device_stays_a_device(ffnn_run, tmp_path):
    (tmp_path / "in.csv").write_text(TEXTS, encoding="utf-8")
    device = tmp_path / "full"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # the numbers of /dev/full
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    assert_refused(predict(ffnn_run, tmp_path / "in.csv", device, tmp_path), "full", "character device")
    assert stat.S_ISCHR(os.lstat(device).st_mode)


@pytest.mark.parametrize("command", [predict, submit], ids=["predict", "submit"])
def test_out_equal_to_the_input_is_assert_refused(ffnn_run, tmp_path, command):
    data = tmp_path / "in.csv"
    data.write_text(TEXTS, encoding="utf-8")
    assert_refused(command(ffnn_run, data, data, tmp_path), "in.csv", "would overwrite an input")
    assert data.read_text(encoding="utf-8") == TEXTS


def test_out_hard_link_to_the_input_is_assert_refused(ffnn_run, tmp_path):
    data = tmp_path / "in.csv"
    data.write_text(TEXTS, encoding="utf-8")
    os.link(data, tmp_path / "alias.csv")
    assert_refused(predict(ffnn_run, data, tmp_path / "alias.csv", tmp_path), "alias.csv", "would overwrite an input")
    assert data.read_text(encoding="utf-8") == TEXTS


def test_out_inside_the_run_folder_is_assert_refused(ffnn_run, tmp_path):
    (tmp_path / "in.csv").write_text(TEXTS, encoding="utf-8")
    target = Path(ffnn_run) / "thresholds.json"
    before = target.read_bytes()
    assert_refused(
        predict(ffnn_run, tmp_path / "in.csv", target, tmp_path), "thresholds.json", "inside the input folder"
    )
    assert target.read_bytes() == before


def test_out_where_nothing_can_be_created_is_a_clear_error(ffnn_run, tmp_path):
    (tmp_path / "in.csv").write_text(TEXTS, encoding="utf-8")
    assert_refused(
        predict(ffnn_run, tmp_path / "in.csv", Path("/proc/emotion-predictions.csv"), tmp_path),
        "/proc/emotion-predictions.csv",
        "cannot write",
    )
    assert not list(Path("/proc").glob(".emotion-predictions.csv.*"))


# -- class 8: ids kept ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, header, sep", [("in.csv", "id", ","), ("in.tsv", "ID", "\t")])
def test_predict_and_submit_keep_the_id_column(ffnn_run, tmp_path, name, header, sep):
    data = tmp_path / name
    data.write_text(f"text{sep}{header}\nwhat a happy day{sep}tweet-17\nso furious{sep}tweet-4\n", encoding="utf-8")
    result = predict(ffnn_run, data, tmp_path / "pred.csv", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pl.read_csv(tmp_path / "pred.csv", infer_schema=False)
    assert frame.columns[0] == header and frame[header].to_list() == ["tweet-17", "tweet-4"]

    result = submit(ffnn_run, data, tmp_path / "sub.csv", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pl.read_csv(tmp_path / "sub.csv", infer_schema=False)
    assert frame.columns[0] == header and frame[header].to_list() == ["tweet-17", "tweet-4"]


def test_an_explicit_id_column_wins_and_two_id_columns_are_ambiguous(ffnn_run, tmp_path):
    data = tmp_path / "in.csv"
    data.write_text("key,text,Id\nk1,happy,a\nk2,furious,b\n", encoding="utf-8")
    result = emotion(
        "submit",
        ffnn_run,
        "--out",
        str(tmp_path / "sub.csv"),
        "--no-calibrated",
        "--data",
        str(data),
        "--id-column",
        "key",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert pl.read_csv(tmp_path / "sub.csv", infer_schema=False)["key"].to_list() == ["k1", "k2"]

    data.write_text("id,text,ID\n1,happy,a\n2,furious,b\n", encoding="utf-8")
    assert_refused(
        predict(ffnn_run, data, tmp_path / "pred.csv", tmp_path), "in.csv", "several id columns", "--id-column"
    )
