"""`tunelab data synth`: documents -> chunks -> questions -> grounded answers -> filtered QA rows.

    tunelab data synth data/synth-demo --config configs/synth/docqa-ko.yaml --output runs/synth/qa.jsonl
    tunelab data synth docs/ --config synth.yaml --output qa.jsonl --teacher openai:my-model --allow-remote

Stages (each teacher stage goes through the reply cache, so a rerun resumes for free):
1. read and chunk the documents (`documents.py`, `chunking.py`);
2. ask the teacher for `questions.per_chunk` questions per chunk; parse; drop what is not a
   question, too short or long, in the wrong language, or a duplicate (before paying for answers);
3. ask for an answer to each question from its chunk only; drop unparsable answers, refusals,
   wrong lengths or language, answers that only repeat the question, and answers the chunk does
   not support;
4. pair a share of the kept questions with unrelated chunks (from another document where one
   exists, sharing few content words with the question) and the refusal as the answer;
5. write OUTPUT (JSONL, atomic), OUTPUT-stem.report.json (counts per filter, rates, timings) and
   OUTPUT-stem.dropped.jsonl (every dropped item with its reason, for a look).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.io_atomic import write_json_atomic, write_jsonl_atomic
from tunelab.errors import TunelabError
from tunelab.synth.cache import ReplyCache, cache_key
from tunelab.synth.chunking import Chunk, chunk_text
from tunelab.synth.constrained import Answer, QuestionList
from tunelab.synth.documents import find_documents, read_document
from tunelab.synth.filters import (
    duplicate_reasons,
    is_refusal,
    new_in_answer,
    parse_answer,
    parse_questions,
    relevance,
    script_ok,
    shared_share,
    support,
)
from tunelab.synth.prompts import SynthConfig, answer_messages, load_synth_config, question_messages
from tunelab.synth.teachers import build_teacher

ROW_KEYS = ("question", "context", "answer", "lang", "answerable", "source", "chunk", "teacher", "prompt_version")


@dataclass
class Item:
    question: str
    chunk: Chunk
    answer: str | None = None


def side_paths(output: Path) -> dict[str, Path]:
    """Files written next to OUTPUT."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return {"report": output.with_name(f"{stem}.report.json"), "dropped": output.with_name(f"{stem}.dropped.jsonl"),
            "cache": output.with_name(f"{stem}.synth-cache.sqlite")}  # fmt: skip


def interleave(per_doc: list[list[Chunk]], limit: int | None) -> list[Chunk]:
    """All chunks, or `limit` of them taken round-robin so every document contributes (in
    document order).

    >>> a, b = [Chunk("a", i, "x") for i in range(3)], [Chunk("b", 0, "y")]
    >>> [(c.source, c.index) for c in interleave([a, b], 3)]
    [('a', 0), ('a', 1), ('b', 0)]
    """
    if limit is None:
        return [c for chunks in per_doc for c in chunks]
    picked: list[tuple[int, int]] = []  # (document, rank)
    for rank in range(max((len(c) for c in per_doc), default=0)):
        picked += [(d, rank) for d, chunks in enumerate(per_doc) if rank < len(chunks)]
    return [per_doc[d][rank] for d, rank in sorted(picked[:limit])]


