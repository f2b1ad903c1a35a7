"""Read tabular text data (CSV, TSV, JSONL, JSON arrays, Parquet, or one folder per label) into row dicts.

Every row remembers where it came from (`_line`: 1-based line in the file, or the row number for
Parquet, or the file name for folders) so that every later error can name file and line.
A `.json` (or `.jsonl`) file whose first non-space character is `[` is one array of objects (the
original Alpaca file, LLaMA-Factory's data files); its rows' `_line` is the line where each object
starts, or `"item N"` when the file puts several objects on one line. Any other is JSON Lines. Input files are only read, never modified.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from tunelab.errors import TunelabError

FORMATS_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def detect_format(path: Path) -> str:
    """Format from the file name (`folders` for a directory)."""
    if path.is_dir():
        return "folders"
    fmt = FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise TunelabError(f"{path}: cannot tell the format from the extension; set data.format (csv, tsv, jsonl, parquet, folders)")
    return fmt


def _decode_lines(path: Path, encoding: str) -> list[str]:
    """Decode a text file line by line so that undecodable bytes are reported with their line."""
    lines = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                lines.append(raw.decode(encoding))
            except UnicodeDecodeError as err:
                raise TunelabError(
                    f"{path}:{number}: bytes that are not valid {encoding} at column {err.start + 1}; "
                    f"set data.encoding (e.g. latin-1, cp949) or fix the file"
                ) from None
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]  # UTF-8 byte-order mark
    return lines


def _read_delimited(path: Path, delimiter: str, encoding: str, header: bool, columns, quoting: bool) -> list[dict]:
    lines = _decode_lines(path, encoding)
    reader = csv.reader(io.StringIO("".join(lines)), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    rows = []
    names = list(columns) if columns else None
    try:
        for record in reader:
            line = reader.line_num  # line where this record ended (records may span lines)
            if not record or all(not cell.strip() for cell in record):
                continue
            if names is None:
                if header:
                    names = [c.strip() for c in record]
                    repeated = sorted({c for c in names if names.count(c) > 1})
                    if repeated:
                        raise TunelabError(f"{path}:{line}: the header names column {', '.join(repr(c) for c in repeated)} more than once; "
                                           "rename the columns so each name is used once (otherwise one of them would be silently lost)")
                    continue
                names = [f"column{i}" for i in range(len(record))]
            if len(record) != len(names):
                if len(record) > len(names) and not quoting:
                    # Raw text with the delimiter inside: keep it in the last column.
                    record = record[: len(names) - 1] + [delimiter.join(record[len(names) - 1 :])]
                else:
                    raise TunelabError(f"{path}:{line}: expected {len(names)} fields ({', '.join(names)}), found {len(record)}")
            row = dict(zip(names, record))
            row["_line"] = line
            rows.append(row)
    except csv.Error as err:
        raise TunelabError(f"{path}:{reader.line_num}: malformed CSV ({err}); if the text holds stray quotes set data.quoting: false") from None
    return rows


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_msg(err: json.JSONDecodeError) -> str:
    """The decoder's message without a dangling 'at' ('Invalid control character at')."""
    return err.msg.removesuffix(" at")


def _json_kind(value) -> str:
    """How a JSON value is named in messages: 'a string ("hello")', 'an array', 'null'."""
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({json.dumps(shown, ensure_ascii=False)})"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if value is None:
        return "null"
    return "an array"


