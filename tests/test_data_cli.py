"""`tunelab data inspect|clean|split` through the argparse parser that `configure` builds."""

import argparse
import json

import pytest

from tunelab.commands import data
from tunelab.errors import TunelabError


def run(*argv):
    parser = argparse.ArgumentParser(prog="tunelab data")
    data.configure(parser)
    return data.run(parser.parse_args([str(a) for a in argv]))


@pytest.fixture
def tickets(tmp_path):
    path = tmp_path / "tickets.csv"
    lines = ["text,label"]
    for i in range(60):
        lines.append(f"주문 {i}번 배송 문의 드립니다 빠른 확인 부탁드립니다 고객 {i % 7},{'ship' if i % 2 else 'refund'}")
    lines += [
        "환불 요청은 구매 후 7일 이내에 가능합니다 연락처 010-1234-5678,refund",
        "환불 요청은 구매 후 7일 이내에 가능합니다 연락처 010-1234-5678!,refund",
        '"<p>메일 kim@example.com 으로 회신 바랍니다</p>",ship',
        "This row is in English only,ship",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_inspect_prints_and_writes_html(tickets, tmp_path, capsys):
    assert run("inspect", tickets, "--html", tmp_path / "i.html", "--json", tmp_path / "i.json") == 0
    out = capsys.readouterr().out
    assert "rows" in out and "refund" in out and "near duplicates" in out
    assert (tmp_path / "i.html").read_text(encoding="utf-8").startswith("<!doctype html>")
    assert json.loads((tmp_path / "i.json").read_text(encoding="utf-8"))["rows"] == 64


def test_clean_end_to_end(tickets, tmp_path, capsys):
    before = tickets.read_bytes()
    out = tmp_path / "clean" / "tickets.jsonl"
    assert run("clean", tickets, "--output", out, "--lang", "ko", "--report", tmp_path / "r.jsonl") == 0
    assert tickets.read_bytes() == before
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    texts = [r["text"] for r in rows]
    assert "메일 [EMAIL] 으로 회신 바랍니다" in texts
    assert not any("010-1234" in t or "English" in t for t in texts)
    report = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()]
    reasons = {e["line"]: e["reason"] for e in report if e["action"] == "removed"}
    assert reasons[63] == "near_duplicate" and reasons[65] == "wrong_language"
    summary = json.loads((tmp_path / "r.summary.json").read_text(encoding="utf-8"))
    assert summary["rows_in"] == 64 and summary["rows_out"] == len(rows)
    printed = capsys.readouterr().out
    assert "rows/s" in printed and "removed: near_duplicate" in printed


def test_clean_options(tickets, tmp_path):
    out = tmp_path / "o.jsonl"
    run("clean", tickets, "-o", out, "--no-pii", "--near-dup-threshold", "0", "--single-line")
    texts = [json.loads(x)["text"] for x in out.read_text(encoding="utf-8").splitlines()]
    assert any("010-1234-5678" in t for t in texts)
    assert sum("환불 요청은" in t for t in texts) == 2  # near duplicates kept


def test_split_writes_parts_without_leakage(tickets, tmp_path, capsys):
    assert run("split", tickets, "--out", tmp_path / "s", "--validation", "0.2", "--test", "0.2", "--seed", "3") == 0
    parts = {n: [json.loads(x) for x in (tmp_path / "s" / f"{n}.jsonl").read_text(encoding="utf-8").splitlines()]
             for n in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == 64
    near = [n for n, p in parts.items() if any("환불 요청은" in r["text"] for r in p)]
    assert len(near) == 1  # the near-duplicate pair sits in one part
    assert all("_line" not in r for p in parts.values() for r in p)
    summary = json.loads((tmp_path / "s" / "split.json").read_text())
    assert summary["leaked_groups"] == 0 and set(summary["parts"]) == {"train", "validation", "test"}


def test_split_folds(tickets, tmp_path):
    run("split", tickets, "--out", tmp_path / "f", "--folds", "3", "--test", "0.2")
    for k in range(3):
        train = (tmp_path / "f" / f"fold-{k}" / "train.jsonl").read_text(encoding="utf-8").splitlines()
        val = (tmp_path / "f" / f"fold-{k}" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
        assert not set(train) & set(val)
    test = (tmp_path / "f" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(test) + len(train) + len(val) == 64


def test_bad_input_file_gives_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('text,label\n"unclosed,a\nx,y,z\n', encoding="utf-8")
    with pytest.raises(TunelabError, match="bad.csv"):
        run("clean", bad, "-o", tmp_path / "o.jsonl")
    with pytest.raises(TunelabError, match="missing.csv"):
        run("inspect", tmp_path / "missing.csv")


def test_wrong_column_named(tickets, tmp_path):
    with pytest.raises(TunelabError, match="--text-column body is not a column; columns: label, text"):
        run("clean", tickets, "-o", tmp_path / "o.jsonl", "--text-column", "body")


def test_output_equal_to_input_refused(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "a"}\n')
    with pytest.raises(TunelabError, match="is the input.*would be overwritten"):
        run("clean", src, "-o", src)


def test_help_is_light():
    import subprocess
    import sys

    code = "import sys, tunelab.commands.data; print('numpy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
