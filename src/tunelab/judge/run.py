"""The judge workflows: grade answers on a rubric, or compare two answer files pairwise.

    summary = grade(items, rubric, judge, "runs/docqa/judge-docqa", human=scores)
    summary = compare(items_a, items_b, rubric, judge, "runs/a-vs-b.judge-docqa", names=("a", "b"))

Every request goes through the reply cache (`judge-cache.sqlite` in the output folder, keyed by the
judge, the rubric version, the exact messages and the generation settings), so a re-run or a
resumed run sends nothing already answered. A reply that does not parse is retried once with a
reminder of the format; if that fails too the row is counted as unparseable and gets no score.
Pairwise comparison asks each pair in both orders (A/B, then B/A); a pair wins only when both
orders agree, and the rate at which they disagree is the judge's measured position bias.
The exact messages sent and the raw replies are saved in the per-row JSONL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tunelab.data.io_atomic import write_json_atomic, write_jsonl_atomic
from tunelab.judge.agreement import agreement, self_consistency
from tunelab.judge.answers import Answer
from tunelab.judge.judges import describe_remote
from tunelab.judge.parse import parse_score, parse_verdict
from tunelab.judge.prompts import pairwise_messages, pick_lang, pointwise_messages, retry_messages
from tunelab.judge.rubrics import Rubric
from tunelab.synth.cache import ReplyCache
from tunelab.synth.pipeline import run_requests

CACHE_FILE = "judge-cache.sqlite"


class _Asker:
    """Requests through the cache, with the one retry of unparseable replies; counts what was sent."""

    def __init__(self, judge, rubric: Rubric, out_dir: Path, progress: bool):
        self.judge, self.rubric, self.progress = judge, rubric, progress
        self.cache = ReplyCache(out_dir / CACHE_FILE)
        self.sent = self.cached = 0

    def ask(self, requests: list[list[dict]], parse: Callable, kind: str, langs: list[str], desc: str) -> list[dict]:
        """For each request: {messages, reply, parsed, retry_messages?, retry_reply?}."""
        replies, hits = run_requests(self.judge, requests, self.cache, self.rubric.version, desc, self.progress)
        self.sent += len(requests) - hits
        self.cached += hits
        out = [{"messages": m, "reply": r, "parsed": parse(r)} for m, r in zip(requests, replies)]
        bad = [i for i, o in enumerate(out) if o["parsed"] is None]
        if bad:
            again = [retry_messages(out[i]["messages"], out[i]["reply"], kind, langs[i], self.rubric.scale) for i in bad]
            replies, hits = run_requests(self.judge, again, self.cache, self.rubric.version, f"{desc} (retry)", self.progress)
            self.sent += len(again) - hits
            self.cached += hits
            for i, m, r in zip(bad, again, replies):
                out[i].update(retry_messages=m, retry_reply=r, parsed=parse(r))
        return out

    def close(self) -> None:
        self.cache.close()


def _status(o: dict) -> str:
    return "unparseable" if o["parsed"] is None else ("retried" if "retry_reply" in o else "ok")


def _judge_facts(judge, rubric: Rubric) -> dict:
    return {"judge": judge.id, "kind": judge.kind, "params": dict(judge.params), "rubric": rubric.name,
            "rubric_version": rubric.version, "scale": list(rubric.scale)}


def grade(items: list[Answer], rubric: Rubric, judge, out_dir: str | Path, *, lang: str = "auto",
          human: list[int | None] | None = None, human_source: str | None = None, repeats: int = 1,
          progress: bool = True, log=print) -> dict:
    """Score every answer on `rubric`; writes scores.jsonl and summary.json (and the report, by
    the caller). `repeats` > 1 judges everything again with other seeds (self-consistency)."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    langs = [pick_lang(it, lang) for it in items]
    requests = [pointwise_messages(rubric, it, lg) for it, lg in zip(items, langs)]
    if (note := describe_remote(judge, 2 * len(requests) * repeats, sum(len(m[-1]["content"]) for m in requests) * repeats)):
        log(note)
    asker = _Asker(judge, rubric, out_dir, progress)
    parse = lambda reply: parse_score(reply, rubric.scale)  # noqa: E731
    base = judge.cfg.seed
    try:
        results = asker.ask(requests, parse, "score", langs, "judge")
        extra_runs = []
        for k in range(1, repeats):
            _reseed(judge, base + k)
            extra_runs.append([o["parsed"][0] if o["parsed"] else None for o in asker.ask(requests, parse, "score", langs, f"judge repeat {k}")])
    finally:
        _reseed(judge, base)
        asker.close()
    scores = [o["parsed"][0] if o["parsed"] else None for o in results]
    rows = []
    for it, lg, o, h in zip(items, langs, results, human or [None] * len(items)):
        row = {"index": it.index, "source": it.where, "id": it.id, "lang": lg, "prompt": it.prompt, "answer": it.answer,
               "reference": it.reference, "score": o["parsed"][0] if o["parsed"] else None,
               "reason": o["parsed"][1] if o["parsed"] else None, "status": _status(o)}
        if human is not None:
            row["human"] = h
        rows.append({**row, **{k: o[k] for k in ("messages", "reply", "retry_messages", "retry_reply") if k in o}})
    write_jsonl_atomic(out_dir / "scores.jsonl", rows)
    status = [r["status"] for r in rows]
    summary = {**_judge_facts(judge, rubric), "mode": "pointwise", "rows": len(rows),
               "scored": sum(s is not None for s in scores), "retried": status.count("retried"),
               "unparseable": status.count("unparseable"), "requests_sent": asker.sent, "from_cache": asker.cached,
               "truncated_prompts": getattr(judge, "truncated", 0),
               "seconds": round(time.perf_counter() - started, 2),
               "mean_score": round(sum(given) / len(given), 4) if (given := [s for s in scores if s is not None]) else None,
               "histogram": {str(v): scores.count(v) for v in rubric.scores}}
    if human is not None:
        summary["human"] = {"source": human_source, "graded": sum(h is not None for h in human),
                            "agreement": agreement(scores, human, rubric.scale)}
    if extra_runs:
        summary["self_consistency"] = {**self_consistency([scores, *extra_runs], rubric.scale),
                                       "temperature": judge.cfg.temperature}
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def _reseed(judge, seed: int) -> None:
    """Another seed for a repeat of a sampled judge (the seed is part of the cache key too)."""
    judge.cfg.seed = seed
    judge.params["seed"] = seed


