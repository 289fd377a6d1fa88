"""A corpus of malformed inputs (issue 6): the ``emotion`` CLI refuses each one with a clear error.

One table row per case: the command line (placeholders below), the exit status, and the fragments
stderr must hold -- the file, row, column or config field at fault, named specifically. Every case
also checks that no traceback leaks (stdout or stderr), that nothing is written or lost: the
``--out`` file does not exist, the store (``--store``/``$EMOTION_STORE``, a fresh folder per case)
has no run and no staged leftovers, and no temporary file is left anywhere in the case's folder.

Inputs: the small hand-written files under ``tests/data/bad/`` (``config/``, ``data/``), plus what a
case writes into its own folder (bytes that are not UTF-8, CRLF line endings, Parquet files, fake
run folders, tiny train configs). Nothing comes from the shared data sets.

Placeholders: ``{bad}`` tests/data/bad, ``{tmp}`` the case's folder, ``{out}`` ``{tmp}/out/predictions.csv``,
``{store}`` ``{tmp}/store``, ``{config}`` the case's train config, ``{run}`` a tiny trained run (one per
module), ``{port}`` a closed 127.0.0.1 port. Cases that reach the ``train-model`` flow run against the
session's Prefect server (``prefect_stack``), not an ephemeral one per call.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
import yaml
from helpers import write_tiny_tabular

pytestmark = pytest.mark.slow  # ~70 CLI calls, ~15 of them through a Prefect flow

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "data" / "bad"
EMOTION = str(Path(sys.executable).with_name("emotion"))
SEMEVAL_HEADER = (
    "ID\tTweet\tanger\tanticipation\tdisgust\tfear\tjoy\tlove\toptimism\tpessimism\tsadness\tsurprise\ttrust\n"
)

# A run config that trains in a second if a case ever got that far; each train case sets its ``data``.
TINY = {
    "model": {"family": "ffnn", "max_features": 200, "hidden_size": 8, "min_df": 1},
    "training": {"epochs": 1, "batch_size": 8, "early_stopping_patience": None},
    "resources": {"gpu_memory_gb": 2},
}


def parquet(frame: dict) -> Callable[[Path], None]:
    return lambda path: pl.DataFrame(frame, strict=False).write_parquet(path)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]
    """Fragments stderr must contain (after placeholders are filled in)."""
    status: int = 2
    files: dict[str, bytes | str | Callable[[Path], None]] = field(default_factory=dict)
    """Written into the case's folder first: bytes, text, or a function of the path."""
    data: dict | None = None
    """Train cases: the ``data`` section of ``{config}`` (a ``TINY`` config named after the case)."""
    env: dict[str, str] = field(default_factory=dict)
    prefect: bool = False
    """The call runs the train-model flow: give it the session's Prefect API."""
    needs_run: bool = False


def check(name: str, *expect: str) -> Case:
    return Case(f"config-{name}", ("check-config", f"{{bad}}/config/{name}.yaml"), (f"{name}.yaml", *expect))


def predict(name: str, *expect: str, files: dict | None = None, data: str | None = None) -> Case:
    path = data or f"{{bad}}/data/{name}"
    return Case(
        f"predict-{name}",
        ("predict", "{run}", path, "--out", "{out}"),
        (Path(path).name, *expect),
        files=files or {},
        needs_run=True,
    )


def train(name: str, data: dict, *expect: str, files: dict | None = None) -> Case:
    return Case(
        f"train-{name}", ("train", "{config}", "--store", "{store}"), expect, files=files or {}, data=data, prefect=True
    )


CONFIG_CASES = [
    check("malformed-yaml", "line 3, column 9 invalid YAML: expected ',' or '}'"),
    check("unknown-field", "field 'training.batch_sise'", "Extra inputs are not permitted"),
    check("wrong-type", "field 'training.epochs'", "valid number"),
    check("negative-batch-size", "field 'training.batch_size'", "greater than 0"),
    check("unknown-family", "field 'model'", "'svm'", "'ffnn', 'linear', 'encoder', 'decoder', 'zero_shot'"),
    check("unknown-adapter-method", "field 'model.adapter.method'", "'lora', 'ia3' or 'qlora'"),
    check("combined-loss-without-weights", "field 'training.loss'", "needs loss.weights"),
    Case(
        "config-set-missing-file",
        ("check-config", "{bad}/config/set-missing-file.yaml"),
        ("no-such-config.yaml: config file not found",),
    ),
    check("set-duplicate-names", "config names must be unique in a set; repeated: ok-ffnn"),
    check("set-empty", "field 'configs'", "at least 1 item"),
    check("adapter-on-gpt2", "field 'model.adapter'", "not supported on architecture 'gpt2'"),
    check("too-large-for-gpu", "field 'resources.gpu_memory_gb'", "meta-llama/Llama-3.1-8B", "declared 24 GiB"),
    check("zero-shot-template-without-label", "field 'model.template'", "needs {label} exactly once"),
    check("not-a-mapping", "expected a mapping of config fields, got list"),
    check("empty", "the file is empty"),
    check("bad-name", "field 'name'", "letters, digits"),
    check("tabular-field-on-goemotions", "data.id_column applies only to dataset 'tabular'"),
    check("missing-model", "field 'model': Field required"),
    Case(
        "config-not-utf8",
        ("check-config", "{tmp}/latin1.yaml"),
        ("latin1.yaml", "not UTF-8"),
        files={"latin1.yaml": "name: caf\xe9\nmodel: {family: ffnn}\n".encode("latin-1")},
    ),
]

