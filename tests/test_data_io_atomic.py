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


DEAD = 999_999_999  # above any pid_max: no such process


def test_remove_stale_temporaries_removes_only_what_tunelab_named_temporary(tmp_path):
    import os

    from tunelab.data.io_atomic import remove_stale_temporaries

    def folder(name, content="x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_text(content)
        return tmp_path / name

    stale = [folder(f".tmp-step-0000010-{DEAD}"), folder(f".tmp-best-{os.getpid()}"), folder(f".gone-step-0000003-{DEAD}")]
    folder("model", "new")
    stale.append(folder(f".trash-model-{DEAD}", "old"))  # model/ is in place: the old copy is garbage
    kept = [folder(".tmp-notes"), folder("tmp-model-12"), folder(".tmpx-model-12"), folder(".tmp-model-12x"), folder("checkpoints")]
    (tmp_path / f".tmp-file-{DEAD}").write_text("a file, not a folder tunelab stages")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (tmp_path / f".tmp-link-{DEAD}").symlink_to(outside)
    busy = folder(f".tmp-adapter-{os.getppid()}")  # the parent process is alive: it may be writing
    lines = []
    removed = remove_stale_temporaries(tmp_path, log=lines.append)
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale)
    assert all(p.is_dir() for p in kept + [busy]) and (tmp_path / "model" / "weights").read_text() == "new"
    assert (tmp_path / f".tmp-file-{DEAD}").is_file() and (outside / "keep").is_file()
    assert f"removed stale temporary folder {tmp_path / f'.tmp-step-0000010-{DEAD}'} left by an interrupted write" in lines
    assert any(line.startswith(f"kept temporary folder {busy}: process {os.getppid()}") for line in lines)
    assert len(lines) == len(stale) + 1
    assert remove_stale_temporaries(tmp_path, log=lines.append) == []  # nothing left to remove
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_trash_folder_whose_original_is_missing_is_put_back(tmp_path):
    """Killed between replace_dir's two renames: the old complete folder waits under .trash-."""
    from tunelab.data.io_atomic import remove_stale_temporaries

    (tmp_path / f".trash-best-{DEAD}").mkdir()
    (tmp_path / f".trash-best-{DEAD}" / "info.json").write_text("old")
    (tmp_path / f".tmp-best-{DEAD}").mkdir()  # the new one, never renamed in
    lines = []
    remove_stale_temporaries(tmp_path, log=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (tmp_path / "best" / "info.json").read_text() == "old"
    assert lines[-1] == f"restored {tmp_path / 'best'} from .trash-best-{DEAD}, left by an interrupted replace"


def test_remove_dir_leaves_nothing_and_ignores_a_missing_folder(tmp_path):
    from tunelab.data.io_atomic import remove_dir

    (tmp_path / "step-0000003" / "sub").mkdir(parents=True)
    remove_dir(tmp_path / "step-0000003")
    remove_dir(tmp_path / "never-there")
    assert list(tmp_path.iterdir()) == []
