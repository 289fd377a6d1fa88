"""SemEval E-c submissions from a real (untrained) FFNN run: header, row order, 0/1 cells, thresholds, temperatures."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from emotion_core.config import parse_run_config
from emotion_core.data import read_prediction_input
from emotion_core.data.semeval import LABELS
from emotion_core.errors import StoreError
from emotion_core.labels import LabelSchema
from emotion_core.models import build_family
from emotion_core.runs import Run
from emotion_core.submission import submission_from_file, write_submission

HEADER = "ID,anger,anticipation,disgust,fear,joy,love,optimism,pessimism,sadness,surprise,trust"
TEXTS = [
    "so angry right now",
    "can't wait for tomorrow",
    "gross",
    "scared of the dark",
    "pure joy",
    "love you",
    "it will get better",
    "nothing ever works",
    "so sad",
    "wow, didn't expect that",
    "I believe in you",
]


def make_run(folder, names=LABELS, thresholds=None, texts=TEXTS) -> Run:
    """A complete enough run folder: config, labels, an FFNN model (built, untrained) and thresholds."""
    schema = LabelSchema(tuple(names))
    cfg = parse_run_config(
        {
            "name": "sub",
            "data": {"dataset": "semeval2018-ec"},
            "model": {"family": "ffnn", "max_features": 500, "min_df": 1, "hidden_size": 8},
        }
    )
    torch.manual_seed(0)
    family = build_family(
        cfg, schema, list(texts), np.eye(len(names), dtype=np.float32)[np.arange(len(texts)) % len(names)]
    )
    (folder / "model").mkdir(parents=True)
    family.save(folder / "model")
    chosen = thresholds if thresholds is not None else {n: 0.5 for n in names}
    (folder / "thresholds.json").write_text(
        json.dumps({"policy": "per_label", "thresholds": {"per_label": chosen, "fixed": {n: 0.5 for n in names}}})
    )
    return Run(folder, {"run_id": "sub-20260101T000000Z-0123abcd"}, cfg, schema)


def read_csv(path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    return rows[0], rows[1:]


def test_submission_of_the_real_unlabelled_test_file(tmp_path, semeval_dir):
    _, train_ids, train_texts = read_prediction_input(semeval_dir / "train.txt")
    run = make_run(tmp_path / "run", texts=train_texts[:300])
    test_file = next(p for p in (semeval_dir / n for n in ("test-unlabelled.txt", "test.txt")) if p.is_file())
    _, ids, _ = read_prediction_input(test_file)
    result = submission_from_file(run, test_file, tmp_path / "out" / "E-c_en_pred.csv")
    out = tmp_path / "out" / "E-c_en_pred.csv"
    assert out.read_text(encoding="utf-8").splitlines()[0] == HEADER
    header, rows = read_csv(out)
    assert [r[0] for r in rows] == ids and len(rows) == result["rows"] == len(ids) > 100  # every id, file order
    assert all(len(r) == 12 and set(r[1:]) <= {"0", "1"} for r in rows)
    assert result["columns"] == header
    assert result["positives"] == {n: sum(r[i + 1] == "1" for r in rows) for i, n in enumerate(LABELS)}
    assert not list(out.parent.glob(".*.tmp"))  # atomic: no temporary file left


def test_thresholds_and_temperatures_change_the_cells_as_expected(tmp_path):
    run = make_run(tmp_path / "run", thresholds={n: 0.7 for n in LABELS})
    z = np.full((3, 11), -4.0)
    z[0, LABELS.index("joy")] = 1.0  # p = 0.731; with T = 2: 0.622
    z[1, LABELS.index("anger")] = 0.2  # p = 0.550
    z[2, LABELS.index("trust")] = 3.0  # p = 0.953; with T = 2: 0.818
    ids = ["2018-En-1", "2018-En-3", "2018-En-2"]
    cells = lambda path: np.array([[int(c) for c in r[1:]] for r in read_csv(path)[1]])  # noqa: E731

    default = write_submission(run, None, ids, tmp_path / "a.csv", logits=z)  # the run's thresholds: 0.7
    expected = np.zeros((3, 11), dtype=int)
    expected[0, LABELS.index("joy")] = expected[2, LABELS.index("trust")] = 1
    np.testing.assert_array_equal(cells(tmp_path / "a.csv"), expected)
    assert [r[0] for r in read_csv(tmp_path / "a.csv")[1]] == ids  # the caller's order, not sorted
    assert default["thresholds"]["joy"] == 0.7 and default["rows_without_label"] == 1

    lower = write_submission(run, None, ids, tmp_path / "b.csv", thresholds=np.full(11, 0.5), logits=z)
    expected[1, LABELS.index("anger")] = 1
    np.testing.assert_array_equal(cells(tmp_path / "b.csv"), expected)
    assert lower["rows_without_label"] == 0

    temps = {n: 2.0 for n in LABELS}  # calibrate_run's shape: {label: T}
    scaled = write_submission(
        run, None, ids, tmp_path / "c.csv", thresholds={n: 0.7 for n in LABELS}, temperatures=temps, logits=z
    )
    expected = np.zeros((3, 11), dtype=int)
    expected[2, LABELS.index("trust")] = 1  # joy fell to 0.622 < 0.7; trust stays above
    np.testing.assert_array_equal(cells(tmp_path / "c.csv"), expected)
    assert scaled["temperatures"]["joy"] == 2.0


def test_predicting_texts_matches_thresholded_model_probabilities(tmp_path):
    from emotion_core.metrics import sigmoid
    from emotion_core.models import load_family
    from emotion_core.training.batch_logits import predict_logits

    run = make_run(tmp_path / "run")
    ids = [f"id{i}" for i in range(len(TEXTS))]
    write_submission(run, TEXTS, ids, tmp_path / "p.csv", thresholds=np.full(11, 0.09))
    probs = sigmoid(predict_logits(load_family(run.config, run.schema, run.folder / "model"), TEXTS))
    got = np.array([[int(c) for c in r[1:]] for r in read_csv(tmp_path / "p.csv")[1]])
    np.testing.assert_array_equal(got, (probs >= 0.09).astype(int))
    assert 0 < got.sum() < got.size  # the threshold splits the cells: the check above is not vacuous


def test_columns_follow_semeval_order_whatever_the_run_order(tmp_path):
    names = list(reversed(LABELS))
    run = make_run(tmp_path / "run", names=names)
    z = np.full((1, 11), -5.0)
    z[0, names.index("anger")] = 5.0  # first SemEval column, last of this run
    result = write_submission(run, None, ["x"], tmp_path / "r.csv", logits=z)
    header, rows = read_csv(tmp_path / "r.csv")
    assert ",".join(header) == HEADER and rows == [["x", "1"] + ["0"] * 10]
    assert result["positives"]["anger"] == 1


def test_mismatches_are_named(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(ValueError, match="3 ids but 2 texts"):
        write_submission(run, ["a", "b"], ["1", "2", "3"], tmp_path / "x.csv")
    with pytest.raises(ValueError, match=r"logits must have shape \(2, 11\)"):
        write_submission(run, None, ["1", "2"], tmp_path / "x.csv", logits=np.zeros((3, 11)))
    with pytest.raises(ValueError, match="duplicate ids: 1"):
        write_submission(run, ["a", "b"], ["1", "1"], tmp_path / "x.csv")
    with pytest.raises(ValueError, match=r"thresholds: missing labels \['trust'\]"):
        write_submission(
            run, None, ["1"], tmp_path / "x.csv", thresholds={n: 0.5 for n in LABELS[:-1]}, logits=np.zeros((1, 11))
        )
    with pytest.raises(ValueError, match="temperatures must have one value per label"):
        write_submission(run, None, ["1"], tmp_path / "x.csv", temperatures=[1.0, 2.0], logits=np.zeros((1, 11)))
    with pytest.raises(ValueError, match="also a label name"):
        write_submission(run, None, ["1"], tmp_path / "x.csv", id_column="joy", logits=np.zeros((1, 11)))
    assert not (tmp_path / "x.csv").exists()


def test_a_run_with_the_at_least_one_rule_labels_every_tweet(tmp_path):
    # Thresholds no probability reaches: without the rule every row is empty, with it each gets its top label.
    run = make_run(tmp_path / "run", thresholds={n: 0.999 for n in LABELS})
    ids = [f"2018-En-{i:05d}" for i in range(len(TEXTS))]
    empty = write_submission(run, TEXTS, ids, tmp_path / "plain.csv")
    assert empty["rows_without_label"] == len(TEXTS)
    payload = json.loads((run.folder / "thresholds.json").read_text())
    tables = {**payload["thresholds"], "global_at_least_one": payload["thresholds"]["per_label"]}
    (run.folder / "thresholds.json").write_text(
        json.dumps({**payload, "policy": "global_at_least_one", "at_least_one": True, "thresholds": tables})
    )
    result = write_submission(run, TEXTS, ids, tmp_path / "one.csv")
    _, rows = read_csv(tmp_path / "one.csv")
    assert result["rows_without_label"] == 0 and all(r[1:].count("1") == 1 for r in rows)
    (run.folder / "thresholds.json").write_text(json.dumps({**payload, "at_least_one": "yes"}))
    with pytest.raises(StoreError, match="at_least_one must be true or false"):
        write_submission(run, TEXTS, ids, tmp_path / "bad.csv")
