"""Classification data: rows -> checked (text, label id) examples, split, balanced, with a report.

The steps are small functions so each can be tested alone:
    read (readers.py) -> extract_examples -> label_map -> balance -> stratified_split
`load_splits(data_config)` runs them in order and returns the three splits plus a report of what
was skipped, balanced and split. Bad rows stop the run with file and line, or, with
`data.bad_rows: skip`, are dropped and counted.
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from tunelab.assets.resolve import read_data_spec
from tunelab.errors import TunelabError


@dataclass
class Example:
    text: str
    label: str
    source: str  # "file:line", for messages and reports


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    labels: list[str]  # id -> name; ids follow sorted label names
    report: dict = field(default_factory=dict)

    def label_ids(self, examples: list[Example]) -> list[int]:
        index = {name: i for i, name in enumerate(self.labels)}
        return [index[e.label] for e in examples]


def extract_examples(rows: list[dict], text_col: str, label_col: str, source: str, bad_rows: str, skipped: Counter) -> list[Example]:
    """Check each row has a non-empty text and a label; stop or skip (counted by reason)."""
    if rows:
        missing = [c for c in (text_col, label_col) if c not in rows[0]]
        if missing:
            found = ", ".join(k for k in rows[0] if k != "_line")
            raise TunelabError(f"{source}: no column {missing[0]!r} (columns found: {found}); set data.text_column / data.label_column")
    out = []
    label_type: tuple[str, str] | None = None  # (kind of the first label, its row) for mixed-type checks
    for row in rows:
        where = f"{source}:{row.get('_line')}"
        text, label = row.get(text_col), row.get(label_col)
        problem = _text_problem(text, text_col) or _label_problem(label, label_col)
        if problem:
            if bad_rows == "error":
                raise TunelabError(f"{where}: {problem} (set data.bad_rows: skip to drop such rows)")
            skipped[problem.split(" (")[0]] += 1
            continue
        kind = _label_kind(label)
        if label_type is None:
            label_type = (kind, where)
        elif kind != label_type[0]:
            raise TunelabError(f"{where}: label {label!r} is {kind}, but the labels before it are {label_type[0]} (first at {label_type[1]}); "
                               "write every label the same way (e.g. all as text), or 1 and '1' become two classes")
        out.append(Example(text=unicodedata.normalize("NFC", text), label=str(label).strip(), source=where))
    return out


def _text_problem(text, column: str) -> str | None:
    """Why a row's text cannot be trained on, or None. Texts must be strings: a JSON object or a
    number in the text column is refused rather than trained as its repr."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return f"empty text in column {column!r}"
    if not isinstance(text, str):
        return f"text in column {column!r} is {type(text).__name__} {str(text)[:40]!r}, not a string"
    return None


def _label_problem(label, column: str) -> str | None:
    """Why a row's label is missing or unusable (empty, null, NaN, a list or object), or None."""
    if label is None or (isinstance(label, float) and math.isnan(label)) or str(label).strip() in ("", "nan", "NaN"):
        return f"missing label in column {column!r}"
    if isinstance(label, (list, dict)):
        return f"label in column {column!r} is a {type(label).__name__}, not a single value"
    return None


def _label_kind(label) -> str:
    """text, a number or a boolean: the kinds that must not mix within one label column."""
    if isinstance(label, bool):
        return "a boolean"
    if isinstance(label, (int, float)):
        return "a number"
    return "text"


def drop_unseen_labels(examples: list[Example], known: set[str], split_name: str, bad_rows: str, skipped: Counter) -> list[Example]:
    """A validation/test label never seen in training cannot be predicted: stop or skip it."""
    out = []
    for e in examples:
        if e.label not in known:
            if bad_rows == "error":
                raise TunelabError(f"{e.source}: label {e.label!r} in the {split_name} data never occurs in the training data (labels: {', '.join(sorted(known))})")
            skipped[f"{split_name} label not in training data"] += 1
            continue
        out.append(e)
    return out