DATA_CASES = [
    # Read for prediction (any format, auto-detected): the checks every file gets.
    predict("no-text-column.csv", "missing column(s) 'text'", "found: id, body"),
    predict("empty-text.csv", "row 2, column 'text': empty text"),
    predict("duplicate-ids.txt", "row 3, column 'ID': duplicate id '2018-En-00001' (first at row 1)"),
    predict("wrong-field-count.csv", "row 2: expected 2 ','-separated fields, found 4"),
    predict("empty.csv", "the file is empty"),
    predict("header-only.csv", "no data rows"),
    predict("goemotions-short-row.tsv", "row 2: expected 3 tab-separated fields, found 2"),
    predict("semeval-empty-tweet.txt", "row 2, column 'Tweet': empty text"),
    predict(
        "latin1.csv",
        "row 2, column 'text': not valid UTF-8 (byte 0xe9",
        data="{tmp}/latin1.csv",
        files={"latin1.csv": "id,text\n1,fine\n2,caf\xe9 au lait\n".encode("latin-1")},
    ),
    predict(
        "crlf-blank-line.csv",
        "row 2: blank line",
        data="{tmp}/crlf-blank-line.csv",
        files={"crlf-blank-line.csv": b"id,text\r\n1,first\r\n\r\n2,second after a blank CRLF line\r\n"},
    ),
    predict(
        "text-numbers.parquet",
        "column 'text': the text column holds Int64 values, not text",
        data="{tmp}/text-numbers.parquet",
        files={"text-numbers.parquet": parquet({"id": ["a", "b"], "text": [1, 2]})},
    ),
    predict(
        "text-null.parquet",
        "row 2, column 'text': empty text",
        data="{tmp}/text-null.parquet",
        files={"text-null.parquet": parquet({"id": ["a", "b"], "text": ["fine", None]})},
    ),
    predict(
        "corrupt.parquet",
        "cannot read as Parquet",
        data="{tmp}/corrupt.parquet",
        files={"corrupt.parquet": b"PAR1 this is not a parquet file"},
    ),
    # Read for training (labels too), through `emotion train` and the train-model flow.
    train(
        "label-2",
        {"dataset": "tabular", "path": "{bad}/data/label-2.csv"},
        "label-2.csv, row 3, column 'joy': label value '2' is not 0 or 1",
    ),
    train(
        "label-minus-1",
        {"dataset": "tabular", "path": "{bad}/data/label-minus-1.tsv"},
        "label-minus-1.tsv, row 2, column 'anger': label value '-1' is not 0 or 1",
    ),
    train(
        "label-yes",
        {"dataset": "tabular", "path": "{bad}/data/label-yes.csv"},
        "label-yes.csv, row 4, column 'joy': label value 'yes' is not 0 or 1",
    ),
    train(
        "label-empty",
        {"dataset": "tabular", "path": "{bad}/data/label-missing.csv"},
        "label-missing.csv, row 2, column 'joy': missing label value",
    ),
    train(
        "label-nan",
        {"dataset": "tabular", "path": "{tmp}/nan-label.parquet"},
        "nan-label.parquet, row 2, column 'joy': label value nan is not 0 or 1",
        files={
            "nan-label.parquet": parquet(
                {"text": ["happy", "who knows", "angry"], "joy": [1.0, float("nan"), 0.0], "anger": [0.0, 0.0, 1.0]}
            )
        },
    ),
    train(
        "missing-label-column",
        {"dataset": "tabular", "path": "{bad}/data/missing-label-column.csv", "label_columns": ["joy", "anger"]},
        "missing-label-column.csv, column 'anger': missing label column(s) 'anger'",
    ),
    train(
        "unexpected-column",
        {"dataset": "tabular", "path": "{bad}/data/unexpected-column.csv", "label_columns": ["joy", "anger"]},
        "unexpected-column.csv, column 'notes': unexpected column(s) 'notes'",
    ),
    train(
        "duplicate-ids",
        {"dataset": "tabular", "path": "{bad}/data/duplicate-ids.csv", "id_column": "id"},
        "duplicate-ids.csv, row 3, column 'id': duplicate id 'a1' (first at row 1)",
    ),
    train(
        "goemotions-unknown-label-id",
        {"dataset": "goemotions", "path": "{bad}/data/goemotions-unknown-label-id"},
        "train.tsv, row 2, column 'labels': label id 7 is beyond the 3 labels of labels.txt",
    ),
    train(
        "semeval-none-in-train",
        {"dataset": "semeval2018-ec", "path": "{bad}/data/semeval-none-in-train.txt"},
        "semeval-none-in-train.txt, row 2, column 'anger': label value 'NONE' is not 0 or 1",
    ),
    train(
        "data-path-missing",
        {"dataset": "tabular", "path": "{bad}/data/no-such-file.csv"},
        "no-such-file.csv: data.path does not exist",
    ),
    train(
        "all-rows-dropped",
        {"dataset": "tabular", "path": "{bad}/data/all-rows-empty.csv", "invalid_rows": "drop"},
        "all-rows-empty.csv: no rows left: all 2 row(s) were invalid and dropped",
    ),
]