def run_requests(teacher, requests: list[list[dict]], cache: ReplyCache, prompt_version: str, desc: str,
                 progress: bool = True, constraint=None) -> tuple[list[str], int]:  # fmt: skip
    """Replies for `requests`, from the cache or the teacher (stored as they arrive); returns
    (replies, how many were cached). `constraint` (`synth.constrained`) is the shape a local
    teacher that constrains its decoding keeps the replies in; it is then part of the cache key."""
    from tunelab.progress import progress_bar

    if not getattr(teacher, "constrains", False):
        constraint = None  # endpoints (and `teacher.constrained: false`) generate freely
    params = {**teacher.params, "constraint": constraint.key} if constraint is not None else teacher.params
    keys = [cache_key(teacher.id, prompt_version, m, params) for m in requests]
    replies: list[str | None] = [cache.get(k) for k in keys]
    todo = [i for i, r in enumerate(replies) if r is None]
    hits = len(requests) - len(todo)
    if todo and teacher.kind == "local":
        teacher.load()  # before the bar starts, so its rate is generation only
    bar = progress_bar(total=len(requests), initial=hits, desc=desc, unit="req", disable=not progress)

    def done(i: int, text: str) -> None:
        replies[i] = text
        cache.put(keys[i], text, teacher=teacher.id, prompt_version=prompt_version)
        bar.update(1)

    try:
        if teacher.kind == "local":
            # prompts of similar length share a batch: less padding
            todo.sort(key=lambda i: sum(len(m["content"]) for m in requests[i]))
            size = teacher.cfg.batch_size
            for start in range(0, len(todo), size):
                idx = todo[start:start + size]
                batch = [requests[i] for i in idx]
                replies_now = teacher.generate(batch, constraint) if constraint is not None else teacher.generate(batch)
                for i, text in zip(idx, replies_now):
                    done(i, text)
        elif todo:
            with ThreadPoolExecutor(max_workers=teacher.cfg.concurrency) as pool:
                futures = {pool.submit(teacher.complete, requests[i]): i for i in todo}
                try:
                    for fut in as_completed(futures):
                        done(futures[fut], fut.result())
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    return [r or "" for r in replies], hits


def _row(item: Item, context: Chunk, answer: str, answerable: bool, cfg: SynthConfig, teacher_id: str) -> dict:
    return {"question": item.question, "context": context.text, "answer": answer, "lang": cfg.lang,
            "answerable": answerable, "source": context.source, "chunk": context.index, "teacher": teacher_id,
            "prompt_version": cfg.prompt_version}  # fmt: skip


def unrelated_chunk(question: str, own: Chunk, chunks: list[Chunk], rng: random.Random, max_overlap: float,
                    tries: int = 64) -> Chunk | None:  # fmt: skip
    """A chunk that does not answer `question`: from another document when there is one (else
    another chunk of the same one), the one sharing the fewest content words with the question
    among `tries` random candidates; None if even that one shares more than `max_overlap`."""
    others = [c for c in chunks if c.source != own.source] or [c for c in chunks if c.index != own.index]
    if not others:
        return None
    candidates = rng.sample(others, min(tries, len(others)))
    best = min(candidates, key=lambda c: shared_share(question, c.text))
    return best if shared_share(question, best.text) <= max_overlap else None


@dataclass
class _Corpus:
    """The documents read and the chunks taken from them."""

    docs: list
    empty: list[str]  # sources without text (skipped)
    per_doc: list[list[Chunk]]  # chunks of each document that has any
    chunks: list[Chunk]  # the chunks questions are asked about


@dataclass
class _Drops:
    """Every dropped item: a count per reason and one row each for OUTPUT-stem.dropped.jsonl."""

    counts: Counter = field(default_factory=Counter)
    rows: list[dict] = field(default_factory=list)

    def __call__(self, reason: str, item: Item | None = None, chunk: Chunk | None = None, text: str = "",
                 answer=None) -> None:  # fmt: skip
        """Record one drop: of a question item, or of reply `text` about `chunk`."""
        self.counts[reason] += 1
        c = item.chunk if item else chunk
        self.rows.append({"reason": reason, "question": item.question if item else text, "answer": answer,
                          "source": c.source, "chunk": c.index})  # fmt: skip


@dataclass
class _Asked:
    """What a teacher stage gave: the items kept, the replies served from the cache, and its seconds."""

    items: list[Item]
    hits: int
    seconds: float
    parsed: int = 0  # questions found in the replies (question stage only)


