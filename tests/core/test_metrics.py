"""Tests for emotion_core.metrics: hand-computed cases, agreement with scikit-learn, validation."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    jaccard_score,
    precision_recall_fscore_support,
)

from emotion_core.metrics import multilabel_metrics, sigmoid

NAMES = ["a", "b", "c"]
# 5 rows x 3 labels (a, b, c). Row 3 is empty in both truth and prediction.
Y_TRUE = np.array(
    [
        [1, 0, 1],  # r0  T={a,c}
        [0, 1, 0],  # r1  T={b}
        [1, 1, 0],  # r2  T={a,b}
        [0, 0, 0],  # r3  T={}
        [0, 1, 1],  # r4  T={b,c}
    ]
)
Y_PRED = np.array(
    [
        [1, 0, 0],  # r0  P={a}      J = 1/2, c missed
        [0, 1, 1],  # r1  P={b,c}    J = 1/2, c false positive
        [1, 0, 0],  # r2  P={a}      J = 1/2, b missed
        [0, 0, 0],  # r3  P={}       J = 1 (empty vs empty, by convention), exact match
        [0, 1, 0],  # r4  P={b}      J = 1/2, c missed
    ]
)
# Per label (TP, FP, FN):
#   a: true [1,0,1,0,0] pred [1,0,1,0,0] -> (2,0,0): P=1,  R=1,    F1=1,           support 2, predicted 2
#   b: true [0,1,1,0,1] pred [0,1,0,0,1] -> (2,0,1): P=1,  R=2/3,  F1=4/(4+0+1)=0.8, support 3, predicted 2
#   c: true [1,0,0,0,1] pred [0,1,0,0,0] -> (0,1,2): P=0,  R=0,    F1=0,           support 2, predicted 1
# micro: TP=4, FP=1, FN=3 -> P=4/5, R=4/7, F1=8/(8+1+3)=2/3
# macro: F1=(1+0.8+0)/3=0.6, P=(1+1+0)/3=2/3, R=(1+2/3+0)/3=5/9
# weighted F1 = (2*1 + 3*0.8 + 2*0)/7 = 4.4/7 = 22/35
# subset accuracy: only r3 matches exactly -> 1/5
# jaccard_samples: (4 * 1/2 + 1)/5 = 3/5   (0.4 if the empty row scored 0, 0.5 if it were dropped)
# hamming: wrong cells r0c, r1c, r2b, r4c -> 4/15


def test_hand_computed_case():
    m = multilabel_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["micro_f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(0.6)
    assert m["weighted_f1"] == pytest.approx(22 / 35)
    assert m["micro_precision"] == pytest.approx(4 / 5)
    assert m["micro_recall"] == pytest.approx(4 / 7)
    assert m["macro_precision"] == pytest.approx(2 / 3)
    assert m["macro_recall"] == pytest.approx(5 / 9)
    assert m["subset_accuracy"] == pytest.approx(1 / 5)
    assert m["jaccard_samples"] == pytest.approx(3 / 5)
    assert m["hamming_loss"] == pytest.approx(4 / 15)
    assert m["n_samples"] == 5
    assert m["n_labels"] == 3
    assert m["labels_never_predicted"] == []
    assert m["no_positive_predictions"] is False
    assert list(m["per_label"]) == NAMES
    assert m["per_label"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2, "predicted_positives": 2}
    b = m["per_label"]["b"]
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (b["support"], b["predicted_positives"]) == (3, 2)
    assert m["per_label"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "predicted_positives": 1}


def test_result_is_plain_json():
    m = multilabel_metrics(Y_TRUE, Y_PRED, NAMES)
    # allow_nan=False: NaN would be invalid JSON; round-trip must be lossless.
    assert json.loads(json.dumps(m, allow_nan=False)) == m

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return type(x) in (float, int, bool, str)

    assert plain(m)


def test_zero_division_is_zero_and_degenerate_flags():
    # Label "b" has no support and is never predicted: P=R=F1=0 by the zero_division=0 convention,
    # so macro F1 = (1 + 0)/2 = 0.5 while micro F1 = 1 (the only cell that matters, a, is right).
    y_true = np.array([[1, 0], [0, 0]])
    y_pred = np.array([[1, 0], [0, 0]])
    m = multilabel_metrics(y_true, y_pred, ["a", "b"])
    assert m["micro_f1"] == 1.0
    assert m["macro_f1"] == 0.5
    assert m["per_label"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted_positives": 0}
    assert m["labels_never_predicted"] == ["b"]
    assert m["no_positive_predictions"] is False
    # Both rows are exact matches; row 1 is empty-vs-empty -> Jaccard 1.
    assert m["subset_accuracy"] == 1.0
    assert m["jaccard_samples"] == 1.0

    # A model that predicts nothing: everything 0, flagged, and no warnings leak from sklearn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = multilabel_metrics(np.array([[1, 0], [0, 1]]), np.zeros((2, 2), dtype=int), ["a", "b"])
    assert m["no_positive_predictions"] is True
    assert m["labels_never_predicted"] == ["a", "b"]
    assert m["micro_f1"] == m["macro_f1"] == m["micro_precision"] == 0.0
    assert m["jaccard_samples"] == 0.0
    assert m["hamming_loss"] == 0.5


def _random_case(seed: int, n: int = 300, n_labels: int = 7):
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.02, 0.5, size=n_labels)  # imbalanced labels like emotion data
    y_true = (rng.random((n, n_labels)) < rates).astype(int)
    flip = rng.random((n, n_labels)) < 0.25  # noisy predictions
    y_pred = np.where(flip, 1 - y_true, y_true)
    y_pred[:, -1] = 0  # one label never predicted, exercises zero_division
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_sklearn_on_random_data(seed):
    y_true, y_pred = _random_case(seed)
    names = [f"l{i}" for i in range(y_true.shape[1])]
    m = multilabel_metrics(y_true, y_pred, names)

    for avg in ("micro", "macro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(y_true, y_pred, average=avg, zero_division=0), abs=1e-12)
    for avg in ("micro", "macro"):
        p, r, _, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        assert m[f"{avg}_precision"] == pytest.approx(p, abs=1e-12)
        assert m[f"{avg}_recall"] == pytest.approx(r, abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    for i, nm in enumerate(names):
        row = m["per_label"][nm]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]), abs=1e-12)
        assert row["support"] == s[i]
        assert row["predicted_positives"] == int(y_pred[:, i].sum())
    assert m["labels_never_predicted"] == [names[-1]]
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y_true, y_pred), abs=1e-12)

    # Jaccard: sklearn's default is defined only on rows with a non-empty union; ours adds 1.0 per
    # empty-vs-empty row. The random data must contain such rows or this check proves nothing.
    defined = (y_true | y_pred).any(axis=1)
    n_empty = int((~defined).sum())
    assert n_empty > 0
    sk_defined = jaccard_score(y_true[defined], y_pred[defined], average="samples")
    assert m["jaccard_samples"] == pytest.approx((sk_defined * defined.sum() + n_empty) / len(y_true), abs=1e-12)
    assert m["jaccard_samples"] == pytest.approx(
        jaccard_score(y_true, y_pred, average="samples", zero_division=1.0), abs=1e-12
    )


def test_single_label_is_scored_as_that_label():
    # sklearn sees (n, 1) as binary; the label must still be scored as the positive class.
    y_true = np.array([[1], [1], [0], [0], [1]])
    y_pred = np.array([[1], [0], [0], [1], [1]])
    # TP=2, FP=1, FN=1 -> P=R=F1=2/3; exact rows: r0, r2, r4 -> 3/5
    m = multilabel_metrics(y_true, y_pred, ["joy"])
    for key in ("micro_f1", "macro_f1", "weighted_f1", "micro_precision", "micro_recall"):
        assert m[key] == pytest.approx(2 / 3), key
    assert m["per_label"]["joy"]["support"] == 3
    assert m["subset_accuracy"] == pytest.approx(3 / 5)
    # rows: r0 J=1, r1 J=0, r2 empty J=1, r3 J=0, r4 J=1 -> 3/5
    assert m["jaccard_samples"] == pytest.approx(3 / 5)
    assert m["hamming_loss"] == pytest.approx(2 / 5)


def test_accepts_bool_and_float_01():
    expected = multilabel_metrics(Y_TRUE, Y_PRED, NAMES)
    assert multilabel_metrics(Y_TRUE.astype(bool), Y_PRED.astype(float), NAMES) == expected


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "match"),
    [
        (Y_TRUE, Y_PRED[:4], NAMES, "same shape"),
        (Y_TRUE, Y_PRED[:, :2], NAMES, "same shape"),
        (Y_TRUE[0], Y_PRED[0], NAMES, "2-D"),
        (Y_TRUE[:0], Y_PRED[:0], NAMES, "no rows"),
        (Y_TRUE, Y_PRED, ["a", "b"], "label_names has 2 names"),
        (Y_TRUE, Y_PRED, ["a", "b", "a"], "duplicate"),
        (Y_TRUE, Y_PRED, "abc", "single string"),
        (Y_TRUE * 2, Y_PRED, NAMES, r"y_true must contain only 0 and 1; found 2 at row 0, column 0"),
        (Y_TRUE, Y_PRED - 0.5, NAMES, "y_pred must contain only 0 and 1"),
        (Y_TRUE, np.where(Y_PRED == 1, np.nan, 0.0), NAMES, "y_pred must contain only 0 and 1"),
        (Y_TRUE.astype(str), Y_PRED, NAMES, "dtype"),
    ],
)
def test_bad_input_raises(y_true, y_pred, names, match):
    with pytest.raises(ValueError, match=match):
        multilabel_metrics(y_true, y_pred, names)


def test_sigmoid_stable_and_correct():
    x = np.array([-1000.0, -50.0, -1.0, 0.0, 2.0, 50.0, 1000.0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning would fail here
        s = sigmoid(x)
    assert s.dtype == np.float64
    assert s[0] == 0.0 and s[-1] == 1.0
    assert np.isfinite(s).all()
    moderate = np.array([-1.0, 0.0, 2.0])
    assert sigmoid(moderate) == pytest.approx(1 / (1 + np.exp(-moderate)), rel=1e-12)
    assert sigmoid(np.array([[-1000.0, 1000.0]])).shape == (1, 2)
    # symmetry: sigmoid(-x) = 1 - sigmoid(x)
    assert sigmoid(-x.astype(np.float64)) == pytest.approx(1 - s, abs=1e-15)


def test_core_modules_do_not_import_prefect():
    code = (
        "import sys, emotion_core.metrics, emotion_core.thresholds; "
        "sys.exit(1 if any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