S3_DOWN = {
    "EMOTION_S3_ENDPOINT_URL": "http://127.0.0.1:{port}",
    "EMOTION_S3_MAX_ATTEMPTS": "1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
COMPLETE = {"done-run/manifest.json": '{"run_id": "done-run", "files": {}}\n'}  # enough for `publish` to try the store

STORE_CASES = [
    Case(
        "store-unknown-scheme",
        ("publish", "{tmp}/done-run", "--store", "ftp://x"),
        ("store 'ftp://x': unsupported scheme 'ftp'",),
        files=COMPLETE,
    ),
    Case(
        "store-s3-without-bucket",
        ("publish", "{tmp}/done-run", "--store", "s3://"),
        ("S3 store: no bucket given (expected s3://<bucket>[/<prefix>])",),
        files=COMPLETE,
    ),
    Case(
        "store-run-unknown-scheme",
        ("predict", "ftp://x/runs/r1", "{bad}/data/empty-text.csv", "--out", "{out}"),
        ("run 'ftp://x/runs/r1': unsupported scheme 'ftp'",),
    ),
    Case(
        "store-run-s3-without-bucket",
        ("predict", "s3://", "{bad}/data/empty-text.csv", "--out", "{out}"),
        ("run 's3://': expected s3://<bucket>/[<prefix>/]runs/<run_id>",),
    ),
    Case(
        "store-run-not-found",
        ("predict", "{store}/runs/no-such-run", "{bad}/data/empty-text.csv", "--out", "{out}"),
        ("no-such-run': no such folder",),
    ),
    Case(
        "store-run-without-manifest",
        ("predict", "{tmp}/half-run", "{bad}/data/empty-text.csv", "--out", "{out}"),
        ("half-run': incomplete run (no manifest.json)",),
        files={"half-run/model/weights.bin": b"\0" * 16},
    ),
    Case(
        "store-publish-without-manifest",
        ("publish", "{tmp}/half-run", "--store", "{store}"),
        ("half-run': incomplete run (no manifest.json)",),
        files={"half-run/labels.json": '{"labels": ["joy"]}'},
    ),
    Case(
        "store-run-corrupt-manifest",
        ("predict", "{tmp}/bad-run", "{bad}/data/empty-text.csv", "--out", "{out}"),
        ("bad-run': cannot read manifest.json", "the run folder is incomplete or damaged"),
        files={"bad-run/manifest.json": "{not json"},
    ),
    Case(
        "store-publish-corrupt-manifest",
        ("publish", "{tmp}/bad-run", "--store", "{store}"),
        ("bad-run/manifest.json: not a JSON object",),
        files={"bad-run/manifest.json": "{not json"},
    ),
    Case(
        "store-run-manifest-only",
        ("predict", "{tmp}/done-run", "{bad}/data/empty-text.csv", "--out", "{out}"),
        ("done-run': cannot read config.yaml",),
        files=COMPLETE,
    ),
    Case(
        "store-s3-unreachable-publish",
        ("publish", "{tmp}/done-run", "--store", "s3://bucket/prefix"),
        (
            "store s3://bucket/prefix at http://127.0.0.1:{port}: checking prefix/runs/done-run/manifest.json failed "
            "after up to 1 attempts",
            "EndpointConnectionError",
        ),
        files=COMPLETE,
        env=S3_DOWN,
    ),
    Case(
        "store-s3-unreachable-predict",
        ("predict", "s3://bucket/runs/r1", "{bad}/data/empty-text.csv", "--out", "{out}"),
        (
            "store s3://bucket at http://127.0.0.1:{port}: reading run r1 failed after up to 1 attempts",
            "EndpointConnectionError",
        ),
        env=S3_DOWN,
    ),
    Case(
        "store-train-unknown-scheme",
        ("train", "{bad}/config/ok-ffnn.yaml", "--store", "ftp://x"),
        ("store 'ftp://x': unsupported scheme 'ftp'",),
        prefect=True,
    ),
]

GOOD_TEXTS = {"good.csv": "id,text\nx1,what a happy day\nx2,this makes me furious\n"}

CLI_CASES = [
    Case(
        "cli-set-without-equals",
        ("train", "{bad}/config/ok-ffnn.yaml", "--set", "epochs"),
        ("override 'epochs': expected KEY=VALUE",),
    ),
    Case(
        "cli-set-invalid-yaml",
        ("train", "{bad}/config/ok-ffnn.yaml", "--set", "training.epochs=[1"),
        ("override 'training.epochs=[1': value is not valid YAML",),
    ),
    Case(
        "cli-set-invalid-value",
        ("train", "{bad}/config/ok-ffnn.yaml", "--set", "training.batch_size=-1"),
        ("ok-ffnn.yaml: invalid config", "field 'training.batch_size'"),
    ),
    Case(
        "cli-train-config-not-found",
        ("train", "{tmp}/no-such-config.yaml"),
        ("no-such-config.yaml: config file not found",),
    ),
    Case(
        "cli-train-malformed-yaml",
        ("train", "{bad}/config/malformed-yaml.yaml"),
        ("malformed-yaml.yaml: line 3, column 9 invalid YAML",),
    ),
    Case(
        "cli-check-config-not-found",
        ("check-config", "{tmp}/no-such-config.yaml"),
        ("no-such-config.yaml: config file not found",),
    ),
    Case(
        "cli-predict-data-not-found",
        ("predict", "{run}", "{tmp}/no-such-data.csv", "--out", "{out}"),
        ("no-such-data.csv: prediction input file not found",),
        needs_run=True,
    ),
    Case(
        "cli-predict-out-is-a-folder",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{tmp}/outdir"),
        ("outdir: --out is a folder",),
        files={**GOOD_TEXTS, "outdir/.keep": ""},
        needs_run=True,
    ),
    Case(
        "cli-submit-out-is-a-folder",
        ("submit", "{run}", "--out", "{tmp}/outdir", "--no-calibrated", "--data", "{tmp}/good.csv"),
        ("outdir: --out is a folder",),
        files={**GOOD_TEXTS, "outdir/.keep": ""},
        needs_run=True,
    ),
    Case(
        "cli-submit-out-under-a-file",
        ("submit", "{run}", "--out", "{tmp}/a-file/sub/submission.csv", "--no-calibrated", "--data", "{tmp}/good.csv"),
        ("submission.csv: cannot write here:", "a-file is a file, not a folder"),
        files={**GOOD_TEXTS, "a-file": "not a folder\n"},
        needs_run=True,
    ),
    Case(
        "cli-submit-missing-out",
        ("submit", "{run}", "--data", "{tmp}/good.csv"),
        ("Missing option", "--out"),
        files=GOOD_TEXTS,
        needs_run=True,
    ),
    Case(
        "cli-predict-batch-size-zero",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{out}", "--batch-size", "0"),
        ("Invalid value", "--batch-size"),
        files=GOOD_TEXTS,
        needs_run=True,
    ),
]


# Issue 11 (store safety): run ids and manifest entries that would escape the store, and run folders whose
# files do not match their manifest. Every run id is refused before any work, every run folder before use.
def _sha(body: bytes) -> str:
    import hashlib

    return hashlib.sha256(body).hexdigest()


def safe_run_id(name: str, run_id: str, shown: str) -> Case:
    return Case(
        f"store-safe-run-id-{name}",
        ("train", "{bad}/config/ok-ffnn.yaml", "--store", "{store}", "--run-id", run_id),
        (f"--run-id {shown}: expected one plain name",),
    )


def safe_manifest(name: str, manifest: dict, *expect: str, files: dict | None = None, command: str = "publish") -> Case:
    """A run folder ``{tmp}/run`` with ``manifest`` (and ``files``), published or predicted from."""
    args = (
        ("publish", "{tmp}/run", "--store", "{store}")
        if command == "publish"
        else ("predict", "{tmp}/run", "{bad}/data/empty-text.csv", "--out", "{out}")
    )
    return Case(
        f"store-safe-{name}",
        args,
        expect,
        files={"run/manifest.json": json.dumps(manifest), **{f"run/{k}": v for k, v in (files or {}).items()}},
    )


THRESHOLDS = b'{"joy": 0.5}'
LISTED = {"thresholds.json": {"bytes": len(THRESHOLDS), "sha256": _sha(THRESHOLDS)}}

STORE_SAFETY_CASES = [
    safe_run_id("dotdot", "../../../x", "'../../../x'"),
    safe_run_id("parent", "..", "'..'"),
    safe_run_id("slash", "team/run", "'team/run'"),
    safe_run_id("backslash", "a\\b", "'a\\\\b'"),
    safe_run_id("leading-dot", ".hidden", "'.hidden'"),
    safe_run_id("empty", "", "''"),
    safe_run_id("too-long", "x" * 129, "'" + "x" * 80 + "...'"),
    safe_run_id("newline", "a\nb", "'a\\nb'"),
    safe_run_id("space", "my run", "'my run'"),
    safe_run_id("double-dot-inside", "a..b", "'a..b'"),
    safe_run_id("non-ascii", "r\u00e9sum\u00e9", "'r\u00e9sum\u00e9'"),
    safe_manifest(
        "manifest-run-id-dotdot",
        {"run_id": "../../x", "files": {}},
        "manifest.json run_id '../../x': expected one plain",
    ),
    safe_manifest(
        "manifest-run-id-nul", {"run_id": "a\u0000b", "files": {}}, "manifest.json run_id 'a\\x00b': expected one plain"
    ),
    safe_manifest("manifest-run-id-missing", {"files": {}}, "manifest.json run_id None: expected one plain"),
    safe_manifest("manifest-run-id-number", {"run_id": 7, "files": {}}, "manifest.json run_id 7: expected one plain"),
    safe_manifest(
        "manifest-entry-dotdot",
        {"run_id": "r1", "files": {"../outside.txt": LISTED["thresholds.json"]}},
        "entry '../outside.txt' is not a plain relative path",
    ),
    safe_manifest(
        "manifest-entry-absolute",
        {"run_id": "r1", "files": {"/etc/hostname": LISTED["thresholds.json"]}},
        "entry '/etc/hostname' is not a plain relative path",
    ),
    safe_manifest(
        "manifest-entry-backslash",
        {"run_id": "r1", "files": {"..\\x": LISTED["thresholds.json"]}},
        "is not a plain relative path",
    ),
    safe_manifest(
        "manifest-files-not-a-map",
        {"run_id": "r1", "files": ["thresholds.json"]},
        "manifest.json 'files' must map each file to its sha256",
    ),
    safe_manifest(
        "tampered-file",
        {"run_id": "r1", "files": LISTED},
        "thresholds.json does not match the sha256",
        files={"thresholds.json": b'{"joy": 0.0}'},
    ),
    safe_manifest(
        "empty-file",
        {"run_id": "r1", "files": LISTED},
        "thresholds.json does not match the sha256",
        files={"thresholds.json": b""},
    ),
    safe_manifest(
        "missing-listed-file",
        {"run_id": "r1", "files": LISTED},
        "thresholds.json is listed in manifest.json but missing",
    ),
    safe_manifest(
        "unlisted-file",
        {"run_id": "r1", "files": LISTED},
        "files not listed in manifest.json: model/modeling_x.py",
        files={"thresholds.json": THRESHOLDS, "model/modeling_x.py": "import os\n"},
    ),
    safe_manifest(
        "predict-tampered-file",
        {"run_id": "r1", "files": LISTED},
        "thresholds.json does not match the sha256",
        files={"thresholds.json": b'{"joy": 0.0}'},
        command="predict",
    ),
    safe_manifest(
        "predict-unlisted-file",
        {"run_id": "r1", "files": {}},
        "files not listed in manifest.json: config.yaml",
        files={"config.yaml": "name: x\n"},
        command="predict",
    ),
    safe_manifest(
        "predict-manifest-entry-dotdot",
        {"run_id": "r1", "files": {"../../x": LISTED["thresholds.json"]}},
        "entry '../../x' is not a plain relative path",
        command="predict",
    ),
    Case(
        "store-safe-s3-run-id-dotdot",
        ("predict", "s3://bucket/runs/..", "{bad}/data/empty-text.csv", "--out", "{out}"),
        ("run 's3://bucket/runs/..': run id '..': expected one plain name",),
    ),
    Case(
        "store-safe-set-name-dotdot",
        ("check-config", "{tmp}/set.yaml"),
        ("set.yaml", "name", "without '..'"),
        files={
            "set.yaml": "name: ../../outside\nconfigs: [ok.yaml]\n",
            "ok.yaml": (BAD / "config" / "ok-ffnn.yaml").read_text(encoding="utf-8"),
        },
    ),
    Case(
        "store-safe-config-name-dotdot",
        ("check-config", "{tmp}/cfg.yaml"),
        ("cfg.yaml", "field 'name'", "without '..'"),
        files={
            "cfg.yaml": (BAD / "config" / "ok-ffnn.yaml")
            .read_text(encoding="utf-8")
            .replace("name: ok-ffnn", "name: a..b")
        },
    ),
]


# Issue 11, class 10 and 11: inputs that used to end in a traceback, a hang or a misleading message.
def err_config(name: str, body: str, *expect: str) -> Case:
    """``check-config`` on ``{tmp}/<name>.yaml`` holding ``body``."""
    return Case(
        f"config-err-{name}",
        ("check-config", f"{{tmp}}/{name}.yaml"),
        (f"{name}.yaml", *expect),
        files={f"{name}.yaml": body},
    )


FFNN = "name: x\nmodel: {family: ffnn}\n"
FIFO = os.mkfifo  # a named pipe: opening it blocks until a writer comes
LONG_TEXT = "x" * 1_000_001  # one character past emotion_core.data.delimited.MAX_FIELD_CHARS
GOEMOTIONS_LABELS = {"ge/labels.txt": "joy\nanger\nfear\n"}

ERROR_CASES = [
    err_config("epochs-inf", FFNN + "training: {epochs: .inf}\n", "field 'training.epochs'", "finite number"),
    err_config(
        "learning-rate-nan",
        FFNN + "training: {learning_rate: .nan}\n",
        "field 'training.learning_rate'",
        "finite number",
    ),
    err_config(
        "validation-fraction-nan",
        FFNN + "data: {validation_fraction: .nan}\n",
        "field 'data.validation_fraction'",
        "finite number",
    ),
    err_config(
        "gpu-memory-inf",
        FFNN + "resources: {gpu_memory_gb: .inf}\n",
        "field 'resources.gpu_memory_gb'",
        "finite number",
    ),
    err_config(
        "loss-weight-nan",
        FFNN + "training: {loss: {kind: combined, weights: {bce: .nan}}}\n",
        "field 'training.loss.weights.bce'",
        "finite number",
    ),
    err_config(
        "seed-too-large", FFNN + "training: {seed: 4294967296}\n", "field 'training.seed'", "less than 4294967296"
    ),
    err_config("seed-negative", FFNN + "data: {seed: -1}\n", "field 'data.seed'", "greater than or equal to 0"),
    err_config("explain-seed-huge", FFNN + "explain: {seed: 100000000000000000000}\n", "field 'explain.seed'"),
    err_config(
        "hidden-size-absurd",
        "name: x\nmodel: {family: ffnn, hidden_size: 1000000000000}\n",
        "field 'model.hidden_size'",
        "less than or equal to 65536",
    ),
    err_config(
        "duplicate-key",
        FFNN + "training:\n  epochs: 1\ntraining:\n  batch_size: 4\n",
        "line 5, column 1 invalid YAML: duplicate key 'training' (first at line 3)",
    ),
    err_config(
        "duplicate-nested-key",
        FFNN + "training:\n  epochs: 1\n  epochs: 3\n",
        "line 5, column 3 invalid YAML: duplicate key 'epochs' (first at line 4)",
    ),
    err_config(
        "set-duplicate-key",
        "name: s\nconfigs: [a.yaml]\nreport: {seed: 1}\nreport: {bootstrap_samples: 200}\n",
        "line 4, column 1 invalid YAML: duplicate key 'report' (first at line 3)",
    ),
    err_config(
        "set-margin-nan",
        "name: s\nconfigs: [a.yaml]\nreport: {champion: {margin: .nan}}\n",
        "field 'report.champion.margin'",
        "finite number",
    ),
    Case(
        "config-err-is-a-folder",
        ("check-config", "{tmp}/configs"),
        ("configs: is a folder, not a config file",),
        files={"configs/.keep": ""},
    ),
    Case(
        "config-err-fifo",
        ("check-config", "{tmp}/pipe.yaml"),
        ("pipe.yaml: is a FIFO (named pipe), not a config file",),
        files={"pipe.yaml": FIFO},
    ),
    Case(
        "cli-err-train-config-is-a-folder",
        ("train", "{tmp}/configs"),
        ("configs: is a folder, not a config file",),
        files={"configs/.keep": ""},
    ),
    Case(
        "cli-err-train-config-fifo",
        ("train", "{tmp}/pipe.yaml"),
        ("pipe.yaml: is a FIFO (named pipe), not a config file",),
        files={"pipe.yaml": FIFO},
    ),
    Case(
        "cli-err-predict-out-unwritable",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "/proc/emotion-corpus/p.csv"),
        ("/proc/emotion-corpus/p.csv: cannot write the file", "nothing was written"),
        files=GOOD_TEXTS,
        needs_run=True,
    ),
    Case(
        "cli-err-submit-out-unwritable",
        ("submit", "{run}", "--out", "/proc/emotion-corpus/s.csv", "--no-calibrated", "--data", "{tmp}/good.csv"),
        ("/proc/emotion-corpus/s.csv: cannot write the file", "nothing was written"),
        files=GOOD_TEXTS,
        needs_run=True,
    ),
    Case(
        "store-err-publish-unwritable",
        ("publish", "{tmp}/done-run", "--store", "/proc"),
        ("store file:///proc: cannot write a staging folder (No such file or directory)",),
        files=COMPLETE,
    ),
    predict(
        "err-fifo.csv",
        "is a FIFO (named pipe), not a data file",
        data="{tmp}/err-fifo.csv",
        files={"err-fifo.csv": FIFO},
    ),
    predict("err-folder", "is a folder, not a data file", data="{tmp}/err-folder", files={"err-folder/.keep": ""}),
    predict(
        "err-long-field.csv",
        "row 2: a field is longer than 1000000 characters",
        data="{tmp}/err-long-field.csv",
        files={"err-long-field.csv": f"id,text\na,short\nb,{LONG_TEXT}\n"},
    ),
    predict(
        "err-unclosed-quote.csv",
        "row 2: a field is longer than 1000000 characters",
        "from line 3: an unclosed quote",
        data="{tmp}/err-unclosed-quote.csv",
        files={"err-unclosed-quote.csv": 'id,text\na,fine\nb,"never closed\n' + "c,more text\n" * 100_000},
    ),
    train(
        "err-goemotions-fullwidth-digit",
        {"dataset": "goemotions", "path": "{tmp}/ge"},
        "train.tsv, row 2, column 'labels': label id '３' is not an integer",
        files={**GOEMOTIONS_LABELS, "ge/train.tsv": "glad\t0\tc1\nhm\t３\tc2\nugh\t1\tc3\n"},
    ),
    train(
        "err-goemotions-arabic-indic-digit",
        {"dataset": "goemotions", "path": "{tmp}/ge"},
        "train.tsv, row 1, column 'labels': label id '٣' is not an integer",
        files={**GOEMOTIONS_LABELS, "ge/train.tsv": "glad\t1,٣\tc1\nhm\t2\tc2\n"},
    ),
    train(
        "err-parquet-list-labels",
        {"dataset": "tabular", "path": "{tmp}/list.parquet"},
        "list.parquet, column 'joy': the label column holds List(Int64) values, not 0/1",
        files={"list.parquet": parquet({"text": ["glad", "mad"], "joy": [[1], [0]], "anger": [0, 1]})},
    ),
    train(
        "err-long-field",
        {"dataset": "tabular", "path": "{tmp}/long.csv"},
        "long.csv, row 2: a field is longer than 1000000 characters",
        files={"long.csv": f"text,joy\nshort,1\n{LONG_TEXT},0\n"},
    ),
    train(
        "err-data-fifo",
        {"dataset": "tabular", "path": "{tmp}/pipe.csv"},
        "pipe.csv: is a FIFO (named pipe), not a data file",
        files={"pipe.csv": FIFO},
    ),
]