def _read_json_array(path: Path, text: str) -> list[dict]:
    """One JSON array of objects; each row's `_line` is the line where its object starts."""
    decoder = json.JSONDecoder()
    counted_to, line = 0, 1  # `line` is the line number at offset `counted_to` (offsets only grow)

    def line_at(offset: int) -> int:
        nonlocal counted_to, line
        line += text.count("\n", counted_to, offset)
        counted_to = offset
        return line

    def fail(offset: int, what: str) -> TunelabError:
        row, col = text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)
        return TunelabError(f"{path}:{row}: not valid JSON ({what} at column {col})")

    pos = _JSON_SPACE.match(text).end() + 1  # just after the opening '['
    rows: list[dict] = []
    starts: list[int] = []
    pos = _JSON_SPACE.match(text, pos).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise TunelabError(f"{path}:{err.lineno}: not valid JSON ({_json_msg(err)} at column {err.colno})") from None
            number = len(rows) + 1
            start = line_at(pos)
            if not isinstance(value, dict):
                raise TunelabError(f"{path}: item {number}: expected an object with fields, got {_json_kind(value)} (line {start})")
            rows.append(value)
            starts.append(start)
            pos = _JSON_SPACE.match(text, end).end()
            if text.startswith(",", pos):
                pos = _JSON_SPACE.match(text, pos + 1).end()
                if text.startswith("]", pos):
                    raise fail(pos, f"a comma after item {number} and no item before ']'")
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            if pos >= len(text):
                raise fail(pos, f"the file ends after item {number} without the closing ']'")
            raise fail(pos, f"expected ',' or ']' after item {number}")
    pos = _JSON_SPACE.match(text, pos).end()
    if pos < len(text):
        raise fail(pos, "extra data after the array's closing ']'")
    one_per_line = all(a < b for a, b in zip(starts, starts[1:]))
    for number, (row, start) in enumerate(zip(rows, starts), start=1):
        row["_line"] = start if one_per_line else f"item {number}"
    return rows


def _read_jsonl(path: Path, encoding: str) -> list[dict]:
    lines = _decode_lines(path, encoding)
    whole = "".join(lines)
    if whole.lstrip(" \t\r\n").startswith("["):
        return _read_json_array(path, whole)
    rows = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            if not rows:
                _refuse_single_object(path, whole)
            raise TunelabError(f"{path}:{number}: not valid JSON ({_json_msg(err)} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise TunelabError(f"{path}:{number}: expected a JSON object per line, found {type(row).__name__}")
        row["_line"] = number
        rows.append(row)
    return rows


def _refuse_single_object(path: Path, text: str) -> None:
    """A file that is one JSON object spread over lines gets its own message (not 'line 1: ...')."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return
    if isinstance(value, dict):
        keys = ", ".join(list(value)[:8])
        raise TunelabError(
            f"{path}: holds one JSON object (keys: {keys}); expected an array of objects "
            "([{...}, {...}]) or one object per line (JSON Lines)"
        )


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise TunelabError(f"{path}: cannot read as Parquet ({err})") from None
    rows = table.to_pylist()
    for number, row in enumerate(rows, start=1):
        row["_line"] = number
    return rows


def _read_folders(path: Path, encoding: str) -> list[dict]:
    """One subfolder per label, one text file per example (labels = sorted folder names)."""
    rows = []
    for label_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(p for p in label_dir.iterdir() if p.is_file()):
            try:
                text = file.read_bytes().decode(encoding)
            except UnicodeDecodeError:
                raise TunelabError(f"{file}: not valid {encoding}; set data.encoding") from None
            rows.append({"text": text.strip(), "label": label_dir.name, "_line": f"{label_dir.name}/{file.name}"})
    if not rows:
        raise TunelabError(f"{path}: expected one subfolder per label holding text files; found none")
    return rows


def read_rows(path, *, format: str = "auto", encoding: str = "utf-8", header: bool = True, columns=None, quoting: bool = True) -> list[dict]:
    """Read every row of a data file as a dict of its columns plus `_line`.

        rows = read_rows("spam.tsv", format="tsv", header=False, columns=["label", "text"], quoting=False)
        rows[0]  # {'label': 'ham', 'text': 'Go until jurong point...', '_line': 1}
    """
    path = Path(path)
    if not path.exists():
        raise TunelabError(f"data file not found: {path}")
    if not (path.is_file() or path.is_dir()):
        raise TunelabError(f"{path}: not a regular file (a pipe or device would block); save the data to a file first")
    fmt = detect_format(path) if format == "auto" else format
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, "," if fmt == "csv" else "\t", encoding, header, columns, quoting)
    if fmt == "jsonl":
        return _read_jsonl(path, encoding)
    if fmt == "parquet":
        return _read_parquet(path)
    if fmt == "folders":
        return _read_folders(path, encoding)
    raise TunelabError(f"{path}: unknown format '{fmt}'")