def synthesize(inputs: list[str], cfg: SynthConfig, output: str | Path, *, allow_remote: bool = False,
               teacher=None, cache_path: str | Path | None = None, max_chunks: int | None = None,
               progress: bool = True, log=print) -> dict:  # fmt: skip
    """Run the whole pipeline; returns the report (also written next to OUTPUT)."""
    t0 = time.perf_counter()
    output = Path(output)
    paths = side_paths(output)
    corpus = _read_chunks(inputs, cfg, max_chunks, log)
    teacher = teacher or build_teacher(cfg.teacher, allow_remote=allow_remote)
    _announce_remote(teacher, corpus, cfg, log)
    cache = ReplyCache(cache_path or paths["cache"])
    drop = _Drops()
    try:
        questions = _ask_questions(teacher, corpus.chunks, cfg, cache, drop, progress)
        answers = _ask_answers(teacher, questions.items, cfg, cache, drop, progress)
    finally:
        cache.close()
    unanswerable = _unanswerable_rows(answers.items, corpus.chunks, cfg, teacher.id, drop)
    rows = [_row(it, it.chunk, it.answer, True, cfg, teacher.id) for it in answers.items] + unanswerable
    write_jsonl_atomic(output, rows)
    write_jsonl_atomic(paths["dropped"], drop.rows)
    report = _report(inputs, output, cfg, teacher, corpus, questions, answers, len(unanswerable), drop, t0)
    write_json_atomic(paths["report"], report)
    return report


def _read_chunks(inputs: list[str], cfg: SynthConfig, max_chunks: int | None, log) -> _Corpus:
    """Read and chunk the documents (noting those without text); stops when no chunk is left to ask about."""
    docs = [read_document(p) for p in find_documents(inputs)]
    empty = [d.source for d in docs if not d.text.strip()]
    for source in empty:
        log(f"note: {source} has no text (a scanned PDF needs OCR first); skipped")
    per_doc = [chunk_text(d.text, d.source, cfg.chunking.max_chars, cfg.chunking.overlap, cfg.chunking.min_chars)
               for d in docs if d.text.strip()]  # fmt: skip
    per_doc = [c for c in per_doc if c]
    chunks = interleave(per_doc, max_chunks)
    if not chunks:
        raise TunelabError(f"{', '.join(map(str, inputs))}: no chunk of at least {cfg.chunking.min_chars} characters "
                           "to write questions about")  # fmt: skip
    return _Corpus(docs, empty, per_doc, chunks)


def _announce_remote(teacher, corpus: _Corpus, cfg: SynthConfig, log) -> None:
    """Say what a remote teacher will be sent, before anything is sent."""
    if teacher.kind == "local":
        return
    chunks = corpus.chunks
    chars = sum(len(c.text) for c in chunks)
    log(f"remote teacher: sending {len(chunks)} chunks ({chars:,} characters of document text, from "
        f"{len(corpus.per_doc)} documents) to {teacher.host} ({teacher.url}, model {teacher.cfg.model}): "
        f"{len(chunks)} question requests, then up to {len(chunks) * cfg.questions.per_chunk} answer "
        "requests, each carrying its chunk; replies already cached are not sent again")  # fmt: skip


def _ask_questions(teacher, chunks: list[Chunk], cfg: SynthConfig, cache: ReplyCache, drop: _Drops,
                   progress: bool) -> _Asked:  # fmt: skip
    """Ask for questions about every chunk and keep the well-formed, distinct ones (before paying for answers)."""
    t1 = time.perf_counter()
    shape = QuestionList(cfg.questions.per_chunk, cfg.lang, cfg.filters.min_question_chars, cfg.filters.max_question_chars)
    replies, hits = run_requests(teacher, [question_messages(cfg, c.text) for c in chunks], cache,
                                 cfg.prompt_version, "questions", progress, constraint=shape)  # fmt: skip
    seconds = time.perf_counter() - t1
    items, parsed = _parse_questions(chunks, replies, cfg, drop)
    return _Asked(_drop_duplicates(items, cfg, drop), hits, seconds, parsed)


def _parse_questions(chunks: list[Chunk], replies: list[str], cfg: SynthConfig, drop: _Drops) -> tuple[list[Item], int]:
    """Questions from each reply (up to `per_chunk`, right length and language), and how many were found."""
    f = cfg.filters
    items: list[Item] = []
    parsed = 0  # questions found in the replies (listed statements are dropped as not_a_question)
    for chunk, reply in zip(chunks, replies):
        rejected: list[str] = []
        questions = parse_questions(reply, cfg.lang, rejected)
        parsed += len(questions)
        for text in rejected:
            drop("not_a_question", chunk=chunk, text=text)
        if not questions:
            if not rejected:
                drop("unparsable_reply", chunk=chunk, text=reply[:300])
            continue
        for text in questions[cfg.questions.per_chunk:]:
            drop("beyond_per_chunk", chunk=chunk, text=text)
        for text in questions[: cfg.questions.per_chunk]:
            item = Item(text, chunk)
            if not f.min_question_chars <= len(text) <= f.max_question_chars:
                drop("question_length", item)
            elif not script_ok(text, cfg.lang, f.min_script_share):
                drop("question_language", item)
            else:
                items.append(item)
    return items, parsed