_FLIP = {"A": "B", "B": "A", "TIE": "TIE"}


def combine(ab: str | None, ba: str | None) -> tuple[str | None, bool | None]:
    """(outcome for the first file, whether the orders disagree) from the verdict with the first
    file shown as A (`ab`) and the verdict with it shown as B (`ba`, as the judge said it).

    >>> combine("A", "B"), combine("A", "A"), combine("TIE", "TIE"), combine("B", None)
    (('win', False), ('tie', True), ('tie', False), (None, None))
    """
    if ab is None or ba is None:
        return None, None
    first, second = ab, _FLIP[ba]  # both now say which file won: A = the first file
    if first != second:
        return "tie", True
    return {"A": "win", "B": "loss", "TIE": "tie"}[first], False


def compare(items_a: list[Answer], items_b: list[Answer], rubric: Rubric, judge, out_dir: str | Path, *,
            names: tuple[str, str] = ("a", "b"), lang: str = "auto", progress: bool = True, log=print) -> dict:
    """Judge each pair in both orders; writes pairs.jsonl and summary.json. Outcomes are from the
    first file's side (`answer_a`, named names[0]): win, tie, loss."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    langs = [pick_lang(a, lang) for a in items_a]
    forward = [pairwise_messages(rubric, a, a.answer, b.answer, lg) for a, b, lg in zip(items_a, items_b, langs)]
    backward = [pairwise_messages(rubric, a, b.answer, a.answer, lg) for a, b, lg in zip(items_a, items_b, langs)]
    if (note := describe_remote(judge, 4 * len(forward), sum(len(m[-1]["content"]) for m in forward + backward))):
        log(note)
    asker = _Asker(judge, rubric, out_dir, progress)
    try:
        results = asker.ask(forward + backward, parse_verdict, "pair", langs + langs, "judge pairs")
    finally:
        asker.close()
    n = len(items_a)
    rows, counts = [], {"win": 0, "tie": 0, "loss": 0, "unparseable": 0, "order_disagreement": 0, "first_position": 0, "decisive": 0}
    for i, (a, b) in enumerate(zip(items_a, items_b)):
        f, r = results[i], results[n + i]
        v1 = f["parsed"][0] if f["parsed"] else None  # the first file shown as A
        v2 = r["parsed"][0] if r["parsed"] else None  # the first file shown as B
        for v in (f["parsed"], r["parsed"]):  # position bias: how often the answer shown first wins
            if v and v[0] != "TIE":
                counts["decisive"] += 1
                counts["first_position"] += v[0] == "A"
        outcome, disagree = combine(v1, v2)
        counts[outcome or "unparseable"] += 1
        counts["order_disagreement"] += bool(disagree)
        rows.append({"index": a.index, "source": a.where, "lang": langs[i], "prompt": a.prompt, "answer_a": a.answer, "answer_b": b.answer,
                     "outcome": outcome, "orders_disagree": disagree, "verdict_ab": v1, "verdict_ba": v2,
                     "reason_ab": f["parsed"][1] if f["parsed"] else None, "reason_ba": r["parsed"][1] if r["parsed"] else None,
                     "status_ab": _status(f), "status_ba": _status(r),
                     "ab": {k: f[k] for k in ("messages", "reply", "retry_messages", "retry_reply") if k in f},
                     "ba": {k: r[k] for k in ("messages", "reply", "retry_messages", "retry_reply") if k in r}})  # fmt: skip
    write_jsonl_atomic(out_dir / "pairs.jsonl", rows)
    judged = n - counts["unparseable"]
    rate = lambda k: round(counts[k] / judged, 4) if judged else None  # noqa: E731
    summary = {**_judge_facts(judge, rubric), "mode": "pairwise", "names": list(names), "pairs": n, "judged": judged,
               "win": counts["win"], "tie": counts["tie"], "loss": counts["loss"], "unparseable": counts["unparseable"],
               "win_rate": round((counts["win"] + 0.5 * counts["tie"]) / judged, 4) if judged else None,
               "order_disagreement_rate": rate("order_disagreement"),
               "first_position_rate": round(counts["first_position"] / counts["decisive"], 4) if counts["decisive"] else None,
               "requests_sent": asker.sent, "from_cache": asker.cached, "seconds": round(time.perf_counter() - started, 2)}
    write_json_atomic(out_dir / "summary.json", summary)
    return summary

