"""Data layer: real GoEmotions/SemEval files, tabular files, malformed inputs, splits, prediction
inputs and the hub fallback (offline)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from emotion_core.config import DataConfig
from emotion_core.data import DataReport, EmotionData, load_data, read_prediction_input
from emotion_core.data.splits import carve, carved_size, subset
from emotion_core.errors import DataError

REPO = Path(__file__).resolve().parents[2]
SEMEVAL_LABELS = [
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "love",
    "optimism",
    "pessimism",
    "sadness",
    "surprise",
    "trust",
]
SEMEVAL_HEADER = "\t".join(["ID", "Tweet", *SEMEVAL_LABELS])


def go_rows(n: int, start: int = 0) -> list[str]:
    """``n`` well-formed GoEmotions lines over labels 0-2 (ids g<i>), every fourth one multi-label."""
    return [
        f"text number {i}\t{i % 3}{',2' if i % 4 == 0 and i % 3 != 2 else ''}\tg{i}" for i in range(start, start + n)
    ]


def semeval_rows(n: int, start: int = 0) -> list[str]:
    rows = []
    for i in range(start, start + n):
        labels = ["1" if (i + j) % 5 == 0 else "0" for j in range(11)]
        rows.append(f"2018-En-{i:05d}\ttweet {i} #tag\t" + "\t".join(labels))
    return rows


def lines(rows: list[str], eol: str = "\n") -> str:
    return "".join(row + eol for row in rows)


def assert_names(exc: DataError, file, row: int | None, column: str | None) -> None:
    text = str(exc)
    assert str(file) in text
    if row is not None:
        assert f"row {row}" in text and exc.row == row
    if column is not None:
        assert f"column '{column}'" in text and exc.column == column


# --------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def go_data(goemotions_dir) -> EmotionData:
    return load_data(DataConfig(dataset="goemotions", path=str(goemotions_dir)))


@pytest.fixture(scope="module")
def semeval_data(semeval_dir) -> EmotionData:
    return load_data(DataConfig(dataset="semeval2018-ec", path=str(semeval_dir)))


def test_goemotions_real_counts_and_schema(go_data, goemotions_dir):
    report = go_data.report
    assert report.rows_read == {"train": 43410, "validation": 5426}
    assert report.files["train"] == str(goemotions_dir / "train.tsv")
    assert report.files["validation"] == str(goemotions_dir / "dev.tsv")
    assert len(go_data.schema) == 28
    assert go_data.schema.names[0] == "admiration" and go_data.schema.names[27] == "neutral"
    # Official dev is validation; test is carved: 10% of train, the rest stays train.
    assert set(report.carved) == {"test"} and "seed 13" in report.carved["test"]
    assert report.rows_used == {"train": 43410 - 4341, "validation": 5426, "test": 4341}
    assert report.dropped == [] and report.subsets == {}
    assert report.rows_without_labels == {"train": 0, "validation": 0, "test": 0}
    # Every GoEmotions row has a label; 84% exactly one (README): positives exceed rows a little.
    total = sum(sum(counts.values()) for counts in report.label_counts.values())
    assert 49_000 < total < 49_000 * 1.25
    assert go_data.id_column == "id"

    table = go_data.table
    assert table.columns[:3] == ["id", "text", "split"]
    assert table.columns[3:] == list(go_data.schema.names)
    assert table.schema["id"] == pl.Utf8 and table.schema["text"] == pl.Utf8
    assert all(table.schema[name] == pl.UInt8 for name in go_data.schema.names)
    assert go_data.split_names == ["train", "validation", "test"]
    labels = go_data.labels("validation")
    assert labels.dtype == np.float32 and labels.shape == (5426, 28)
    assert json.loads(json.dumps(report.to_dict()))["rows_read"]["validation"] == 5426


def test_goemotions_quoted_text_is_unquoted(go_data):
    # Source line: "Three words, no subtlety. ""Dude. Stop. Seriously."" "<TAB>3<TAB>eetq9g0
    row = go_data.table.filter(pl.col("id") == "eetq9g0")
    assert row["text"].to_list() == ['Three words, no subtlety. "Dude. Stop. Seriously." ']
    assert [name for name in go_data.schema.names if row[name][0] == 1] == ["annoyance"]
    # Doubled quotes survive only where the source doubles them twice (a quote inside quotes):
    # a reader that ignores quoting would leave them in ~1,200 texts.
    doubled = go_data.table.filter(pl.col("text").str.contains('""', literal=True))
    assert sorted(doubled["id"]) == ["edu2y8c", "eedla4h"]
    assert doubled.filter(pl.col("id") == "edu2y8c")["text"][0] == '#""Haha so relatable omg so me""'


def test_goemotions_hash_stable_and_seeded(go_data, goemotions_dir):
    assert go_data.data_hash.startswith("sha256:") and len(go_data.data_hash) == 7 + 64
    again = load_data(DataConfig(dataset="goemotions", path=str(goemotions_dir)))
    assert again.data_hash == go_data.data_hash
    assert again.table.equals(go_data.table)

    reseeded = load_data(DataConfig(dataset="goemotions", path=str(goemotions_dir), seed=14))
    assert reseeded.data_hash != go_data.data_hash
    assert set(reseeded.ids("test")) != set(go_data.ids("test"))
    assert reseeded.ids("validation") == go_data.ids("validation")  # official dev: not carved


def test_goemotions_splits_disjoint_and_stratified(go_data):
    ids = {name: set(go_data.ids(name)) for name in ("train", "validation", "test")}
    assert sum(len(v) for v in ids.values()) == go_data.table.height
    assert (
        not ids["train"] & ids["test"] and not ids["train"] & ids["validation"] and not ids["test"] & ids["validation"]
    )
    train_rate = go_data.labels("train").mean(axis=0)
    test_rate = go_data.labels("test").mean(axis=0)
    # Stratified: every label's positive rate in the carved test is within half a point of train's
    # (a random 10% split is off by up to ~1 point for the 30% "neutral").
    assert np.abs(train_rate - test_rate).max() < 0.005


def test_semeval_real(semeval_data, semeval_dir):
    data = semeval_data
    report = data.report
    assert report.rows_read == {"train": 6838, "predict": 3259}
    assert report.files["predict"] == str(semeval_dir / "test-unlabelled.txt")
    assert list(data.schema.names) == SEMEVAL_LABELS and data.id_column == "ID"
    assert set(report.carved) == {"validation", "test"}
    used = report.rows_used
    assert used["predict"] == 3259 and used["train"] + used["validation"] + used["test"] == 6838
    assert used["test"] == math.ceil(0.1 * 6838) and used["validation"] == math.ceil(0.1 * 6838)

    # CRLF: no "\r" reaches ids or texts (the id is the first field, the text the second).
    assert data.table.filter(pl.col("text").str.contains("\r") | pl.col("id").str.contains("\r")).height == 0
    row = data.table.filter(pl.col("id") == "2017-En-21441")
    assert row["text"][0].startswith("\u201cWorry is a down payment")
    assert [n for n in SEMEVAL_LABELS if row[n][0] == 1] == ["anticipation", "optimism", "trust"]

    predict = data.split("predict")
    assert predict.height == 3259 and predict["id"][0] == "2018-En-01559"
    assert all(predict[n].null_count() == 3259 for n in SEMEVAL_LABELS)
    with pytest.raises(DataError, match="unlabelled"):
        data.labels("predict")

    # Rows with no emotion are kept and counted: same total as counted straight from the file.
    raw = (semeval_dir / "train.txt").read_text(encoding="utf-8").splitlines()[1:]
    no_emotion = sum(1 for line in raw if set(line.strip().split("\t")[2:]) == {"0"})
    assert no_emotion > 100
    assert sum(report.rows_without_labels.values()) == no_emotion
    assert set(report.rows_without_labels) == {"train", "validation", "test"}


def test_real_files_as_prediction_input(goemotions_dir, semeval_dir):
    id_name, ids, texts = read_prediction_input(semeval_dir / "test-unlabelled.txt")
    assert id_name == "ID" and len(ids) == len(texts) == 3259
    assert ids[0] == "2018-En-01559" and not any("\r" in t for t in texts)

    id_name, ids, texts = read_prediction_input(goemotions_dir / "dev.tsv")
    assert id_name == "id" and len(ids) == 5426
    raw_quoted = sum(1 for line in (goemotions_dir / "dev.tsv").open(encoding="utf-8") if line.startswith('"'))
    assert raw_quoted > 100 and sum('""' in t for t in texts) < 5


# ------------------------------------------------------------------------------------------- tabular


def test_tabular_csv_file(write):
    rows = ["id,text,joy,anger,source"]
    for i in range(40):
        rows.append(f'r{i},"text {i}, with a comma",{int(i % 2 == 0)},{int(i % 3 == 0)},web')
    rows.append('r40,"she said ""hi"", then left",1,0,web')
    path = write("data.csv", lines(rows, "\r\n"))
    data = load_data(DataConfig(dataset="tabular", path=str(path), id_column="id", ignore_columns=("source",)))
    assert data.schema.names == ("joy", "anger") and data.id_column == "id"
    assert data.report.rows_read == {"train": 41}
    assert sum(data.report.rows_used.values()) == 41 and set(data.report.carved) == {"validation", "test"}
    row = data.table.filter(pl.col("id") == "r40")
    assert row["text"][0] == 'she said "hi", then left' and row["joy"][0] == 1 and row["anger"][0] == 0
    r3 = data.table.filter(pl.col("id") == "r3")
    assert (r3["joy"][0], r3["anger"][0]) == (0, 1)
    assert len(set(data.table["id"])) == 41


def test_tabular_parquet_folder(write, tmp_path):
    folder = tmp_path / "tab"
    folder.mkdir()
    pl.DataFrame(
        {"body": ["a", "b", "c", "d"], "pos": [True, False, True, True], "neg": [False, True, False, False]}
    ).write_parquet(folder / "train.parquet")
    pl.DataFrame({"body": ["e", "f"], "pos": [1, 0], "neg": [0, 1]}).write_parquet(folder / "validation.parquet")
    pl.DataFrame({"body": ["g"], "pos": [0.0], "neg": [1.0]}).write_parquet(folder / "test.parquet")
    data = load_data(DataConfig(dataset="tabular", path=str(folder), text_column="body", label_columns=("neg", "pos")))
    assert data.schema.names == ("neg", "pos")  # the configured order, not the file's
    assert data.report.carved == {} and data.report.rows_used == {"train": 4, "validation": 2, "test": 1}
    assert data.id_column == "row"
    assert data.ids("train") == ["train:1", "train:2", "train:3", "train:4"]
    assert data.ids("validation") == ["validation:1", "validation:2"]
    assert data.labels("train").tolist() == [[0, 1], [1, 0], [0, 1], [0, 1]]
    assert data.labels("test").tolist() == [[1, 0]]
    assert data.report.label_counts["train"] == {"neg": 1, "pos": 3}


def test_semeval_kaggle_csv_folder(write, tmp_path):
    header = SEMEVAL_HEADER.replace("\t", ",")
    rows = [r.replace("\t", ",") for r in semeval_rows(30)]
    rows[0] = rows[0].replace("tweet 0 #tag", '"tweet 0, with ""quotes"""')
    write("kaggle/train.csv", lines([header] + rows, "\r\n"))
    write(
        "kaggle/test.csv", lines([header] + [",".join(r.split("\t")[:2]) + ",NONE" * 11 for r in semeval_rows(4, 50)])
    )
    data = load_data(DataConfig(dataset="semeval2018-ec", path=str(tmp_path / "kaggle")))
    assert data.report.rows_read == {"train": 30, "predict": 4}
    assert data.table.filter(pl.col("id") == "2018-En-00000")["text"][0] == 'tweet 0, with "quotes"'
    assert data.ids("predict") == [f"2018-En-{i:05d}" for i in range(50, 54)]