# Issue 11, classes 2, 5, 7 (and 11's file://host): credentials in URIs, unsafe --out targets, code in runs.
CRED = "s3://AKIAEXAMPLE:wJalrXUt/K7MDENG@minio.example:9000/bucket"  # a secret with a '/', as AWS keys have
CRED_SHOWN = "s3://***@minio.example:9000/bucket"
CRED_REFUSED = "credentials in a URI are refused"
PRECIOUS = {**GOOD_TEXTS, "precious.txt": "the user's notes\n"}


def link_to(name: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(path.parent / name)


def char_device(major: int, minor: int) -> Callable[[Path], None]:
    return lambda path: os.mknod(path, 0o20666, os.makedev(major, minor))  # S_IFCHR; we run as root


def unix_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the socket file stays after close


def remote_code_run(trust) -> dict[str, str]:
    """A fake encoder run whose config asks for remote code; evil.py would write beside itself if imported."""
    config = {"name": "evil", "model": {"family": "encoder", "model": "minilm", "trust_remote_code": trust}}
    files = {
        "config.yaml": yaml.safe_dump(config),
        "labels.json": '{"labels": ["joy"]}\n',
        "model/body/config.json": '{"model_type": "bert", "auto_map": {"AutoModel": "evil.EvilModel"}}\n',
        "model/body/evil.py": "from pathlib import Path\nPath(__file__).with_name('PWNED').write_text('ran')\n",
    }
    # A complete manifest (every file listed with its sha256), so the refusal tested is the remote-code one.
    listed = {name: {"bytes": len(text.encode()), "sha256": _sha(text.encode())} for name, text in files.items()}
    manifest = json.dumps({"run_id": "evil-run", "files": listed}) + "\n"
    return {
        "evil-run/manifest.json": manifest,
        **{f"evil-run/{name}": text for name, text in files.items()},
        **GOOD_TEXTS,
    }


def set_with_ok_ffnn(path: Path) -> None:
    path.write_text(f"name: s\nconfigs:\n  - path: {BAD}/config/ok-ffnn.yaml\n", encoding="utf-8")


LOAD_SAFETY_CASES = [
    Case(
        "store-cred-publish-s3",
        ("publish", "{tmp}/done-run", "--store", CRED),
        (f"store '{CRED_SHOWN}'", CRED_REFUSED),
        files=COMPLETE,
    ),
    Case(
        "store-cred-publish-file",
        ("publish", "{tmp}/done-run", "--store", "file://admin:hunter2@localhost{tmp}/store"),
        ("store 'file://***@localhost", CRED_REFUSED),
        files=COMPLETE,
    ),
    Case(
        "store-cred-publish-unknown-scheme",
        ("publish", "{tmp}/done-run", "--store", "ftp://user:hunter2@ftp.example/x"),
        ("store 'ftp://***@ftp.example/x'", CRED_REFUSED),
        files=COMPLETE,
    ),
    Case(
        "store-cred-predict-s3",
        ("predict", f"{CRED}/runs/r1", "{tmp}/good.csv", "--out", "{out}"),
        (f"run '{CRED_SHOWN}/runs/r1'", CRED_REFUSED),
        files=GOOD_TEXTS,
    ),
    Case(
        "store-cred-predict-file",
        ("predict", "file://admin:hunter2@localhost{tmp}/runs/r1", "{tmp}/good.csv", "--out", "{out}"),
        ("run 'file://***@localhost", CRED_REFUSED),
        files=GOOD_TEXTS,
    ),
    Case(
        "store-cred-submit-https",
        ("submit", "https://token:hunter2@runs.example/runs/r1", "--out", "{out}"),
        ("run 'https://***@runs.example/runs/r1'", CRED_REFUSED),
    ),
    Case(
        "store-cred-train",
        ("train", "{bad}/config/ok-ffnn.yaml", "--store", CRED),
        (f"store '{CRED_SHOWN}'", CRED_REFUSED),
    ),
    Case(
        "store-cred-train-all",
        ("train-all", "{tmp}/set.yaml", "--store", CRED),
        (f"store '{CRED_SHOWN}'", CRED_REFUSED),
        files={"set.yaml": set_with_ok_ffnn},
    ),
    Case(
        "store-cred-env-store",
        ("train", "{bad}/config/ok-ffnn.yaml"),
        (f"store '{CRED_SHOWN}'", CRED_REFUSED),
        env={"EMOTION_STORE": CRED},
    ),
    Case(
        "store-cred-file-host-publish",
        ("publish", "{tmp}/done-run", "--store", "file://tmp{tmp}/store"),
        ("store 'file://tmp", "expected file:///absolute/path"),
        files=COMPLETE,
    ),
    Case(
        "store-cred-file-host-predict",
        ("predict", "file://tmp/x/runs/r1", "{tmp}/good.csv", "--out", "{out}"),
        ("run 'file://tmp/x/runs/r1': expected file:///absolute/path",),
        files=GOOD_TEXTS,
    ),
    Case(
        "cli-safe-predict-out-symlink",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{tmp}/link.csv"),
        ("link.csv: --out is a symbolic link",),
        files={**PRECIOUS, "link.csv": link_to("precious.txt")},
        needs_run=True,
    ),
    Case(
        "cli-safe-submit-out-symlink",
        ("submit", "{run}", "--out", "{tmp}/link.csv", "--no-calibrated", "--data", "{tmp}/good.csv"),
        ("link.csv: --out is a symbolic link",),
        files={**PRECIOUS, "link.csv": link_to("precious.txt")},
        needs_run=True,
    ),
    Case(
        "cli-safe-predict-out-dangling-symlink",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{tmp}/link.csv"),
        ("link.csv: --out is a symbolic link",),
        files={**GOOD_TEXTS, "link.csv": link_to("not-there.txt")},
        needs_run=True,
    ),
    Case(
        "cli-safe-predict-out-fifo",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{tmp}/pipe.csv"),
        ("pipe.csv: --out is a FIFO",),
        files={**GOOD_TEXTS, "pipe.csv": os.mkfifo},
        needs_run=True,
    ),
    Case(
        "cli-safe-predict-out-device",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{tmp}/null"),
        ("null: --out is a character device",),
        files={**GOOD_TEXTS, "null": char_device(1, 3)},
        needs_run=True,
    ),
    Case(
        "cli-safe-predict-out-socket",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{tmp}/s.sock"),
        ("s.sock: --out is a socket",),
        files={**GOOD_TEXTS, "s.sock": unix_socket},
        needs_run=True,
    ),
    Case(
        "cli-safe-predict-out-is-input",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{tmp}/good.csv"),
        ("good.csv: --out would overwrite an input: it is the input file",),
        files=GOOD_TEXTS,
        needs_run=True,
    ),
    Case(
        "cli-safe-submit-out-is-input",
        ("submit", "{run}", "--out", "{tmp}/good.csv", "--no-calibrated", "--data", "{tmp}/good.csv"),
        ("good.csv: --out would overwrite an input: it is the input file",),
        files=GOOD_TEXTS,
        needs_run=True,
    ),
    Case(
        "cli-safe-predict-out-hard-link",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{tmp}/alias.csv"),
        ("alias.csv: --out would overwrite an input",),
        files={**GOOD_TEXTS, "alias.csv": lambda path: os.link(path.parent / "good.csv", path)},
        needs_run=True,
    ),
    Case(
        "cli-safe-predict-out-in-run",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "{run}/thresholds.json"),
        ("thresholds.json: --out would overwrite an input: it is inside the input folder",),
        files=GOOD_TEXTS,
        needs_run=True,
    ),
    Case(
        "cli-safe-predict-out-unwritable",
        ("predict", "{run}", "{tmp}/good.csv", "--out", "/proc/emotion-out.csv"),
        ("/proc/emotion-out.csv: cannot write",),
        files=GOOD_TEXTS,
        needs_run=True,
    ),
    Case(
        "predict-safe-remote-code",
        ("predict", "{tmp}/evil-run", "{tmp}/good.csv", "--out", "{out}"),
        ("evil-run': config.yaml field 'model.trust_remote_code' is True",),
        files=remote_code_run(True),
    ),
    Case(
        "predict-safe-remote-code-yes",
        ("submit", "{tmp}/evil-run", "--out", "{out}", "--no-calibrated", "--data", "{tmp}/good.csv"),
        ("evil-run': config.yaml field 'model.trust_remote_code' is 'yes'",),
        files=remote_code_run("yes"),
    ),
    Case(
        "predict-safe-two-id-columns",
        ("predict", "{run}", "{tmp}/ids.csv", "--out", "{out}"),
        ("ids.csv, column 'id': several id columns ('id', 'ID')", "--id-column"),
        files={"ids.csv": "id,text,ID\n1,happy,a\n2,sad,b\n"},
        needs_run=True,
    ),
    Case(
        "cli-safe-check-config-remote-code-local-model",
        ("check-config", "{tmp}/remote.yaml"),
        ("remote.yaml", "field 'model.trust_remote_code'", "only for a hub id"),
        files={"remote.yaml": "name: r\nmodel: {family: encoder, model: minilm, trust_remote_code: true}\n"},
    ),
    Case(
        "cli-safe-check-config-remote-code-unlisted",
        ("check-config", "{tmp}/remote.yaml"),
        ("remote.yaml", "field 'model.trust_remote_code'", "EMOTION_TRUSTED_REMOTE_CODE", "'org/model' is not listed"),
        files={"remote.yaml": "name: r\nmodel: {family: decoder, model: org/model, trust_remote_code: true}\n"},
    ),
]