def _drop_duplicates(items: list[Item], cfg: SynthConfig, drop: _Drops) -> list[Item]:
    """The items whose question does not repeat (or nearly repeat) an earlier one."""
    reasons = duplicate_reasons([it.question for it in items], cfg.filters.near_dup_threshold)
    for item, reason in zip(items, reasons):
        if reason:
            drop(reason, item)
    return [it for it, reason in zip(items, reasons) if not reason]


def _ask_answers(teacher, items: list[Item], cfg: SynthConfig, cache: ReplyCache, drop: _Drops,
                 progress: bool) -> _Asked:  # fmt: skip
    """Ask for an answer to each question from its chunk only, and keep the items whose answer passes the filters."""
    t2 = time.perf_counter()
    replies, hits = run_requests(teacher, [answer_messages(cfg, it.chunk.text, it.question) for it in items],
                                 cache, cfg.prompt_version, "answers", progress,
                                 constraint=Answer(cfg.filters.max_answer_chars))  # fmt: skip
    seconds = time.perf_counter() - t2
    kept: list[Item] = []
    for item, reply in zip(items, replies):
        answer = parse_answer(reply)
        if answer is None:
            drop("answer_unparsable", item, answer=reply[:300])
        elif (reason := _answer_problem(answer, item, cfg)):
            drop(reason, item, answer=answer)
        else:
            item.answer = answer
            kept.append(item)
    return _Asked(kept, hits, seconds)


def _answer_problem(answer: str, item: Item, cfg: SynthConfig) -> str | None:
    """Why a parsed answer is dropped (the first filter it fails), or None to keep it."""
    f = cfg.filters
    if is_refusal(answer, cfg.refusal_text):
        return "answer_refused"
    if not f.min_answer_chars <= len(answer) <= f.max_answer_chars:
        return "answer_length"
    if not script_ok(answer, cfg.lang, f.min_script_share, min_letters=8):
        return "answer_language"
    if not new_in_answer(answer, item.question):
        return "answer_repeats_question"
    if support(answer, item.chunk.text, item.question) < f.min_support:
        return "answer_unsupported"
    if f.min_relevance and relevance(item.question, answer, item.chunk.text, f.min_support) < f.min_relevance:
        return "answer_off_question"
    return None


def _unanswerable_rows(kept: list[Item], chunks: list[Chunk], cfg: SynthConfig, teacher_id: str,
                       drop: _Drops) -> list[dict]:  # fmt: skip
    """Rows pairing a share of the kept questions with an unrelated chunk and the refusal as the answer."""
    rng = random.Random(cfg.seed)
    wanted = round(cfg.unanswerable.share * len(kept))
    unanswerable = []
    for item in rng.sample(kept, wanted):
        other = unrelated_chunk(item.question, item.chunk, chunks, rng, cfg.unanswerable.max_overlap)
        if other is None:
            drop("unanswerable_no_unrelated_chunk", item)
            continue
        unanswerable.append(_row(item, other, cfg.refusal_text, False, cfg, teacher_id))
    return unanswerable