def test_tabular_unlabelled_test_is_predict(write, tmp_path):
    write("t/train.tsv", lines(["text\tx\ty"] + [f"t{i}\t{i % 2}\t{(i + 1) % 2}" for i in range(20)]))
    write("t/test.tsv", lines(["text", "new one", "new two"]))
    data = load_data(DataConfig(dataset="tabular", path=str(tmp_path / "t")))
    assert data.texts("predict") == ["new one", "new two"]
    assert set(data.report.carved) == {"validation", "test"}
    assert data.split("predict")["x"].null_count() == 2


# ------------------------------------------------------------------------------------ malformed files


GO_BAD = [
    # (bad line placed at row 3, column, message fragment)
    ("text\tx\tbad1", "labels", "is not an integer"),
    ("text\t1,7\tbad1", "labels", "beyond the 3 labels of labels.txt"),
    ("   \t1\tbad1", "text", "empty text"),
    ("text\t1\tg0", "id", "duplicate id 'g0' (first at row 1)"),
    ("text\t\tbad1\textra", None, "expected 3 tab-separated fields, found 4"),
]


@pytest.mark.parametrize(("bad", "column", "fragment"), GO_BAD)
def test_goemotions_bad_rows_raise(go_folder, bad, column, fragment):
    rows = go_rows(30)
    rows[2] = bad
    folder = go_folder(rows, dev=go_rows(10, start=100))
    with pytest.raises(DataError) as info:
        load_data(DataConfig(path=str(folder)))
    assert_names(info.value, folder / "train.tsv", 3, column)
    assert fragment in str(info.value)


