"""The data of an SFT run: read rows, check them, split, then rows -> messages -> (ids, labels).

    splits = load_sft_splits(cfg.data, cfg.sft)                 # rows checked and split
    train = encode_split(splits.train, template, tok, max_length=256, counts=report)

Rows are turned into messages before splitting, so a bad row (missing field, empty answer)
stops the run naming `file:line`, or with `data.bad_rows: skip` is dropped and counted by
reason, whatever split it would have gone to. The split is seeded; with `sft.split_by` (e.g.
`context`) all rows sharing that field's value land in the same split, so test documents are
never seen in training. When every row has a `lang` field, each split keeps the language mix.
Rows too long even with their context cut to nothing are errors or skipped+counted the same way;
rows whose context was shortened are counted per split.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from tunelab.errors import TunelabError
from tunelab.sft.formats import row_to_messages, where
from tunelab.sft.tokenize import TooLongError, tokenize_messages


@dataclass
class Item:
    """One checked row: its messages (ending with the answer) and `file:line`."""

    messages: list[dict]
    where: str
    row: dict


@dataclass
class SftSplits:
    train: list[Item]
    validation: list[Item]
    test: list[Item]
    report: dict = field(default_factory=dict)


def read_sft_rows(spec: str, data_cfg) -> tuple[list[dict], str]:
    """Rows of a file or dataset asset, with `_line`; (rows, display name)."""
    from tunelab.assets.resolve import read_data_spec

    rows, _, _, name = read_data_spec(spec, data_cfg)  # text/label columns do not apply to SFT
    return rows, name


def to_items(rows: list[dict], fmt: str, source: str, bad_rows: str, skipped: Counter) -> list[Item]:
    """rows -> messages; a bad row raises (naming file:line) or is skipped and counted."""
    out = []
    for row in rows:
        try:
            out.append(Item(row_to_messages(row, fmt, source=source), where(row, source), row))
        except TunelabError as err:
            if bad_rows == "error":
                raise TunelabError(f"{err} (set data.bad_rows: skip to drop such rows)") from None
            skipped[_reason(str(err))] += 1
    return out


def _reason(message: str) -> str:
    """The reason part of 'file:line: reason', for counting skipped rows by kind."""
    head, _, rest = message.partition(": ")
    return rest if rest and ":" in head else message


def group_ids(items: list[Item], key: str) -> list[int]:
    """An integer per item: equal for items whose row has the same value of `key`.

    >>> group_ids([Item([], "f:1", {"c": "a"}), Item([], "f:2", {"c": "b"}), Item([], "f:3", {"c": "a"})], "c")
    [0, 1, 0]
    """
    ids: dict[str, int] = {}
    out = []
    for it in items:
        if key not in it.row:
            raise TunelabError(f"{it.where}: no field '{key}' (sft.split_by keeps rows with the same '{key}' together)")
        out.append(ids.setdefault(str(it.row[key]), len(ids)))
    return out


def split_items(items: list[Item], validation: float, test: float, seed: int,
                group_key: str | None = None) -> tuple[list[Item], list[Item], list[Item]]:
    """Seeded (train, validation, test) split; rows sharing `group_key` stay together, and when
    every row has `lang` each split keeps the language mix (stratified)."""
    import numpy as np

    from tunelab.data.split import assign_groups

    if not items:
        return [], [], []
    langs = [it.row.get("lang") for it in items]
    labels = langs if all(isinstance(x, str) for x in langs) else None
    groups = np.array(group_ids(items, group_key) if group_key else range(len(items)))
    part = assign_groups(labels, groups, [1.0 - validation - test, validation, test], seed=seed)
    parts: list[list[Item]] = [[], [], []]
    for it, p in zip(items, part.tolist()):
        parts[p].append(it)
    rng = random.Random(seed)
    for p in parts:
        rng.shuffle(p)
    return parts[0], parts[1], parts[2]


def usable_items(data_cfg, sft_cfg, skipped: Counter) -> tuple[list[Item], dict]:
    """The checked rows of data.train (after max_rows) and the start of the data report."""
    rows, name = read_sft_rows(data_cfg.train, data_cfg)
    items = to_items(rows, sft_cfg.format, name, data_cfg.bad_rows, skipped)
    if not items:
        raise TunelabError(f"{name}: no usable rows")
    report: dict = {"train_file": name, "rows_read": len(rows), "format": sft_cfg.format}
    if data_cfg.max_rows and len(items) > data_cfg.max_rows:
        items = random.Random(data_cfg.split.seed).sample(items, data_cfg.max_rows)
        items.sort(key=lambda it: str(it.row.get("_line")))  # an order independent of the draw
        report["max_rows"] = len(items)
    return items, report


def cv_rows(cfg):
    """The usable rows of data.train for `tunelab cv` (see `tunelab.sweep.cv`): stratified by
    language when every row has `lang`, grouped by `sft.split_by` when set."""
    from tunelab.sweep.cv import CvRows

    items, _ = usable_items(cfg.data, cfg.sft, Counter())
    langs = [it.row.get("lang") for it in items]
    labels = langs if all(isinstance(x, str) for x in langs) else None
    key = cfg.sft.split_by
    groups = [str(g) for g in group_ids(items, key)] if key else list(range(len(items)))
    records = [{k: v for k, v in it.row.items() if k != "_line"} for it in items]
    return CvRows(records, labels, groups, {}, stratum="language")


def load_sft_splits(data_cfg, sft_cfg) -> SftSplits:
    """Read, check and split the rows of a run as configured (no tokenizer needed)."""
    skipped: Counter = Counter()
    items, report = usable_items(data_cfg, sft_cfg, skipped)
    name, seed = report["train_file"], data_cfg.split.seed

    given = {}
    for split_name in ("validation", "test"):
        spec = getattr(data_cfg, split_name)
        if spec:
            r, n = read_sft_rows(spec, data_cfg)
            given[split_name] = to_items(r, sft_cfg.format, n, data_cfg.bad_rows, skipped)
    val_frac = 0.0 if "validation" in given else data_cfg.split.validation
    test_frac = 0.0 if "test" in given else data_cfg.split.test
    train, validation, test = split_items(items, val_frac, test_frac, seed, sft_cfg.split_by)
    validation = given.get("validation", validation)
    test = given.get("test", test)
    if not train:
        raise TunelabError(f"{name}: no rows left for training after the split")
    report.update({
        "skipped_rows": dict(skipped),
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test)},
        "split_by": sft_cfg.split_by,
    })
    if sft_cfg.split_by:
        report["groups"] = {s: len({str(it.row.get(sft_cfg.split_by)) for it in part})
                            for s, part in (("train", train), ("validation", validation), ("test", test))}
    return SftSplits(train, validation, test, report)


def encode_split(items: list[Item], template, tokenizer, *, max_length: int, train_on_prompt: bool,
                 bad_rows: str, counts: Counter) -> list[dict]:
    """Items -> [{"input_ids", "labels"}]; counts `truncated` and `too_long` (skipped) rows."""
    out = []
    for it in items:
        try:
            ex = tokenize_messages(it.messages, template, tokenizer, max_length=max_length,
                                   train_on_prompt=train_on_prompt, where=it.where)
        except TooLongError as err:
            if bad_rows == "error":
                raise TunelabError(f"{err} (or set data.bad_rows: skip to drop such rows)") from None
            counts["too_long"] += 1
            continue
        counts["truncated"] += int(ex["truncated"])
        counts["rows"] += 1
        out.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
    return out