def _report(inputs: list[str], output: Path, cfg: SynthConfig, teacher, corpus: _Corpus, questions: _Asked,
            answers: _Asked, n_unanswerable: int, drop: _Drops, t0: float) -> dict:  # fmt: skip
    """The run's report: counts per stage and filter, pass rate, teacher requests, timings and rates."""
    chunks, items, kept, parsed = corpus.chunks, questions.items, answers.items, questions.parsed
    q_seconds, a_seconds = questions.seconds, answers.seconds
    fresh_q, fresh_a = len(chunks) - questions.hits, len(items) - answers.hits
    return {
        "inputs": [str(p) for p in inputs], "output": str(output), "documents": len(corpus.docs),
        "documents_without_text": corpus.empty, "chunks": len(chunks), "teacher": teacher.id,
        "prompt_version": cfg.prompt_version, "lang": cfg.lang,
        "questions": {"asked": len(chunks) * cfg.questions.per_chunk, "parsed": parsed,
                      "answered": len(items), "kept": len(kept)},
        "dropped": dict(drop.counts),
        "rows": {"answerable": len(kept), "unanswerable": n_unanswerable, "total": len(kept) + n_unanswerable},
        # the share of the questions asked for that became answerable rows
        "pass_rate": round(len(kept) / (len(chunks) * cfg.questions.per_chunk), 4),
        "teacher_requests": {"questions": len(chunks), "answers": len(items),
                             "from_cache": questions.hits + answers.hits,
                             "http": getattr(teacher, "requests", None), "retried": getattr(teacher, "retried", None),
                             "prompts_truncated": getattr(teacher, "truncated", None)},
        "seconds": {"questions": round(q_seconds, 2), "answers": round(a_seconds, 2),
                    "total": round(time.perf_counter() - t0, 2)},
        # rates over freshly generated replies only; None when everything came from the cache
        "questions_per_minute": round(parsed / q_seconds * 60, 2) if fresh_q == len(chunks) and q_seconds else None,
        "rows_per_minute": round(len(kept) / (q_seconds + a_seconds) * 60, 2)
        if fresh_q == len(chunks) and fresh_a == len(items) and q_seconds + a_seconds else None,
    }  # fmt: skip


def render_report(report: dict) -> str:
    """The report as a short table."""
    q, r, t = report["questions"], report["rows"], report["teacher_requests"]
    lines = [("documents", f"{report['documents']}"), ("chunks", f"{report['chunks']}"),
             ("teacher", report["teacher"]), ("questions asked", f"{q['asked']}"),
             ("questions found", f"{q['parsed']}")]  # fmt: skip
    lines += [(f"dropped: {k}", f"{v}") for k, v in report["dropped"].items()]
    lines += [("kept (answerable)", f"{r['answerable']}  ({report['pass_rate']:.0%} of the questions asked)"),
              ("unanswerable (refusal)", f"{r['unanswerable']}"), ("rows written", f"{r['total']}"),
              ("teacher requests", f"{t['questions'] + t['answers']} ({t['from_cache']} from cache"
                                   + (f", {t['http']} HTTP, {t['retried']} retried" if t["http"] is not None else "")
                                   + ")"),
              ("time", f"{report['seconds']['total']:.1f} s (questions {report['seconds']['questions']:.1f} s, "
                       f"answers {report['seconds']['answers']:.1f} s)")]  # fmt: skip
    if report["questions_per_minute"] is not None:
        lines.append(("questions per minute", f"{report['questions_per_minute']:.1f}"))
    if report["rows_per_minute"] is not None:
        lines.append(("kept rows per minute", f"{report['rows_per_minute']:.1f} (questions and answers)"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in lines)


def synth_command(inputs: list[str], config: str, output: str, overrides: list[str] | None = None,
                  teacher: str | None = None, allow_remote: bool = False, max_chunks: int | None = None,
                  cache: str | None = None) -> int:  # fmt: skip
    """The CLI: load the config, apply --teacher, run, print the table."""
    from tunelab.data.outputs import check_output

    check_output(output, inputs=[*inputs, config, cache])
    cfg = load_synth_config(config, overrides)
    if teacher:
        if teacher.startswith("openai:"):
            cfg.teacher = cfg.teacher.model_copy(update={"kind": "openai", "model": teacher.removeprefix("openai:")})
        else:
            cfg.teacher = cfg.teacher.model_copy(update={"kind": "local", "model": teacher})
    if cfg.teacher.kind == "openai" and not cfg.teacher.model:
        raise TunelabError("--teacher openai:MODEL needs the model name after 'openai:'")
    report = synthesize(inputs, cfg, output, allow_remote=allow_remote, cache_path=cache, max_chunks=max_chunks)
    paths = side_paths(Path(output))
    print(f"tunelab data synth ({cfg.lang}, {cfg.prompt_version})\n{render_report(report)}")
    print(f"wrote {output}\nwrote {paths['report']}\nwrote {paths['dropped']}")
    return 0
