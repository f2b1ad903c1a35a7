"""Cleaning throughput and near-duplicate recall/precision on a synthetic set with planted copies.

    PYTHONPATH=src .venv/bin/python bench/bench_clean.py --rows 1000000

Rows are Korean or English sentences of 10-30 random words (Korean words are random Hangul
syllables, so unrelated rows share little). Planted: exact copies (5 %, half with case/spacing
changes), near copies (10 %, 1-2 word edits: drop, insert, replace, punctuation, a space removed),
and rows with personal data, HTML, mojibake, invisible characters and empty rows. The whole
`clean_rows` pipeline runs (normalise, PII, filters, exact and near dedup; no off-domain filter,
which needs an encoder) and we measure:
- rows/s end to end and per stage;
- recall: planted copies removed as a duplicate of a row from the same source, over all planted
  copies, and over those whose true shingle Jaccard is at least the threshold (the pairs the
  method is asked to find; checked exactly on a sample);
- precision: rows removed as near duplicates whose kept row comes from the same source.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time

import numpy as np

from tunelab.data import dedup
from tunelab.data.clean import CleanOptions, clean_rows


def make_rows(n: int, seed: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Rows, source id of each row, and kind (0 original, 1 exact copy, 2 near copy)."""
    rng = random.Random(seed)
    ko_vocab = ["".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(rng.randint(1, 4))) for _ in range(20000)]
    en_vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(20000)]
    texts: list[str] = []
    source = np.empty(n, dtype=np.int64)
    kind = np.zeros(n, dtype=np.int8)
    for i in range(n):
        r = rng.random()
        if i > 100 and r < 0.05:  # exact copy (after normalisation)
            j = rng.randrange(i)
            t = texts[j]
            if rng.random() < 0.5:
                t = "  " + (t.upper() if t.isascii() else t).replace(" ", "  ") + " "
            texts.append(t)
            source[i], kind[i] = source[j], 1
        elif i > 100 and r < 0.15:  # near copy
            j = rng.randrange(i)
            while not texts[j].strip():
                j = rng.randrange(i)
            words = texts[j].split(" ")  # not split(): that would also cut at NBSP inside mojibake
            for _ in range(rng.randint(1, 2)):
                k = rng.randrange(len(words))
                op = rng.randrange(5)
                if op == 0 and len(words) > 8:
                    words.pop(k)
                elif op == 1:
                    words.insert(k, rng.choice(ko_vocab if source[j] % 2 else en_vocab))
                elif op == 2:
                    words[k] = rng.choice(ko_vocab if source[j] % 2 else en_vocab)
                elif op == 3:
                    words[k] += rng.choice("!?.,~")
                elif k + 1 < len(words):
                    words[k : k + 2] = [words[k] + words[k + 1]]  # a space removed (common in Korean)
            texts.append(" ".join(words))
            source[i], kind[i] = source[j], 2
        else:
            vocab = ko_vocab if i % 2 else en_vocab
            t = " ".join(rng.choice(vocab) for _ in range(rng.randint(10, 30)))
            extra = rng.random()
            if extra < 0.03:
                t += f" 연락처 010-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
            elif extra < 0.05:
                t += f" mail user{i}@example.com"
            elif extra < 0.07:
                t = f"<p>{t}</p>&nbsp;"
            elif extra < 0.08:
                t = t.encode("utf-8").decode("latin-1")  # UTF-8 read as latin-1: repairable
            elif extra < 0.09:
                t = t.replace(" ", "\u200b ", 3)
            elif extra < 0.095:
                t = "   "
            texts.append(t)
            source[i], kind[i] = i, 0
    rows = [{"text": t, "label": int(s % 3), "_line": i + 2} for i, (t, s) in enumerate(zip(texts, source))]
    return rows, source, kind