def test_undecodable_bytes_name_row_and_column(write, go_folder):
    folder = go_folder(go_rows(10))
    data = (folder / "train.tsv").read_bytes().replace(b"text number 6", b"caf\xe9 number 6")
    (folder / "train.tsv").write_bytes(data)
    with pytest.raises(DataError, match=r"not valid UTF-8 \(byte 0xe9") as info:
        load_data(DataConfig(path=str(folder)))
    assert_names(info.value, folder / "train.tsv", 7, "text")

    path = write("bad.csv", b'text,joy\nfine,1\n"quoted\nacross lines",0\nok,1\n\xff\xfe,0\n')
    with pytest.raises(DataError) as info:
        load_data(DataConfig(dataset="tabular", path=str(path)))
    assert_names(info.value, path, 4, "text")  # records, not lines: the quoted newline is one row


def test_empty_and_headerless_files(write, go_folder):
    folder = go_folder([])
    with pytest.raises(DataError, match="no data rows") as info:
        load_data(DataConfig(path=str(folder)))
    assert str(folder / "train.tsv") in str(info.value)
    path = write("only_header.csv", "text,joy\n")
    with pytest.raises(DataError, match="no data rows"):
        load_data(DataConfig(dataset="tabular", path=str(path)))


def test_semeval_missing_and_extra_columns(write):
    header = SEMEVAL_HEADER.replace("\tfear", "")
    path = write("missing/train.txt", lines([header] + [r.rsplit("\t", 1)[0] for r in semeval_rows(5)], "\r\n"))
    with pytest.raises(DataError) as info:
        load_data(DataConfig(dataset="semeval2018-ec", path=str(path)))
    assert_names(info.value, path, None, "fear")
    assert "missing column(s) 'fear'; found: ID, Tweet, anger, anticipation, disgust, joy" in str(info.value)

    path = write("extra/train.txt", lines([SEMEVAL_HEADER + "\tnote"] + [r + "\tx" for r in semeval_rows(5)]))
    with pytest.raises(DataError, match="unexpected column") as info:
        load_data(DataConfig(dataset="semeval2018-ec", path=str(path), invalid_rows="drop"))  # file-level: raises
    assert_names(info.value, path, None, "note")


