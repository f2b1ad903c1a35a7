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


def test_replace_dir_swaps_a_finished_folder_in_and_removes_the_old(tmp_path):
    from tunelab.data.io_atomic import replace_dir

    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = tmp_path / ".tmp-model"
    (tmp / "sub").mkdir(parents=True)
    (tmp / "sub" / "new.txt").write_text("new")
    replace_dir(tmp, final, durable=True)
    assert sorted(p.name for p in final.rglob("*")) == ["new.txt", "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or trash left behind
    fresh = tmp_path / ".tmp-2"
    fresh.mkdir()
    replace_dir(fresh, tmp_path / "other")  # nothing there yet
    assert (tmp_path / "other").is_dir() and not fresh.exists()


def test_staged_dir_keeps_the_old_folder_when_writing_fails(tmp_path):
    """A crash while an export or checkpoint is written leaves the previous one whole, and no temp."""
    import pytest

    from tunelab.data.io_atomic import staged_dir

    final = tmp_path / "model"
    with staged_dir(final) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with staged_dir(final, durable=True) as tmp:
            (tmp / "weights").write_text("half of v2")
            raise RuntimeError("disk full")
    assert (final / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