DDP_CASES = [  # issue 13: distributed training settings
    check("ddp-zero-gpus", "field 'resources.gpus'", "greater than or equal to 1"),
    check("ddp-data-parallel", "field 'resources.strategy'", "'ddp' or 'fsdp'"),
]

CASES = (
    CONFIG_CASES
    + DATA_CASES
    + STORE_CASES
    + CLI_CASES
    + STORE_SAFETY_CASES
    + ERROR_CASES
    + LOAD_SAFETY_CASES
    + DDP_CASES
)


def closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> str:
    """A real (tiny) tabular run: the data cases reach the input checks, the --out cases the writer."""
    from emotion_core.config import parse_run_config
    from emotion_core.pipeline import train_config
    from emotion_core.store import open_store

    folder = tmp_path_factory.mktemp("tiny-run")
    write_tiny_tabular(folder / "train.csv")
    cfg = parse_run_config(
        {
            "name": "tiny-bad-inputs",
            **TINY,
            "data": {"dataset": "tabular", "path": str(folder / "train.csv"), "id_column": "id"},
        }
    )
    uri = train_config(cfg, open_store(folder / "store"))
    return uri.removeprefix("file://")


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


def fill(text: str, ctx: dict[str, str]) -> str:
    for key, value in ctx.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly(case: Case, tmp_path, request, prefect_home):
    ctx = {
        "bad": str(BAD),
        "tmp": str(tmp_path),
        "out": str(tmp_path / "out" / "predictions.csv"),
        "store": str(tmp_path / "store"),
        "config": str(tmp_path / "config.yaml"),
        "port": str(closed_port()),
    }
    if case.needs_run:
        ctx["run"] = request.getfixturevalue("tiny_run")
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    if case.data is not None:
        config = {"name": case.id, **TINY, "data": case.data}
        (tmp_path / "config.yaml").write_text(fill(yaml.safe_dump(config), ctx), encoding="utf-8")
    before = {p for p in tmp_path.rglob("*")}

    env = {
        **os.environ,
        "EMOTION_STORE": ctx["store"],
        "EMOTION_CACHE_DIR": str(tmp_path / "cache"),
        "PREFECT_HOME": str(prefect_home),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        **{k: fill(v, ctx) for k, v in case.env.items()},
    }
    if case.prefect:
        env["PREFECT_API_URL"] = request.getfixturevalue("prefect_stack").api_url
    args = [fill(a, ctx) for a in case.args]
    result = subprocess.run([EMOTION, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)

    where = f"emotion {' '.join(args)}\n--- stderr:\n{result.stderr[-4000:]}\n--- stdout:\n{result.stdout[-1000:]}"
    assert result.returncode == case.status, where
    for fragment in case.expect:
        assert fill(fragment, ctx) in result.stderr, f"missing {fill(fragment, ctx)!r} in:\n{where}"
    assert "Traceback" not in result.stderr + result.stdout, where
    # Nothing written, nothing half-written, nothing lost.
    assert not Path(ctx["out"]).exists()
    assert not list((tmp_path / "store").glob("runs/*")), "a run appeared in the store"
    assert not list((tmp_path / "store").glob(".staging/*")), "a staged run was left behind"
    created = {p for p in tmp_path.rglob("*")} - before
    leftovers = [p for p in created if p.is_file() and not p.is_relative_to(tmp_path / "cache")]
    assert not leftovers, f"files written: {sorted(map(str, leftovers))}"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")], "a temporary file was left behind"
    if case.needs_run:  # the run used is intact
        assert (Path(ctx["run"]) / "manifest.json").is_file()


def test_the_corpus_is_large_and_covers_every_kind():
    kinds = {
        kind: sum(c.id.startswith(kind) for c in CASES) for kind in ("config-", "predict-", "train-", "store-", "cli-")
    }
    assert sum(kinds.values()) == len(CASES) >= 30, kinds
    assert all(count >= 4 for count in kinds.values()), kinds
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    on_disk = {p.relative_to(BAD).as_posix() for p in BAD.rglob("*") if p.is_file()}
    used = " ".join(" ".join(c.args) + " " + yaml.safe_dump(c.data) for c in CASES)
    # A file counts as read when a case names it, or names its folder (data/<folder>/<file>).
    unused = sorted(p for p in on_disk if p.split("/")[1 if p.count("/") == 2 else -1] not in used)
    assert not unused, f"corpus files no case reads: {unused}"