def true_jaccard(a: str, b: str, k: int) -> float:
    sa, sb = dedup.shingle_text(a), dedup.shingle_text(b)
    x = {sa[i : i + k] for i in range(max(1, len(sa) - k + 1))}
    y = {sb[i : i + k] for i in range(max(1, len(sb) - k + 1))}
    return len(x & y) / max(len(x | y), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", type=int, default=20000, help="planted pairs whose true Jaccard is computed")
    args = p.parse_args(argv)

    t = time.perf_counter()
    rows, source, kind = make_rows(args.rows, args.seed)
    gen_s = time.perf_counter() - t
    print(f"generated {len(rows):,} rows in {gen_s:.1f} s "
          f"(exact copies {int((kind == 1).sum()):,}, near copies {int((kind == 2).sum()):,})", flush=True)

    options = CleanOptions(near_dup_threshold=args.threshold)
    t = time.perf_counter()
    kept, report = clean_rows(rows, options)
    total_s = time.perf_counter() - t
    s = report.summary

    # recall / precision of duplicate removal, from the report
    line_to_idx = {r["_line"]: i for i, r in enumerate(rows)}
    removed = {e["line"]: e for e in report.entries if e["action"] == "removed"}
    dup_reasons = ("exact_duplicate", "near_duplicate")
    near_idx = np.flatnonzero(kind == 2)
    # a near copy of a row that was itself dropped for another reason (empty) cannot be matched to it
    first_alive = {}
    for i in range(len(rows)):
        e = removed.get(rows[i]["_line"])
        if e is None or e["reason"] in dup_reasons:
            first_alive.setdefault(int(source[i]), i)

    def caught(i: int) -> bool:
        e = removed.get(rows[i]["_line"])
        return bool(e and e["reason"] in dup_reasons and source[line_to_idx[e["detail"]["of_line"]]] == source[i])

    eligible = [i for i in near_idx if first_alive.get(int(source[i]), i) != i]
    hits = np.array([caught(i) for i in eligible])
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(len(eligible), size=min(args.sample, len(eligible)), replace=False)
    jac = np.array([true_jaccard(rows[eligible[j]]["text"], rows[first_alive[int(source[eligible[j]])]]["text"], options.shingle_size)
                    for j in sample])  # fmt: skip
    above = jac >= args.threshold
    near_removed = [e for e in removed.values() if e["reason"] == "near_duplicate"]
    correct = sum(source[line_to_idx[e["line"]]] == source[line_to_idx[e["detail"]["of_line"]]] for e in near_removed)
    exact_idx = np.flatnonzero(kind == 1)
    # an exact copy of an empty row is removed as empty: any removal counts
    exact_hits = np.mean([rows[i]["_line"] in removed for i in exact_idx])

    maxrss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    table = [
        ("rows", f"{len(rows):,}"),
        ("rows kept", f"{s['rows_out']:,}"),
        ("removed", ", ".join(f"{k} {v:,}" for k, v in s["removed"].items())),
        ("time total", f"{total_s:.1f} s  ({len(rows) / total_s:,.0f} rows/s)"),
        ("  normalise + PII + filters", f"{s['seconds']['normalise_filter']:.1f} s"),
        ("  exact dedup", f"{s['seconds']['exact_dedup']:.1f} s"),
        ("  near dedup (MinHash+LSH)", f"{s['seconds']['near_dedup']:.1f} s  (bands x rows {s['near_duplicates']['bands']}x{s['near_duplicates']['rows_per_band']})"),
        ("exact copies removed", f"{100 * exact_hits:.2f} %"),
        ("near copies: recall (all planted)", f"{100 * hits.mean():.2f} %  ({int(hits.sum()):,} / {len(hits):,})"),
        (f"near copies: recall (true J >= {args.threshold})", f"{100 * hits[sample][above].mean():.2f} %  ({int(above.sum()):,} of {len(sample):,} sampled)"),
        (f"near copies: recall (true J < {args.threshold})", f"{100 * hits[sample][~above].mean():.2f} %  ({int((~above).sum()):,} sampled)" if (~above).any() else "-"),
        ("near-duplicate precision", f"{100 * correct / max(len(near_removed), 1):.2f} %  ({correct:,} / {len(near_removed):,})"),
        ("peak memory", f"{maxrss_gb:.1f} GiB"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in table)
    print(f"\nbench_clean: threshold {args.threshold}, shingle {options.shingle_size}, {options.num_perm} slots, "
          f"python {sys.version.split()[0]}")  # fmt: skip
    print("\n".join(f"| {k:<{width}} | {v} |" for k, v in table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