@pytest.mark.parametrize(
    ("row_index", "field", "value", "column", "fragment"),
    [
        (1, 3, "2", "anticipation", "label value '2' is not 0 or 1"),
        (4, 12, "NONE", "trust", "'NONE' is not 0 or 1"),
        (6, 1, " ", "Tweet", "empty text"),
        (7, 0, "2018-En-00002", "ID", "duplicate id '2018-En-00002' (first at row 3)"),
    ],
)
def test_semeval_bad_rows(write, row_index, field, value, column, fragment):
    rows = semeval_rows(12)
    fields = rows[row_index].split("\t")
    fields[field] = value
    rows[row_index] = "\t".join(fields)
    path = write("se/train.txt", lines([SEMEVAL_HEADER] + rows, "\r\n"))
    with pytest.raises(DataError) as info:
        load_data(DataConfig(dataset="semeval2018-ec", path=str(path.parent)))
    assert_names(info.value, path, row_index + 1, column)
    assert fragment in str(info.value)


def test_tabular_bad_inputs(write):
    good = [f"t{i},{i % 2},{(i + 1) % 2},web" for i in range(10)]
    path = write("a.csv", lines(["body,joy,anger,source"] + good))
    with pytest.raises(DataError) as info:
        load_data(DataConfig(dataset="tabular", path=str(path)))
    assert_names(info.value, path, None, "text")
    assert "found: body, joy, anger, source" in str(info.value)

    # Inferred labels: a stray column is reported with the fix.
    with pytest.raises(DataError) as info:
        load_data(DataConfig(dataset="tabular", path=str(path), text_column="body"))
    assert_names(info.value, path, 1, "source")
    assert "label value 'web' is not 0 or 1 (if 'source' is not a label, add it to data.ignore_columns)" in str(
        info.value
    )

    # Explicit labels: the stray column is an unexpected column.
    with pytest.raises(DataError, match="unexpected column") as info:
        load_data(DataConfig(dataset="tabular", path=str(path), text_column="body", label_columns=("joy", "anger")))
    assert_names(info.value, path, None, "source")

    path = write("pandas.csv", lines([",text,joy"] + [f"{i},t{i},{i % 2}" for i in range(10)]))
    with pytest.raises(DataError, match="header column 1 has no name"):
        load_data(DataConfig(dataset="tabular", path=str(path)))
    data = load_data(DataConfig(dataset="tabular", path=str(path), ignore_columns=("",)))
    assert data.schema.names == ("joy",)

    rows = ["id,text,joy"] + [f"i{i},t{i},{i % 2}" for i in range(10)]
    rows[3] = "i0,again,1"  # data row 3 repeats data row 1's id
    path = write("dup.csv", lines(rows))
    with pytest.raises(DataError, match=r"duplicate id 'i0' \(first at row 1\)") as info:
        load_data(DataConfig(dataset="tabular", path=str(path), id_column="id"))
    assert_names(info.value, path, 3, "id")


