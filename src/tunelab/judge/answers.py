"""The answers a judge grades, and the scores people gave them.

    items, source = read_answers("runs/docqa")            # the run's test_predictions.jsonl
    items, source = read_answers("answers.jsonl")         # any file with a prompt and an answer
    human = read_human("graded.csv", items, source, column="human_score", scale=(1, 5))

A row's question is `prompt` (or `question`, `instruction`); its answer is `generated` (what
`tunelab eval`/training writes) or else `answer`, `output`, `response`, `completion`; the reference,
optional, is `reference` (or `answer`/`output` when the row also has `generated`); `context`, if
present, is shown to the judge. Human scores come from a column of a file (matched by `id` when
both files have one, else by position, with the questions checked to be the same) or from the
review page's grading mode (FILE.review.sqlite of the same answers file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.readers import read_rows
from tunelab.errors import TunelabError

PROMPT_KEYS = ("prompt", "question", "instruction")
ANSWER_KEYS = ("generated", "answer", "output", "response", "completion")
RUN_PREDICTIONS = "test_predictions.jsonl"


@dataclass
class Answer:
    index: int  # 1-based position in the file
    where: str  # "file:line", for messages
    prompt: str
    answer: str
    reference: str | None = None
    context: str | None = None
    id: str | None = None


def answers_path(spec: str | Path) -> Path:
    """A run folder means its test predictions; anything else is a file."""
    path = Path(spec)
    if path.is_dir():
        if (path / RUN_PREDICTIONS).is_file():
            return path / RUN_PREDICTIONS
        raise TunelabError(f"{path}: a folder without {RUN_PREDICTIONS}; give a run folder whose test answers were "
                           "generated, or a JSONL file with prompt and answer fields")  # fmt: skip
    if not path.exists():
        raise TunelabError(f"answers file not found: {path}")
    return path


def _text(row: dict, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        raise TunelabError(f"{where}: field '{key}' must be text, got {type(value).__name__}")
    return value


def to_answer(row: dict, index: int, where: str) -> Answer:
    prompt_key = next((k for k in PROMPT_KEYS if _text(row, k, where) is not None), None)
    answer_key = next((k for k in ANSWER_KEYS if _text(row, k, where) is not None), None)
    if prompt_key is None:
        raise TunelabError(f"{where}: no question field (expected one of {', '.join(PROMPT_KEYS)}); fields: {', '.join(k for k in row if k != '_line')}")
    if answer_key is None:
        raise TunelabError(f"{where}: no answer field (expected one of {', '.join(ANSWER_KEYS)}); fields: {', '.join(k for k in row if k != '_line')}")
    prompt = _text(row, prompt_key, where)
    if prompt_key == "instruction" and _text(row, "input", where):
        prompt = f"{prompt}\n\n{row['input']}"
    reference = _text(row, "reference", where)
    if reference is None and answer_key == "generated":
        reference = next((t for k in ("answer", "output") if (t := _text(row, k, where)) is not None), None)
    rid = row.get("id")
    return Answer(index, where, prompt, _text(row, answer_key, where), reference, _text(row, "context", where),
                  None if rid is None else str(rid))


def read_answers(spec: str | Path) -> tuple[list[Answer], Path]:
    path = answers_path(spec)
    rows = read_rows(path)
    if not rows:
        raise TunelabError(f"{path}: no rows to judge")
    return [to_answer(r, i, f"{path}:{r.get('_line', i)}") for i, r in enumerate(rows, 1)], path


def check_pairs(a: list[Answer], b: list[Answer]) -> None:
    """Two answer files compared pairwise must hold the same questions, in the same order."""
    if len(a) != len(b):
        raise TunelabError(f"the two answer files have {len(a)} and {len(b)} rows; pairwise comparison needs the same questions in the same order")
    for x, y in zip(a, b):
        if x.prompt.strip() != y.prompt.strip():
            raise TunelabError(f"{x.where} and {y.where}: different questions ({x.prompt[:60]!r} vs {y.prompt[:60]!r}); "
                               "pairwise comparison needs the same questions in the same order")  # fmt: skip


def score_value(value, scale: tuple[int, int], where: str) -> int | None:
    """A human score: an integer on the scale, or None when left empty.

    >>> score_value("4", (1, 5), "f:2"), score_value(3.0, (1, 5), "f:3"), score_value("", (1, 5), "f:4")
    (4, 3, None)
    """
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer() or not scale[0] <= number <= scale[1] or isinstance(value, bool):
        raise TunelabError(f"{where}: human score {value!r} is not an integer from {scale[0]} to {scale[1]}")
    return int(number)


def read_human(spec: str | Path, items: list[Answer], source: Path, column: str, scale: tuple[int, int]) -> list[int | None]:
    """One human score (or None) per item, from a file's `column` or a review database."""
    path = Path(spec)
    if path.suffix == ".sqlite":
        return _from_review(path, items, source, scale)
    rows = read_rows(path)
    if rows and column not in {k for r in rows for k in r}:
        raise TunelabError(f"{path}: no column '{column}' (columns: {', '.join(k for k in rows[0] if k != '_line')}); set it with --human-column")
    where = [f"{path}:{r.get('_line', i)}" for i, r in enumerate(rows, 1)]
    if all(it.id is not None for it in items) and rows and all(r.get("id") is not None for r in rows):
        by_id = {str(r["id"]): (r, w) for r, w in zip(rows, where)}
        found = [by_id.get(it.id) for it in items]
        return [None if f is None else score_value(f[0].get(column), scale, f"{f[1]}: {column}") for f in found]
    if len(rows) != len(items):
        raise TunelabError(f"{path} has {len(rows)} rows and {source} {len(items)}; without an 'id' field in both, "
                           "human scores are matched by position and the row counts must be equal")  # fmt: skip
    for r, w, it in zip(rows, where, items):
        q = next((r[k] for k in PROMPT_KEYS if isinstance(r.get(k), str)), None)
        if q is not None and q.strip() != it.prompt.strip():
            raise TunelabError(f"{w}: its question differs from {it.where} ({q[:60]!r} vs {it.prompt[:60]!r}); "
                               "human scores must be in the same order as the answers (or both files need an 'id')")  # fmt: skip
    return [score_value(r.get(column), scale, f"{w}: {column}") for r, w in zip(rows, where)]


def _from_review(db: Path, items: list[Answer], source: Path, scale: tuple[int, int]) -> list[int | None]:
    from tunelab.review.store import ReviewStore

    store = ReviewStore(source, db_path=db, create=False)
    try:
        grades = store.grades()
    finally:
        store.close()
    return [score_value(grades.get(it.index), scale, f"{db}: item {it.index}") for it in items]
