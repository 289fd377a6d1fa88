"""Issue 11, classes 10 and 11: what the bad-input corpus cannot express.

Damaged run folders (a copy of a real tiny run, then one file removed or changed) through the real
``emotion`` CLI; a full disk (``ENOSPC``) and a read-only store (``EROFS``) raised from the real write
calls, which cannot be provoked otherwise on a test machine (it runs as root); the one YAML loader.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import assert_refused, write_tiny_tabular

from emotion_core.config import parse_run_config
from emotion_core.errors import DataError, StoreError
from emotion_core.labels import LabelSchema
from emotion_core.store import LocalStore

pytestmark = pytest.mark.slow  # one tiny training run for the module, a few CLI calls

EMOTION = str(Path(sys.executable).with_name("emotion"))
TINY = {
    "model": {"family": "ffnn", "max_features": 200, "hidden_size": 8, "min_df": 1},
    "training": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None, "checkpoint_every_steps": 0},
    "resources": {"gpu_memory_gb": 2},
}


def tiny_config(folder: Path):
    write_tiny_tabular(folder / "train.csv")
    return parse_run_config(
        {
            "name": "tiny-errors",
            **TINY,
            "data": {"dataset": "tabular", "id_column": "id", "path": str(folder / "train.csv")},
        }
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from emotion_core.pipeline import train_config

    folder = tmp_path_factory.mktemp("tiny-errors")
    return Path(train_config(tiny_config(folder), LocalStore(folder / "store")).removeprefix("file://"))


@pytest.fixture
def damaged(tiny_run, tmp_path):
    """A copy of the tiny run to damage."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def reseal(run: Path) -> None:
    """Rewrite the manifest's file inventory as a writer of the store could: only the checks past sha256 remain."""
    from emotion_core.runs import file_inventory

    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"] = file_inventory(run)
    (run / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.csv"
    path.write_text("id,text\na,what a happy day\nb,so mad\n", encoding="utf-8")
    return path


def emotion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EMOTION, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


# -- damaged run folders (class 10) -----------------------------------------------------------------

DAMAGES = {
    "no-thresholds": (lambda run: (run / "thresholds.json").unlink(), "thresholds.json"),
    "no-weights": (lambda run: (run / "model" / "model.safetensors").unlink(), "model.safetensors"),
    "more-labels": (
        lambda run: (run / "labels.json").write_text('{"labels": ["joy", "anger", "fear"]}'),
        "labels.json",
    ),
    "swapped-labels": (lambda run: (run / "labels.json").write_text('{"labels": ["anger", "joy"]}'), "labels.json"),
}


@pytest.mark.parametrize("command", ["predict", "submit"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_run_is_refused_naming_the_folder_and_file(damaged, texts, tmp_path, damage, command):
    spoil, file = DAMAGES[damage]
    spoil(damaged)
    reseal(damaged)
    out = tmp_path / "out.csv"
    if command == "predict":
        result = emotion("predict", damaged, texts, "--out", out)
    else:
        result = emotion("submit", damaged, "--out", out, "--no-calibrated", "--data", texts)
    assert_refused(result, str(damaged), file)
    assert not out.exists()


def test_weights_that_do_not_fit_the_labels_are_a_store_error(tiny_run, texts):
    from emotion_core.predict import run_logits
    from emotion_core.runs import Run, read_run

    run = read_run(tiny_run)
    # labels.json and the manifest agree on three labels (both edited), the weights have two outputs.
    three = Run(run.folder, run.manifest, run.config, LabelSchema(("joy", "anger", "fear")))
    with pytest.raises(StoreError, match=r"model/ \(its weights do not fit the 3 labels of labels.json\)"):
        run_logits(three, ["a text"])


def test_thresholds_in_another_label_order_are_a_store_error(tiny_run):
    from emotion_core.runs import Run, read_run

    run = read_run(tiny_run)
    swapped = Run(run.folder, run.manifest, run.config, LabelSchema(("anger", "joy")))
    with pytest.raises(StoreError, match=r"thresholds.json: its labels \(joy, anger\) differ from labels.json"):
        swapped.thresholds()


# -- a full disk, a read-only or unwritable store (class 10) ---------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_on_out_is_a_data_error_and_nothing_is_written(tiny_run, texts, tmp_path, monkeypatch):
    from emotion_core.predict import predict_file

    real_fsync = os.fsync

    def half_then_full(fd):  # the temporary file holds the text, then the disk reports it full
        real_fsync(fd)
        no_space()

    monkeypatch.setattr(os, "fsync", half_then_full)
    out = tmp_path / "out" / "predictions.csv"
    with pytest.raises(DataError, match=r"predictions.csv: cannot write the file \(No space left on device\)"):
        predict_file(tiny_run, texts, out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary file left


def test_a_full_disk_while_publishing_leaves_no_half_copy(tiny_run, tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    copied = []

    def copy_then_full(src, dst, *args, **kwargs):
        if copied:
            no_space()
        copied.append(dst)
        return shutil.copy2(src, dst)

    real_copytree = shutil.copytree  # its default copy_function is bound at definition: patch copytree itself

    def copytree(src, dst, symlinks=False, ignore=None, copy_function=None, *rest, **kwargs):
        return real_copytree(src, dst, symlinks, ignore, copy_then_full, *rest, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copytree)
    run_id = tiny_run.name  # a run is published under the id its manifest names
    with pytest.raises(
        StoreError,
        match=rf"copying run {run_id} from .* failed \(\[Errno 28\] No space left on device "
        rf"while copying .*\)",
    ):
        store.publish(tiny_run, run_id)
    assert store.list_runs() == []
    assert list((tmp_path / "store" / ".staging").iterdir()) == []  # the half copy is gone
    assert (tiny_run / "manifest.json").is_file()  # the source is intact


def test_a_read_only_store_is_a_store_error(tiny_run, tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    run_id = tiny_run.name
    staged = store.staging(run_id)
    shutil.copytree(tiny_run, staged, dirs_exist_ok=True)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(StoreError, match=rf"publishing run {run_id} failed \(Read-only file system\)"):
        store.publish(staged, run_id)
    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(StoreError, match=r"cannot write a staging folder \(Read-only file system\)"):
        store.staging("r2")
    assert store.list_runs() == []


def test_a_store_whose_staging_area_is_a_file_is_a_store_error(tmp_path):
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store" / ".staging").write_text("not a folder\n")
    with pytest.raises(StoreError, match=r"cannot write a staging folder"):
        store.staging("r1")


def test_a_full_disk_while_training_is_a_store_error_and_nothing_is_published(tmp_path, monkeypatch):
    from emotion_core import pipeline

    monkeypatch.setattr(pipeline, "write_json", no_space)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(StoreError, match=r"writing run .* failed \(No space left on device\); nothing was published"):
        pipeline.train_config(tiny_config(tmp_path), store)
    assert store.list_runs() == []
    assert list((tmp_path / "store" / ".staging").iterdir()) == []


# -- the one YAML loader (class 11) -------------------------------------------------------------------


def test_duplicate_keys_are_refused_anywhere_but_merges_still_work():
    from emotion_core.config import load_yaml

    with pytest.raises(yaml.YAMLError, match=r"duplicate key 'a' \(first at line 1\)"):
        load_yaml("{a: 1, a: 2}")
    with pytest.raises(yaml.YAMLError, match=r"duplicate key 'epochs'"):
        load_yaml("training:\n  epochs: 1\n  batch_size: 2\n  epochs: 3\n")
    assert load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")["other"] == {"x": 3, "y": 2}


def test_a_run_config_with_a_duplicate_key_is_assert_refused(damaged, texts, tmp_path):
    config = damaged / "config.yaml"
    config.write_text(config.read_text() + "name: other\n", encoding="utf-8")
    reseal(damaged)
    result = emotion("predict", damaged, texts, "--out", tmp_path / "out.csv")
    assert_refused(result, "config.yaml", "duplicate key 'name'")


def test_every_float_field_refuses_nan_as_not_finite():
    from emotion_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"field 'model.dropout': Input should be a finite number"):
        parse_run_config({"name": "x", "model": {"family": "ffnn", "dropout": float("nan")}})
    assert parse_run_config({"name": "x", "model": {"family": "ffnn", "dropout": 0.2}}).model.dropout == 0.2
