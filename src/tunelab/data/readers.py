"""Read tabular text data (CSV, TSV, JSONL, Parquet, or one folder per label) into row dicts.

Every row remembers where it came from (`_line`: 1-based line in the file, or the row number for
Parquet, or the file name for folders) so that every later error can name file and line.
Input files are only read, never modified.
"""

from __future__ import annotations

import csv
import io
import json
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


def _read_jsonl(path: Path, encoding: str) -> list[dict]:
    rows = []
    for number, text in enumerate(_decode_lines(path, encoding), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise TunelabError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise TunelabError(f"{path}:{number}: expected a JSON object per line, found {type(row).__name__}")
        row["_line"] = number
        rows.append(row)
    return rows


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