def test_drop_mode_records_every_dropped_row(go_folder):
    rows = go_rows(40)
    rows[4] = "text\t9\tbad-label"
    rows[9] = "\t1\tempty-text"
    rows[14] = "text\t1\tg0"  # duplicate of row 1
    rows[19] = "only one field"
    folder = go_folder(rows, dev=go_rows(10, start=100))
    data = load_data(DataConfig(path=str(folder), invalid_rows="drop"))
    file = str(folder / "train.tsv")
    dropped = data.report.dropped
    assert [(d["file"], d["row"], d["column"]) for d in dropped] == [
        (file, 5, "labels"),
        (file, 10, "text"),
        (file, 15, "id"),
        (file, 20, None),
    ]
    assert "beyond the 3 labels" in dropped[0]["reason"] and dropped[1]["reason"] == "empty text"
    assert data.report.rows_read["train"] == 40
    assert data.report.rows_used["train"] + data.report.rows_used["test"] == 36
    assert "bad-label" not in data.table["id"].to_list()
    assert data.table.filter(pl.col("id") == "g0").height == 1


def test_duplicate_id_across_files(go_folder):
    folder = go_folder(go_rows(20), dev=go_rows(3, start=100) + ["dev text\t1\tg5"])
    with pytest.raises(DataError) as info:
        load_data(DataConfig(path=str(folder)))
    assert_names(info.value, folder / "dev.tsv", 4, "id")
    assert f"first at {folder / 'train.tsv'} row 6" in str(info.value)


# ------------------------------------------------------------------------------------ splits, subsets


def test_carve_is_seeded_disjoint_and_stratified():
    rng = np.random.default_rng(0)
    labels = (rng.random((3000, 4)) < np.array([0.02, 0.05, 0.2, 0.5])).astype(np.uint8)
    assert carved_size(0.1, 3000) == 300 and carved_size(0.7, 10) == 7 and carved_size(0.1, 43410) == 4341
    kept, carved = carve(labels, 300, 13, what="test")
    assert len(carved) == 300 and len(kept) == 2700
    assert not set(kept) & set(carved) and set(kept) | set(carved) == set(range(3000))
    again = carve(labels, 300, 13, what="test")
    assert np.array_equal(again[1], carved)
    assert not np.array_equal(carve(labels, 300, 14, what="test")[1], carved)
    # Within 1 point (a random 300-row sample is off by ~3 points for the 50% label).
    assert np.abs(labels[carved].mean(0) - labels.mean(0)).max() < 0.01
    no_label = labels.sum(1) == 0
    assert abs(no_label[carved].mean() - no_label.mean()) < 0.01


