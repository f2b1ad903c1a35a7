"""The shipped Korean customer-message set (data/ko-customer) and its configs.

The files parse through tunelab's own reader and loader, carry exactly the labels documented in
the data's README, are NFC, large and balanced enough, and their three splits share no text even
after normalising Unicode, case and whitespace (Korean spacing is free: "취소 해주세요" is
"취소해주세요").
"""

import csv
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from tunelab.classify.data import load_splits
from tunelab.config import load_config
from tunelab.data.readers import read_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "ko-customer"
SPLITS = ("train", "validation", "test")
CONFIGS = sorted((ROOT / "configs").glob("ko-customer-*.yaml"))


def documented_labels() -> set[str]:
    """The label names in the first column of the README's label table (| `name` | ... |)."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", (DATA / "README.md").read_text(encoding="utf-8"), flags=re.M))


def raw_rows(split: str) -> list[dict]:
    """The file's rows as the csv module reads them: no normalisation on the way."""
    with open(DATA / f"{split}.csv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def loose_key(text: str) -> str:
    """NFKC, case folded, every whitespace removed: texts equal under this key are the same message."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def test_files_parse_through_tunelab_reader():
    for split in SPLITS:
        rows = read_rows(DATA / f"{split}.csv")
        assert rows and {k for k in rows[0] if k != "_line"} == {"text", "label"}, split
        assert len(rows) == len(raw_rows(split)), split  # no record swallowed by quoting


def test_labels_are_the_documented_ones():
    documented = documented_labels()
    assert len(documented) == 5, documented
    for split in SPLITS:
        assert {r["label"] for r in raw_rows(split)} == documented, split


def test_size_and_balance():
    counts = Counter(r["label"] for split in SPLITS for r in raw_rows(split))
    total = sum(counts.values())
    assert total >= 600
    assert min(counts.values()) >= 0.10 * total, counts


def test_text_is_nfc_and_clean():
    for split in SPLITS:
        for i, r in enumerate(raw_rows(split), start=2):
            text = r["text"]
            assert unicodedata.normalize("NFC", text) == text, f"{split}.csv:{i} is not NFC"
            assert text == text.strip() and "\n" not in text and text, f"{split}.csv:{i}"


def test_splits_are_non_empty_and_disjoint():
    keys = {split: [loose_key(r["text"]) for r in raw_rows(split)] for split in SPLITS}
    for split, ks in keys.items():
        assert ks, split
        assert len(set(ks)) == len(ks), f"duplicate text inside {split}.csv"
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not set(keys[a]) & set(keys[b]), f"{a} and {b} share a text"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_and_reads_the_set(path, monkeypatch):
    cfg = load_config(path)
    assert cfg.task == "classification"
    assert [getattr(cfg.data, s) for s in SPLITS] == [f"data/ko-customer/{s}.csv" for s in SPLITS]
    monkeypatch.chdir(ROOT)  # the config's data paths are relative to the repository root
    splits = load_splits(cfg.data)
    assert splits.labels == sorted(documented_labels())
    assert splits.report["skipped_rows"] == {}
    assert {s: len(getattr(splits, s)) for s in SPLITS} == {s: len(raw_rows(s)) for s in SPLITS}


def test_both_backbones_have_a_config():
    assert [p.name for p in CONFIGS] == ["ko-customer-gemma3.yaml", "ko-customer-qwen2.5.yaml"]
