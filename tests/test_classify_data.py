"""Reading and checking classification data: formats, bad rows named by file and line, splits."""

import json
from collections import Counter

import pytest

from tunelab.classify.data import Example, load_splits, stratified_split, undersample
from tunelab.config import DataConfig
from tunelab.data.readers import read_rows
from tunelab.errors import TunelabError


def test_formats_read_the_same_rows(tmp_path):
    rows = [{"text": "héllo, \"world\"", "label": "a"}, {"text": "안녕하세요", "label": "b"}]
    (tmp_path / "d.csv").write_text('text,label\n"héllo, ""world""",a\n안녕하세요,b\n', encoding="utf-8")
    (tmp_path / "d.tsv").write_text('text\tlabel\nhéllo, "world"\ta\n안녕하세요\tb\n', encoding="utf-8")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name, kw in (("d.csv", {}), ("d.tsv", {"quoting": False}), ("d.jsonl", {}), ("d.parquet", {})):
        got = [{k: v for k, v in r.items() if k != "_line"} for r in read_rows(tmp_path / name, **kw)]
        assert got == rows, name


def test_undecodable_bytes_name_the_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"text,label\nfine,a\n\xff\xfe bad,b\n")
    with pytest.raises(TunelabError, match=r"d.csv:3: bytes that are not valid utf-8"):
        read_rows(p)


def test_bad_rows_error_or_skip(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"msg {i},{'ab'[i % 2]}\n" for i in range(40)) + ",a\nno label,\n")
    with pytest.raises(TunelabError, match=r"d.csv:42: empty text in column 'text'"):
        load_splits(DataConfig(train=str(p)))
    splits = load_splits(DataConfig(train=str(p), bad_rows="skip"))
    assert splits.report["skipped_rows"] == {"empty text in column 'text'": 1, "missing label in column 'label'": 1}
    assert sum(splits.report["sizes"].values()) == 40
    with pytest.raises(TunelabError, match=r"no column 'body'"):
        load_splits(DataConfig(train=str(p), text_column="body"))


def test_unseen_test_label_is_named(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"m {i},{'ab'[i % 2]}\n" for i in range(20)))
    test = tmp_path / "test.csv"
    test.write_text("text,label\nx,a\ny,c\n")
    with pytest.raises(TunelabError, match=r"test.csv:3: label 'c' in the test data never occurs in the training data"):
        load_splits(DataConfig(train=str(train), test=str(test)))


def test_input_file_is_not_modified(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"msg {i},{'ab'[i % 2]}\n" for i in range(30)) + ",a\n")
    before = p.read_bytes()
    load_splits(DataConfig(train=str(p), bad_rows="skip", balance="undersample"))
    assert p.read_bytes() == before


def test_stratified_split_keeps_shares_and_is_seeded():
    ex = [Example(str(i), "spam" if i < 100 else "ham", "") for i in range(1000)]
    train, val, test = stratified_split(ex, [0.1, 0.2], seed=123)
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    assert Counter(e.label for e in test) == {"ham": 180, "spam": 20}
    assert {e.text for e in train}.isdisjoint({e.text for e in test})
    assert [e.text for e in test] == [e.text for e in stratified_split(ex, [0.1, 0.2], seed=123)[2]]


def test_undersample_balances():
    ex = [Example(str(i), "spam" if i < 10 else "ham", "") for i in range(100)]
    assert Counter(e.label for e in undersample(ex, 1)) == {"ham": 10, "spam": 10}


def test_max_rows_takes_a_stratified_sample(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"msg {i},{'a' if i % 4 else 'b'}\n" for i in range(400)))
    splits = load_splits(DataConfig(train=str(p), max_rows=100))
    assert splits.report["max_rows"] == 100
    assert sum(splits.report["sizes"].values()) == 100
    assert splits.report["class_counts"]["train"] == {"a": 52, "b": 18}