def test_subset_is_seeded(go_folder):
    folder = go_folder(go_rows(60), dev=go_rows(20, start=100))
    cfg = DataConfig(path=str(folder), max_train_samples=10, max_validation_samples=5)
    first, second = load_data(cfg), load_data(cfg)
    assert first.report.rows_used["train"] == 10 and first.report.rows_used["validation"] == 5
    assert first.report.subsets == {
        "train": "10 of 54 rows, seeded (seed 13)",
        "validation": "5 of 20 rows, seeded (seed 13)",
    }
    assert first.ids("train") == second.ids("train")
    assert first.ids("train") == sorted(first.ids("train"), key=lambda i: int(i[1:]))  # file order kept
    other = load_data(DataConfig(path=str(folder), max_train_samples=10, max_validation_samples=5, seed=5))
    assert other.ids("validation") != first.ids("validation") and other.data_hash != first.data_hash
    idx = subset(100, 10, 13, 0)
    assert len(set(idx)) == 10 and list(idx) == sorted(idx)


def test_hash_covers_bytes_not_location(go_folder):
    a = load_data(DataConfig(path=str(go_folder(go_rows(20), name="a"))))
    b = load_data(DataConfig(path=str(go_folder(go_rows(20), name="b"))))
    assert a.data_hash == b.data_hash
    changed = go_rows(20)
    changed[5] = changed[5].replace("text", "texT")
    c = load_data(DataConfig(path=str(go_folder(changed, name="c"))))
    assert c.data_hash != a.data_hash
    d = load_data(DataConfig(path=str(go_folder(go_rows(20), name="d")), invalid_rows="drop"))
    assert d.data_hash != a.data_hash


# ----------------------------------------------------------------------------------- prediction input


def test_prediction_input_formats(write, tmp_path):
    path = write("p.csv", lines(["body,extra", '"hello, world",1', "second,2"]))
    assert read_prediction_input(path, text_column="body") == ("row", ["1", "2"], ["hello, world", "second"])

    path = write("p.tsv", lines(["key\ttext", "k1\tone", "k2\ttwo"]))
    assert read_prediction_input(path, id_column="key") == ("key", ["k1", "k2"], ["one", "two"])

    path = write("go.tsv", lines(['"a ""quoted"" text"\t1,2\tx1', "plain\t27\tx2"]))
    assert read_prediction_input(path) == ("id", ["x1", "x2"], ['a "quoted" text', "plain"])

    path = write("kaggle.csv", lines(["ID,Tweet,anger", '2018-1,"hi, there",NONE', "2018-2,yo,0"], "\r\n"))
    assert read_prediction_input(path) == ("ID", ["2018-1", "2018-2"], ["hi, there", "yo"])

    path = write("crlf.csv", lines(["id,text", "a,hello", "b,world"], "\r\n"))  # text last: "\r" would stick
    assert read_prediction_input(path) == ("id", ["a", "b"], ["hello", "world"])  # its id column, not row numbers

    pl.DataFrame({"uid": [7, 8], "text": ["p one", "p two"]}).write_parquet(tmp_path / "p.parquet")
    assert read_prediction_input(tmp_path / "p.parquet", id_column="uid") == ("uid", ["7", "8"], ["p one", "p two"])


def test_prediction_input_errors(write):
    path = write("empty.csv", lines(["text", "fine", "  ", "ok"]))
    with pytest.raises(DataError, match="empty text") as info:
        read_prediction_input(path)
    assert_names(info.value, path, 2, "text")

    path = write("notext.tsv", lines(["a\tb", "1\t2"]))
    with pytest.raises(DataError, match=r"missing column\(s\) 'text' \(read as tabular\); found: a, b") as info:
        read_prediction_input(path)
    assert_names(info.value, path, None, "text")

    path = write("dups.csv", lines(["id,text", "a,x", "b,y", "a,z"]))
    with pytest.raises(DataError, match="duplicate id 'a'") as info:
        read_prediction_input(path, id_column="id")
    assert_names(info.value, path, 3, "id")


# ---------------------------------------------------------------------------------- location and hub


