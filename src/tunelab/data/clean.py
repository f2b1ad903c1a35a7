"""The cleaning pipeline: rows in, kept rows and a report of every row removed or changed out.

    tunelab data clean data/tickets.csv --output data/tickets.clean.jsonl --lang ko

Per row (in this order): normalise every text column (mojibake, HTML, NFC, invisible characters,
whitespace), redact personal data, then drop the row if it is empty, garbled, too short or long,
or in the wrong script. Across rows: report label conflicts (the same text with different labels;
optionally drop them), drop exact duplicates (same text after normalisation) and near duplicates
(MinHash + LSH, keeping the first row of each cluster), and finally off-domain rows (similarity of
a local encoder's embeddings to a reference set). The input rows are never modified.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.data import dedup, normalize, pii
from tunelab.data.pii import TYPES as PII_TYPES
from tunelab.errors import TunelabError
from tunelab.progress import progress_bar

TEXT_COLUMN_GUESSES = ("text", "sentence", "content", "question", "instruction", "prompt", "input", "messages", "conversations", "document", "body")
LANGS = ("any", "ko", "en")
Embed = Callable[[list[str]], np.ndarray]
_PLACEHOLDER = re.compile(r"\[(?:" + "|".join(PII_TYPES) + r")\]")  # not letters of the text


@dataclass
class CleanOptions:
    text_columns: list[str] | None = None  # checked for length, language, duplicates, domain; None: guess
    label_column: str | None = None  # for label conflicts; None: 'label' when present
    columns: list[str] | None = None  # normalised and redacted; None: all but label, ids and '_' keys
    normalize: bool = True
    html: bool = True
    mojibake: bool = True
    keep_newlines: bool = True
    min_chars: int = 1
    max_chars: int | None = None
    lang: str = "any"  # any | ko | en
    min_script_share: float = 0.5  # share of letters in the wanted script
    drop_garbled: bool = True
    exact_dedup: bool = True
    near_dup_threshold: float | None = 0.7  # None: no near-duplicate removal
    num_perm: int = 128
    shingle_size: int = 5
    pii: bool = True
    pii_types: tuple[str, ...] = PII_TYPES
    label_conflicts: str = "report"  # report (keep the first) | drop (drop every row of the group)
    domain_reference: list[str] | None = None  # in-domain example texts; None: no domain filter
    domain_threshold: float = 0.3
    domain_top_k: int = 5  # score = mean cosine similarity to the k most similar references
    embed: Embed | None = field(default=None, repr=False)  # texts -> (N, D); required with a reference
    preview_chars: int = 200
    progress: bool = False

    def check(self) -> None:
        if self.lang not in LANGS:
            raise TunelabError(f"lang: expected one of {', '.join(LANGS)}, got {self.lang!r}")
        if self.label_conflicts not in ("report", "drop"):
            raise TunelabError(f"label_conflicts: expected report or drop, got {self.label_conflicts!r}")
        if self.near_dup_threshold is not None and not 0 < self.near_dup_threshold <= 1:
            raise TunelabError(f"near_dup_threshold: expected a value in (0, 1], got {self.near_dup_threshold}")
        if not 0 <= self.min_script_share <= 1:
            raise TunelabError(f"min_script_share: expected a value in [0, 1], got {self.min_script_share}")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise TunelabError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        unknown = set(self.pii_types) - set(PII_TYPES)
        if unknown:
            raise TunelabError(f"pii_types: unknown {sorted(unknown)}; known: {', '.join(PII_TYPES)}")


@dataclass
class CleanReport:
    entries: list[dict]  # one per removed or changed row, plus one per label-conflict group
    summary: dict


# --- columns -------------------------------------------------------------------------------------


def guess_text_columns(rows: Sequence[dict], label_column: str | None, source: str) -> list[str]:
    """The column holding the text: a conventional name, else the only string column."""
    names = _column_names(rows)
    for name in TEXT_COLUMN_GUESSES:
        if name in names:
            return [name]
    strings = [c for c in names if c != label_column and any(isinstance(r.get(c), str) for r in rows[:100])]
    if len(strings) == 1:
        return strings
    raise TunelabError(
        f"{source}: cannot tell which column holds the text (columns: {', '.join(names) or 'none'}); "
        f"name it with --text-column"
    )


def _column_names(rows: Sequence[dict]) -> list[str]:
    names: dict[str, None] = {}
    for r in rows[:1000]:
        names.update(dict.fromkeys(k for k in r if not k.startswith("_")))
    return list(names)


def _is_id(name: str) -> bool:
    n = name.lower()
    return n in ("id", "uuid", "key") or n.endswith(("_id", "-id"))


def row_text(row: dict, columns: Sequence[str]) -> str:
    """The text of `columns` in a row joined by newlines; chat messages contribute their contents
    (`content`, or ShareGPT's `value`)."""
    parts = []
    for c in columns:
        v = row.get(c)
        if v is None:
            continue
        if isinstance(v, list):  # [{"role": ..., "content": ...}, ...]
            parts.extend(str(m.get("content", m.get("value", ""))) if isinstance(m, dict) else str(m) for m in v)
        else:
            parts.append(v if isinstance(v, str) else str(v))
    return "\n".join(p for p in parts if p)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """Apply fn to every string in a value (nested lists and dicts too); new containers, input kept."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: (v if k == "role" else _map_strings(v, fn)) for k, v in value.items()}
    return value


def _label_key(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


# --- the pipeline --------------------------------------------------------------------------------


def clean_rows(rows: Sequence[dict], options: CleanOptions | None = None, source: str = "<rows>") -> tuple[list[dict], CleanReport]:
    """Clean `rows` (dicts with an optional '_line'); returns new row dicts and the report.

    >>> kept, report = clean_rows([{"text": "전화 010-1234-5678", "label": 1}, {"text": "전화  010-9999-8888", "label": 1}])
    >>> [r["text"] for r in kept], report.summary["removed"]
    (['전화 [PHONE]'], {'exact_duplicate': 1})
    """
    opt = options or CleanOptions()
    opt.check()
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    label_col, text_cols, clean_cols = _resolve_columns(rows, opt, source)
    work = _normalise_and_filter(rows, opt, text_cols, clean_cols)
    seconds["normalise_filter"] = time.perf_counter() - t0

    t = time.perf_counter()
    by_key = _group_by_text(work)  # label conflicts and exact duplicates, over the rows still in
    conflict_entries = _label_conflicts(work, by_key, label_col, opt) if label_col is not None else []
    if opt.exact_dedup:
        _drop_exact_duplicates(work, by_key)
    seconds["exact_dedup"] = time.perf_counter() - t

    near_info: dict[str, Any] = {}
    if opt.near_dup_threshold is not None:
        t = time.perf_counter()
        near_info = _drop_near_duplicates(work, label_col, opt)
        seconds["near_dedup"] = time.perf_counter() - t

    domain_info: dict[str, Any] = {}
    if opt.domain_reference is not None:
        t = time.perf_counter()
        domain_info = _drop_off_domain(work, opt)
        seconds["off_domain"] = time.perf_counter() - t

    entries = _report_entries(work, opt) + conflict_entries
    kept = [work.out[i] for i in range(work.n) if i not in work.removed]
    seconds["total"] = time.perf_counter() - t0
    summary = _summary(work, opt, entries, len(conflict_entries), text_cols, label_col, near_info, domain_info, seconds)
    return kept, CleanReport(entries, summary)


@dataclass
class _Work:
    """What the stages share: per input row its output dict, text, changes, and why it was removed."""

    lines: list[int]  # the line number of each input row, for the report
    out: list[dict] = field(default_factory=list)  # normalised and redacted copies of the rows
    texts: list[str] = field(default_factory=list)  # the text of each row, as filters see it
    changes: list[list[str]] = field(default_factory=list)  # sorted 'normalize:STEP' / 'pii:TYPE'
    removed: dict[int, tuple[str, dict]] = field(default_factory=dict)  # row -> (reason, detail)
    step_counts: Counter = field(default_factory=Counter)  # rows changed per normalisation step
    pii_counts: Counter = field(default_factory=Counter)  # rows redacted per personal-data type

    @property
    def n(self) -> int:
        return len(self.lines)

    def alive(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.removed]


def _resolve_columns(rows: Sequence[dict], opt: CleanOptions, source: str) -> tuple[str | None, list[str], list[str]]:
    """Pick the label, text and to-be-cleaned columns, so every later stage knows where to look."""
    label_col = opt.label_column
    if label_col is None and any("label" in r for r in rows[:100]):
        label_col = "label"
    text_cols = opt.text_columns or guess_text_columns(rows, label_col, source)
    clean_cols = opt.columns
    if clean_cols is None:
        clean_cols = [c for c in _column_names(rows) if c != label_col and not _is_id(c)]
        clean_cols += [c for c in text_cols if c not in clean_cols]
    return label_col, text_cols, clean_cols


def _normalise_and_filter(rows: Sequence[dict], opt: CleanOptions, text_cols: list[str], clean_cols: list[str]) -> _Work:
    """Normalise and redact each row, and mark the rows a per-row filter rejects, in one pass."""
    work = _Work(lines=[r.get("_line", i + 1) for i, r in enumerate(rows)])
    wanted = {"ko": 0, "en": 1}.get(opt.lang)
    bar = progress_bar(total=len(rows), desc="normalise", unit="row", disable=not opt.progress)
    for i, row in enumerate(rows):
        new, row_changes = _normalise_row(row, clean_cols, opt)
        text = row_text(new, text_cols)
        work.out.append(new)
        work.texts.append(text)
        work.changes.append(sorted(set(row_changes)))
        for ch in set(row_changes):
            (work.pii_counts if ch.startswith("pii:") else work.step_counts)[ch.split(":", 1)[1]] += 1
        reason = _row_filter(row, text, text_cols, opt, wanted)
        if reason is not None:
            work.removed[i] = reason
        bar.update(1)
    bar.close()
    return work


def _normalise_row(row: dict, clean_cols: list[str], opt: CleanOptions) -> tuple[dict, list[str]]:
    """A copy of `row` with its clean columns normalised and redacted, plus the changes made (with repeats)."""
    row_changes: list[str] = []

    def fix(s: str) -> str:
        if opt.normalize:
            s, steps = normalize.normalize_steps(s, html=opt.html, mojibake=opt.mojibake, keep_newlines=opt.keep_newlines)
            row_changes.extend(f"normalize:{x}" for x in steps)
        if opt.pii:
            s, found = pii.redact(s, opt.pii_types)
            row_changes.extend(f"pii:{f.type}" for f in found)
        return s

    new = dict(row)
    for c in clean_cols:
        if c in new:
            new[c] = _map_strings(new[c], fix)
    return new, row_changes


def _row_filter(row: dict, text: str, text_cols: list[str], opt: CleanOptions, wanted: int | None) -> tuple[str, dict] | None:
    """Why a row is unusable on its own (empty, garbled, too short or long, wrong script), else None."""
    if not text.strip():
        missing = [c for c in text_cols if c not in row]
        return ("empty", {"missing_columns": missing} if missing else {})
    if opt.drop_garbled and normalize.looks_garbled(text):
        return ("garbled", {})
    if len(text) < opt.min_chars:
        return ("too_short", {"chars": len(text), "min_chars": opt.min_chars})
    if opt.max_chars is not None and len(text) > opt.max_chars:
        return ("too_long", {"chars": len(text), "max_chars": opt.max_chars})
    if wanted is not None:
        return _wrong_language(text, opt, wanted)
    return None


def _wrong_language(text: str, opt: CleanOptions, wanted: int) -> tuple[str, dict] | None:
    """A 'wrong_language' removal when too few letters are in the wanted script (placeholders ignored)."""
    counts = normalize.script_counts(_PLACEHOLDER.sub(" ", text) if "[" in text else text)
    total = sum(counts)
    share = counts[wanted] / total if total else 0.0
    if share >= opt.min_script_share:
        return None
    shares = {k: round(v / total, 3) if total else 0.0 for k, v in zip(("hangul", "latin", "other"), counts)}
    return ("wrong_language", {"lang": opt.lang, "scripts": shares})


def _group_by_text(work: _Work) -> dict[str, list[int]]:
    """The rows still in, grouped by their dedup key (same text after normalisation), in row order."""
    by_key: dict[str, list[int]] = {}
    for i in work.alive():
        by_key.setdefault(dedup.dedup_key(work.texts[i]), []).append(i)
    return by_key


def _label_conflicts(work: _Work, by_key: dict[str, list[int]], label_col: str, opt: CleanOptions) -> list[dict]:
    """Report groups of one text with several labels (noisy labels), dropping them with 'drop'."""
    entries = []
    for members in by_key.values():
        if len(members) < 2:
            continue
        labels = Counter(_label_key(work.out[i].get(label_col)) for i in members)
        if len(labels) < 2:
            continue
        entries.append({
            "action": "label_conflict",
            "lines": [work.lines[i] for i in members],
            "labels": dict(labels),
            "resolution": "dropped" if opt.label_conflicts == "drop" else f"kept line {work.lines[members[0]]}",
            "preview": work.texts[members[0]][: opt.preview_chars],
        })  # fmt: skip
        if opt.label_conflicts == "drop":
            for i in members:
                work.removed[i] = ("label_conflict", {"labels": dict(labels)})
    return entries


def _drop_exact_duplicates(work: _Work, by_key: dict[str, list[int]]) -> None:
    """Keep the first remaining row of each same-text group, so each text is trained on once."""
    for members in by_key.values():
        keep = next((i for i in members if i not in work.removed), None)
        for i in members:
            if i != keep and i not in work.removed:
                work.removed[i] = ("exact_duplicate", {"of_line": work.lines[keep]})


def _drop_near_duplicates(work: _Work, label_col: str | None, opt: CleanOptions) -> dict[str, Any]:
    """Drop all but the first row of each MinHash/LSH cluster of near-identical texts; returns its stats."""
    alive = np.array(work.alive(), dtype=np.int64)
    if len(alive) <= 1:
        return {}
    nd = dedup.near_duplicates(
        [work.texts[i] for i in alive], threshold=opt.near_dup_threshold,
        num_perm=opt.num_perm, shingle_size=opt.shingle_size,
    )  # fmt: skip
    best = np.zeros(len(alive), dtype=np.float32)
    if len(nd.pairs):
        np.maximum.at(best, nd.pairs[:, 0], nd.similarity)
        np.maximum.at(best, nd.pairs[:, 1], nd.similarity)
    for j in np.flatnonzero(nd.groups != np.arange(len(alive))):
        i, rep = int(alive[j]), int(alive[nd.groups[j]])
        detail = {"of_line": work.lines[rep], "similarity": round(float(best[j]), 3)}
        if label_col is not None and _label_key(work.out[i].get(label_col)) != _label_key(work.out[rep].get(label_col)):
            detail["label_differs"] = True
        work.removed[i] = ("near_duplicate", detail)
    return {"threshold": opt.near_dup_threshold, "bands": nd.bands, "rows_per_band": nd.rows,
            "pairs": int(len(nd.pairs))}  # fmt: skip


def _drop_off_domain(work: _Work, opt: CleanOptions) -> dict[str, Any]:
    """Drop rows whose embedding is far from the in-domain reference texts; returns score stats."""
    alive_idx = work.alive()
    scores = domain_scores([work.texts[i] for i in alive_idx], opt.domain_reference, opt.embed, opt.domain_top_k)
    for i, s in zip(alive_idx, scores):
        if s < opt.domain_threshold:
            work.removed[i] = ("off_domain", {"score": round(float(s), 4), "threshold": opt.domain_threshold})
    if not len(scores):
        return {}
    return {"threshold": opt.domain_threshold, "score_p10": float(np.percentile(scores, 10)),
            "score_p50": float(np.percentile(scores, 50)), "reference_rows": len(opt.domain_reference)}  # fmt: skip


def _report_entries(work: _Work, opt: CleanOptions) -> list[dict]:
    """One report entry per removed row (reason, detail) and per kept row that was changed, in row order."""
    entries: list[dict] = []
    for i in range(work.n):
        if i in work.removed:
            reason, detail = work.removed[i]
            preview = work.texts[i][: opt.preview_chars]
            entries.append({"line": work.lines[i], "action": "removed", "reason": reason, "detail": detail,
                            "changes": work.changes[i], "preview": preview})  # fmt: skip
        elif work.changes[i]:
            kinds = sorted({"pii_redacted" if c.startswith("pii:") else "normalized" for c in work.changes[i]})
            entries.append({"line": work.lines[i], "action": "changed", "reason": "+".join(kinds), "changes": work.changes[i]})
    return entries


def _summary(work: _Work, opt: CleanOptions, entries: list[dict], conflict_groups: int, text_cols: list[str],
             label_col: str | None, near_info: dict, domain_info: dict, seconds: dict[str, float]) -> dict:  # fmt: skip
    """The report's summary: counts per reason, step and type, the columns used, timings and options."""
    n = work.n
    return {
        "rows_in": n,
        "rows_out": n - len(work.removed),
        "removed": dict(Counter(r for r, _ in work.removed.values()).most_common()),
        "changed_kept": dict(Counter(e["reason"] for e in entries if e["action"] == "changed")),
        "normalize_steps": dict(work.step_counts.most_common()),
        "pii_rows": dict(work.pii_counts.most_common()),
        "label_conflict_groups": conflict_groups,
        "text_columns": list(text_cols),
        "label_column": label_col,
        "near_duplicates": near_info,
        "domain": domain_info,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "rows_per_second": round(n / seconds["total"], 1) if seconds["total"] > 0 else None,
        "options": {f.name: getattr(opt, f.name) for f in fields(opt) if f.name not in ("embed", "domain_reference", "progress")},
    }


# --- off-domain ----------------------------------------------------------------------------------


def domain_scores(texts: list[str], reference: list[str], embed: Embed | None, top_k: int = 5) -> np.ndarray:
    """(N,) mean cosine similarity of each text to its `top_k` most similar reference texts."""
    if embed is None:
        raise TunelabError("the off-domain filter needs an encoder (--encoder) to embed texts")
    if not reference:
        raise TunelabError("the domain reference has no text")
    if not texts:
        return np.zeros(0, dtype=np.float32)
    ref = _unit(np.asarray(embed(list(reference)), dtype=np.float32))  # (R, D)
    k = min(top_k, len(ref))
    out = np.empty(len(texts), dtype=np.float32)
    for lo in range(0, len(texts), 4096):
        emb = _unit(np.asarray(embed(texts[lo : lo + 4096]), dtype=np.float32))  # (B, D)
        sims = emb @ ref.T  # (B, R)
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]  # (B, k)
        out[lo : lo + len(emb)] = top.mean(axis=1)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def hf_mean_pool_encoder(folder: str | Path, batch_size: int = 32, max_length: int = 256) -> Embed:
    """An `embed(texts) -> (N, D)` over a local Hugging Face encoder folder (e.g. the MiniLM asset):
    mean of the last hidden states over real (non-pad) tokens, L2-normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TunelabError(f"{folder}: not a Hugging Face model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for lo in range(0, len(texts), batch_size):
                batch = tokenizer(texts[lo : lo + batch_size], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")  # fmt: skip
                hidden = model(**batch).last_hidden_state  # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)

    return embed


# --- files ---------------------------------------------------------------------------------------


def public_row(row: dict) -> dict:
    """A row as written to an output file: without private keys such as '_line'."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def write_outputs(kept: Sequence[dict], report: CleanReport, output: str | Path, report_path: str | Path | None = None,
                  input_path: str | Path | None = None) -> tuple[Path, Path, Path]:  # fmt: skip
    """Write kept rows (JSONL, private keys dropped), the report (JSONL) and its summary (JSON),
    each atomically. Default report: `<output stem>.report.jsonl`; summary: `<stem>.summary.json`.
    Returns the three paths."""
    from tunelab.data.io_atomic import write_json_atomic, write_jsonl_atomic

    output = Path(output)
    if input_path is not None and output.exists() and output.resolve() == Path(input_path).resolve():
        raise TunelabError(f"{output}: the output would overwrite the input; choose another --output")
    report_path = Path(report_path) if report_path else output.with_name(output.stem + ".report.jsonl")
    summary_path = report_path.with_name(report_path.stem.removesuffix(".report") + ".summary.json")
    if len({output.resolve(), report_path.resolve(), summary_path.resolve()}) < 3:
        raise TunelabError(f"{report_path}: the report would overwrite the output; choose another --report")
    summary = {"input": str(input_path) if input_path else None, "output": str(output), "report": str(report_path),
               **report.summary}  # fmt: skip
    write_jsonl_atomic(output, (public_row(r) for r in kept))
    write_jsonl_atomic(report_path, report.entries)
    write_json_atomic(summary_path, summary)
    return output, report_path, summary_path


def clean_file(path: str | Path, output: str | Path, report_path: str | Path | None = None,
               options: CleanOptions | None = None, **read_kwargs: Any) -> CleanReport:  # fmt: skip
    """Read `path` with the tunelab readers, clean it and `write_outputs`. The input is only read."""
    from tunelab.data.readers import read_rows

    rows = read_rows(path, **read_kwargs)
    opts = options or CleanOptions()
    kept, report = clean_rows(rows, opts, source=str(path))
    write_outputs(kept, report, output, report_path, input_path=path)
    return report
