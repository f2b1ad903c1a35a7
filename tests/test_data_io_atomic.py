"""Atomic writers: content lands whole or not at all, and nothing temporary is left behind."""

import json

import pytest

from tunelab.data.io_atomic import write_json_atomic, write_jsonl_atomic, write_text_atomic
from tunelab.errors import TunelabError


def test_jsonl_roundtrip_keeps_korean_readable(tmp_path):
    import numpy as np

    path = write_jsonl_atomic(tmp_path / "sub" / "rows.jsonl", [{"text": "안녕", "n": np.int64(3)}, {"x": [1, 2]}])
    raw = path.read_text(encoding="utf-8")
    assert "안녕" in raw and raw.endswith("\n")
    assert [json.loads(x) for x in raw.splitlines()] == [{"text": "안녕", "n": 3}, {"x": [1, 2]}]


def test_failure_leaves_old_file_untouched(tmp_path):
    path = write_text_atomic(tmp_path / "out.txt", "old")

    def rows():
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, rows())
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_unwritable_values_and_folders(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"f": object()})
    assert not list(tmp_path.iterdir())
    (tmp_path / "d").mkdir()
    with pytest.raises(TunelabError, match="is a folder"):
        write_text_atomic(tmp_path / "d", "x")