def test_data_dir_from_environment(write, tmp_path, monkeypatch):
    write("store/semeval2018-ec/train.txt", lines([SEMEVAL_HEADER] + semeval_rows(30), "\r\n"))
    monkeypatch.setenv("EMOTION_DATA_DIR", str(tmp_path / "store"))
    data = load_data(DataConfig(dataset="semeval2018-ec"))
    assert data.report.files == {"train": str(tmp_path / "store" / "semeval2018-ec" / "train.txt")}
    assert data.report.rows_read == {"train": 30}


def test_missing_path_and_tabular_without_path(tmp_path):
    with pytest.raises(DataError, match="data.path does not exist") as info:
        load_data(DataConfig(path=str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in str(info.value)
    with pytest.raises(DataError, match="needs data.path"):
        load_data(DataConfig(dataset="tabular"))


def _fake_datasets(monkeypatch, load_dataset) -> None:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)


class _FakeSplit:
    def __init__(self, frame: pl.DataFrame, names: list[str] | None = None) -> None:
        self._frame = frame
        self.features = {"labels": types.SimpleNamespace(feature=types.SimpleNamespace(names=names))}

    def to_polars(self) -> pl.DataFrame:
        return self._frame


def test_hub_rows_go_through_the_same_checks(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOTION_DATA_DIR", str(tmp_path))  # no goemotions/ folder there
    names = ["joy", "anger", "neutral"]
    frame = pl.DataFrame(
        {
            "text": [f"t{i}" for i in range(30)],
            "labels": [[i % 3] for i in range(30)],
            "id": [f"h{i}" for i in range(30)],
        }
    )
    calls = []

    def load_dataset(hub_id, config):
        calls.append((hub_id, config))
        return {
            "train": _FakeSplit(frame, names),
            "validation": _FakeSplit(frame.head(5).with_columns(pl.format("v{}", pl.col("id")).alias("id")), names),
        }

    _fake_datasets(monkeypatch, load_dataset)
    data = load_data(DataConfig())
    assert calls == [("google-research-datasets/go_emotions", "simplified")]
    assert data.schema.names == tuple(names)
    assert data.report.files["train"] == "hub:google-research-datasets/go_emotions/simplified:train"
    assert data.report.rows_read == {"train": 30, "validation": 5} and "test" in data.report.carved
    assert data.labels("validation").tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]]


def test_hub_failure_gives_three_options(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOTION_DATA_DIR", str(tmp_path))

    def load_dataset(hub_id, config):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(DataError) as info:
        load_data(DataConfig(dataset="semeval2018-ec"))
    text = str(info.value)
    assert "'SemEvalWorkshop/sem_eval_2018_task_1'" in text and "ConnectionError" in text
    assert "data.path" in text and "EMOTION_DATA_DIR" in text and "go online" in text
    assert f"$EMOTION_DATA_DIR/semeval2018-ec ({tmp_path / 'semeval2018-ec'}) does not exist" in text


def test_offline_with_nothing_local_real_datasets(tmp_path):
    """The real ``datasets`` package, offline (HF_*_OFFLINE=1, empty cache), no local data: the error.

    Run in a fresh interpreter: ``datasets``/``huggingface_hub`` read the offline switches at import
    time, and another test may already have imported them here.
    """
    pytest.importorskip("datasets")
    env = {k: v for k, v in os.environ.items() if k != "EMOTION_DATA_DIR" and not k.startswith("HF_")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    }
    code = (
        "from emotion_core.config import DataConfig\n"
        "from emotion_core.data import load_data\n"
        "from emotion_core.errors import DataError\n"
        "try:\n    load_data(DataConfig())\nexcept DataError as exc:\n    print('DataError:', exc)\n"
        "else:\n    print('loaded')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path)
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.startswith("DataError: no local goemotions data (data.path is not set and $EMOTION_DATA_DIR is not set)")
    assert "'google-research-datasets/go_emotions'" in out
    assert "set data.path" in out and "set EMOTION_DATA_DIR" in out and "go online" in out


def test_report_is_plain_json():
    report = DataReport(files={"train": "x"}, rows_read={"train": 3})
    assert json.loads(report.to_json())["rows_read"] == {"train": 3}
    assert set(report.to_dict()) == {
        "files",
        "rows_read",
        "rows_used",
        "dropped",
        "carved",
        "subsets",
        "label_counts",
        "rows_without_labels",
        "pushed",
    }
