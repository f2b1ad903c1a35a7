"""Atomic file writers: a reader never sees a half-written output.

Each writer puts the content in a temporary file in the destination's folder, flushes and fsyncs
it, then `os.replace`s it over the destination (atomic on POSIX and Windows when both paths are on
one file system, which the same folder guarantees). If anything fails the temporary file is
removed and the destination is left as it was.

    write_jsonl_atomic("out/clean.jsonl", [{"text": "안녕하세요", "label": 1}])

Folders (a model, a checkpoint) are written the same way by `staged_dir`/`replace_dir`. Every
temporary name they use is one of these, beside the destination, so that a process killed in the
middle (kill -9, a power cut) leaves something `remove_stale_temporaries` can recognise and delete
at the next start, without ever touching a name tunelab did not choose as temporary:

    .tmp-NAME-PID      a folder being written (`staged_dir`); not yet in place, so never valid
    .trash-NAME-PID    the previous NAME, moved aside by `replace_dir` just before the new one
                       goes in; if NAME itself is missing the kill fell between the two renames,
                       and this complete old folder is put back instead of being deleted
    .gone-NAME-PID     a folder being deleted (`remove_dir`)

(A file writer's own temporary, `.NAME.XXXXXXXX.tmp`, is small and left alone.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, Paths and sets appear in rows and reports; everything else is a bug
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _fsync_dir(folder: Path) -> None:
    # make the rename itself durable; not possible on every platform (e.g. Windows), so best effort
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def set_mode_from_umask(path: str | os.PathLike) -> None:
    """Give `path` (a file, or a folder and everything in it) the permissions a plain open() or
    mkdir() would under the current umask. Writers that create 0600 files (mkstemp, safetensors)
    otherwise leave outputs only their owner can read, unlike every other file tunelab writes."""
    umask = os.umask(0)
    os.umask(umask)
    path = Path(path)
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def write_bytes_atomic(path: str | os.PathLike, chunks: Iterable[bytes]) -> Path:
    """Write `chunks` to `path` atomically (creating parent folders); returns the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TunelabError(f"{path}: cannot create folder {path.parent}: {err.strerror}") from None
    if path.is_dir():
        raise TunelabError(f"{path}: is a folder, expected a file path to write")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise TunelabError(f"{path}: cannot write in {path.parent}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        set_mode_from_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise TunelabError(f"{path}: write failed: {err.strerror or err}") from None
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    return write_bytes_atomic(path, [text.encode(encoding)])


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line (UTF-8, Korean kept readable, not \\u-escaped)."""

    def chunks() -> Iterable[bytes]:
        buf: list[str] = []
        for row in rows:
            buf.append(json.dumps(row, ensure_ascii=False, default=_json_default))
            if len(buf) >= 4096:
                yield ("\n".join(buf) + "\n").encode("utf-8")
                buf = []
        if buf:
            yield ("\n".join(buf) + "\n").encode("utf-8")

    return write_bytes_atomic(path, chunks())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write one indented JSON document atomically."""
    text = json.dumps(obj, ensure_ascii=False, indent=2, default=_json_default) + "\n"
    return write_text_atomic(path, text)


TEMP_PREFIX, TRASH_PREFIX, GONE_PREFIX = ".tmp-", ".trash-", ".gone-"  # see the module docstring
_STALE_DIR = re.compile(r"^\.(tmp|trash|gone)-(.+)-(\d+)$")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike, *, durable: bool = False,
                trash: str | os.PathLike | None = None) -> Path:
    """Put the finished folder `tmp` where `final` is, replacing the folder there if any.

    Each of the two renames is atomic, so a reader finds the old folder, nothing, or the new
    folder, never a half-written one; the old folder is deleted last. `durable` also fsyncs the
    files and the renames (checkpoints must survive a power cut, not only a crash). `tmp` must be
    in the same folder as `final` (same file system). `trash` names where the old folder waits.
    """
    tmp, final = Path(tmp), Path(final)
    if durable:
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
    if final.exists():
        old = Path(trash) if trash is not None else final.with_name(f"{TRASH_PREFIX}{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    if durable:
        _fsync_dir(final.parent)
    return final


@contextmanager
def staged_dir(final: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; when the block ends normally it replaces
    `final` (see `replace_dir`), and when it raises it is deleted and `final` is left as it was.

        with staged_dir(run_dir / "model") as tmp:
            save_everything_into(tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{TEMP_PREFIX}{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final, durable=durable)


def remove_dir(path: str | os.PathLike) -> None:
    """Delete the folder `path` so that it never exists half-deleted under its own name: it is
    renamed to `.gone-NAME-PID` first (atomic), then removed; a kill meanwhile leaves only that
    temporary name, which `remove_stale_temporaries` deletes later."""
    path = Path(path)
    if not path.exists():
        return
    gone = path.with_name(f"{GONE_PREFIX}{path.name}-{os.getpid()}")
    shutil.rmtree(gone, ignore_errors=True)
    os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # called at the start of a run: this process is not writing there (yet)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return False
    return True


def remove_stale_temporaries(folder: str | os.PathLike, log: Callable[[str], None] = print) -> list[Path]:
    """Delete the folders interrupted writes left directly in `folder` (the names in the module
    docstring, nothing else; not recursive) and return the paths removed or restored, one log
    line each. A `.trash-NAME-PID` whose NAME is missing is renamed back to NAME (the previous
    complete folder). Entries whose PID is another process still running are kept: it may be
    writing them now. Symbolic links are never followed or removed. A folder that cannot be
    removed is logged and left: it wastes space but does not stop a run."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done: list[Path] = []
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    for entry in entries:
        if entry.is_symlink():
            continue
        match = _STALE_DIR.match(entry.name)
        if match and entry.is_dir():
            kind, name, pid = match.group(1), match.group(2), int(match.group(3))
            if _pid_running(pid):
                log(f"kept temporary folder {entry}: process {pid}, which may be writing it, is still running")
                continue
            final = folder / name
            if kind == "trash" and not final.exists() and not final.is_symlink():
                try:
                    os.replace(entry, final)
                except OSError as err:
                    log(f"could not put {entry} back as {final}: {err.strerror or err}")
                    continue
                _fsync_dir(folder)
                log(f"restored {final} from {entry.name}, left by an interrupted replace")
                done.append(entry)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            if entry.exists():
                log(f"could not remove the stale temporary folder {entry} (left by an interrupted write); delete it by hand")
                continue
            log(f"removed stale temporary folder {entry} left by an interrupted write")
            done.append(entry)
    return done