def undersample(examples: list[Example], seed: int) -> list[Example]:
    """Cut every class to the size of the smallest, keeping a seeded random sample of each.

    >>> ex = [Example("a", "ham", ""), Example("b", "ham", ""), Example("c", "spam", "")]
    >>> sorted(e.label for e in undersample(ex, seed=1))
    ['ham', 'spam']
    """
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    smallest = min(len(v) for v in by_label.values())
    rng = random.Random(seed)
    kept = []
    for label in sorted(by_label):
        kept.extend(rng.sample(by_label[label], smallest))
    rng.shuffle(kept)
    return kept


def stratified_split(examples: list[Example], fractions: list[float], seed: int) -> list[list[Example]]:
    """Split into len(fractions)+1 parts (the rest first), each keeping the class shares.

    Per class, rows are shuffled with the seed and cut at the rounded fractions, so a class with
    few rows still lands in every part when it can.
    """
    rng = random.Random(seed)
    parts: list[list[Example]] = [[] for _ in range(len(fractions) + 1)]
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        n = len(items)
        start = 0
        cuts = [round(n * f) for f in fractions]
        for i, size in enumerate(cuts, start=1):
            parts[i].extend(items[start : start + size])
            start += size
        parts[0].extend(items[start:])
    for p in parts:
        rng.shuffle(p)
    return parts


def load_splits(data_cfg) -> Splits:
    """Read, check, balance and split the data of a run as configured."""
    skipped: Counter = Counter()
    rows, text_col, label_col, name = read_data_spec(data_cfg.train, data_cfg)
    train = extract_examples(rows, text_col, label_col, name, data_cfg.bad_rows, skipped)
    if not train:
        raise TunelabError(f"{name}: no usable rows")
    report: dict = {"train_file": name, "rows_read": len(rows)}
    split_seed = data_cfg.split.seed

    if data_cfg.balance == "undersample":
        before = Counter(e.label for e in train)
        train = undersample(train, split_seed)
        report["balanced_from"] = dict(sorted(before.items()))
    if data_cfg.max_rows and len(train) > data_cfg.max_rows:
        keep = data_cfg.max_rows / len(train)
        train = stratified_split(train, [keep], split_seed)[1]
        report["max_rows"] = len(train)

    given = {}
    for split_name in ("validation", "test"):
        spec = getattr(data_cfg, split_name)
        if spec:
            r, tc, lc, n = read_data_spec(spec, data_cfg)
            given[split_name] = extract_examples(r, tc, lc, n, data_cfg.bad_rows, skipped)
    fractions = [data_cfg.split.validation if "validation" not in given else 0.0, data_cfg.split.test if "test" not in given else 0.0]
    train, validation, test = stratified_split(train, fractions, split_seed)
    validation = given.get("validation", validation)
    test = given.get("test", test)

    labels = sorted({e.label for e in train})
    if len(labels) < 2:
        raise TunelabError(f"{name}: found only one label ({labels[0] if labels else 'none'}) in column {label_col!r}; classification needs at least two")
    validation = drop_unseen_labels(validation, set(labels), "validation", data_cfg.bad_rows, skipped)
    test = drop_unseen_labels(test, set(labels), "test", data_cfg.bad_rows, skipped)

    report.update(
        {
            "skipped_rows": dict(skipped),
            "sizes": {"train": len(train), "validation": len(validation), "test": len(test)},
            "class_counts": {s: dict(sorted(Counter(e.label for e in ex).items())) for s, ex in (("train", train), ("validation", validation), ("test", test))},
        }
    )
    return Splits(train, validation, test, labels, report)


def cv_rows(cfg):
    """All usable rows of data.train, after max_rows and balancing, as a run would read them,
    for `tunelab cv` (see `tunelab.sweep.cv`): stratified by class, every row its own group."""
    from tunelab.sweep.cv import CvRows

    data = cfg.data.model_copy(update={"validation": None, "test": None, "split": cfg.data.split.model_copy(update={"validation": 0.0, "test": 0.0})})
    examples = load_splits(data).train
    fold_data = {"text_column": "text", "label_column": "label",
                 # Undersampling already happened on the pooled rows; class weights still apply per fold.
                 "balance": "none" if cfg.data.balance == "undersample" else cfg.data.balance}
    return CvRows([{"text": e.text, "label": e.label, "source": e.source} for e in examples],
                  [e.label for e in examples], list(range(len(examples))), fold_data)
