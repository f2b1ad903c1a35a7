"""Constrained decoding for the local teacher: replies that always parse.

    spec = QuestionList(n=3, lang="ko", min_chars=8, max_chars=200)   # or Answer(max_chars=400)
    vocab = Vocabulary(tokenizer, logits_width, eos_ids)              # once per model
    model.generate(..., logits_processor=LogitsProcessorList([StructureProcessor(spec, vocab, batch, max_new)]))

A small model asked for "3 questions as a numbered list" may copy the passage's sentences, run
on past the list, or stop in the middle of an item; `filters.parse_questions` then finds
nothing. A `transformers` LogitsProcessor masks, at every step and for every row of the batch,
the tokens that would break the shape the parsers in `filters.py` read:

questions  ``1.<item>?`` ``\\n2.<item>?`` ... then end-of-sequence. The numbers, the dots and the
           line breaks are forced; inside an item the model writes freely, except a line break,
           a question mark (only as the item's last character), brackets, braces and backticks
           (they would make the reply look like JSON or a code fence to the parser), and no run
           of more than `max_copy` tokens taken from the prompt. The "?" is allowed only after
           `min_chars` characters. Each item gets its share of `max_new_tokens` (what an earlier
           item leaves over goes to the later ones); at the end of its share, or at
           `max_chars`, only "?" is allowed. So the list is complete, and every line a
           question, when the budget runs out.
Korean     a 0.5B teacher hands back the chunk's sentences as its "questions" (measured:
           5 of 5 on the demo document), and when one rule stops it, it finds a way around
           (dropped digits, runs of blanks, "...한다거나", Chinese or Persian characters). So a
           Korean item has to ask from its first token: it starts with a question word (몇,
           얼마, 언제, 어디, 누구, 무엇, 어떤, 어떻게, 어느, 무슨: "언제까지 연차휴가를 신청해야
           하나요?"), which a copied statement never does; the "?" comes only after an
           interrogative ending (-까, -나요, -가요, -죠, -니, ... as `filters.looks_like_question`
           reads them); one clause (no "다." or "며,", no word ending in -다 inside); Hangul and
           ASCII only (for byte-level vocabularies, parts of characters only of Hangul
           syllables). Each rule yields when it would leave no token at all (a tiny vocabulary
           without question words). The cost: topic-first questions ("재택근무는 주 몇 회까지
           ...?") and yes/no questions are not written.
answer     one line without backticks; end-of-sequence only once `filters.parse_answer` accepts
           the text, and forced on the last step (the step before it admits only tokens after
           which the text parses).

Tokens are classified once per tokenizer from their decoded text (`Vocabulary`, ~3 s for
Qwen's 151k tokens); the forbidden characters are ASCII or Unicode line separators, so a token
holding part of a multi-byte character (decoded alone as U+FFFD) is free text. The three
multi-byte line separators (U+0085, U+2028, U+2029) can only arise from several such tokens;
`clean_reply` turns them into spaces.

Why not a library: the candidates on PyPI were looked at. lm-format-enforcer 0.11.3
is small and pure Python (interegular, pydantic, pyyaml) and enforces a regex, but a regex bounds
characters, not tokens: it cannot close an item within a token budget, so a reply cut by
max_new_tokens still fails to parse; transformers-cfg 0.2.7 (EBNF) brings sentencepiece,
protobuf and termcolor; xgrammar 0.2.8 brings apache-tvm-ffi and triton; outlines 1.3.3 brings
outlines-core (Rust), jsonschema, pillow, diskcache and more. None of them knows the Korean
interrogative ending or `parse_answer`'s acceptance, both of which matter here, and the grammar
is three lines; so it is written here (one file, no dependency, tested on tiny random models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunelab.synth.filters import looks_like_question, parse_answer

if TYPE_CHECKING:
    import torch

# characters where str.splitlines() breaks a line: one inside an item would split it
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_QUESTION_BANNED = frozenset(LINE_BREAKS + "?？[]{}`")
_ANSWER_BANNED = frozenset(LINE_BREAKS + "`")
_Q_END = re.compile("([^" + re.escape("".join(sorted(_QUESTION_BANNED))) + "]*)[?？](\n?)", re.DOTALL)
_BYTE_PIECE = re.compile("<0x[0-9A-Fa-f]{2}>")
_MULTIBYTE_BREAKS = str.maketrans({"\x85": " ", "\u2028": " ", "\u2029": " "})
_MIN_BODY = 6  # tokens an item should have room for when deciding how many items fit
_CHECK_TOP = 32  # candidates tried one by one on the answer's last free step
_CLAUSE_MARK = ".,。，、"
_HANGUL_THEN_MARK = re.compile(f"[\uac00-\ud7a3][{_CLAUSE_MARK}]")
_HANGUL_LAST = re.compile("[\uac00-\ud7a3]$")
_HANGUL_FIRST = re.compile("[\uac00-\ud7a3]")
# Korean question words: an item starts with one (and, should that rule yield, holds no digit
# before one: the facts are what a question asks for, not what it states)
_KO_WH_WORDS = ("몇", "며칠", "얼마", "언제", "어디", "누구", "누가", "무엇", "무슨", "어떤", "어떻게", "어느")
_KO_WH = re.compile("|".join(_KO_WH_WORDS))
# what a Korean item may be written in: Hangul, ASCII (OTP, VPN, 10%), and parts of characters
_KO_CHAR = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\x20-\x7e\ufffd·~]")
_END_BEFORE = " )\"'”’」』"  # what an end token may hold before its "?" (not "<?", "=?")


@dataclass(frozen=True)
class QuestionList:
    """A numbered list of `n` questions, each of `min_chars`..`max_chars` characters."""

    n: int
    lang: str = "en"
    min_chars: int = 8
    max_chars: int = 200
    max_copy: int = 14  # most tokens in a row an item may copy from the prompt (0: no limit)

    @property
    def key(self) -> str:
        """Part of the reply-cache key: a changed constraint never serves stale replies."""
        return f"questions-v5:{self.n}:{self.lang}:{self.min_chars}:{self.max_chars}:{self.max_copy}"


@dataclass(frozen=True)
class Answer:
    """One line that `parse_answer` accepts, ended by the model (or at the budget)."""

    max_chars: int = 400

    @property
    def key(self) -> str:
        return f"answer-v1:{self.max_chars}"


def clean_reply(text: str) -> str:
    """The decoded reply with multi-byte line separators made spaces (see the module docstring).

    >>> clean_reply("1. a\\u2028b?")
    '1. a b?'
    """
    return text.translate(_MULTIBYTE_BREAKS)


class Vocabulary:
    """What each token may be used for, from its decoded text; built once per tokenizer."""

    def __init__(self, tokenizer, width: int, eos_ids: list[int]):
        import torch

        self.tok = tokenizer
        self.width = width  # logits width; may exceed len(tokenizer) (padded embeddings)
        self.eos = [int(i) for i in eos_ids]
        n = min(len(tokenizer), width)
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)  # fmt: skip
        special = set(getattr(tokenizer, "added_tokens_decoder", {})) | set(tokenizer.all_special_ids)
        self.texts = texts
        self.question_end: dict[int, tuple[str, bool]] = {}  # id -> (text before the "?", ends with "\n")
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        question_body, answer_body, alnum, breaker = [], [], [], []
        for i, (text, piece) in enumerate(zip(texts, pieces)):
            if i in special or not text:
                continue
            chars = set(text)
            if not chars & _ANSWER_BANNED:
                answer_body.append(i)
                if any(c.isalnum() for c in text):
                    alnum.append(i)
            if not chars & _QUESTION_BANNED:
                question_body.append(i)
                # a whole token: no part of a character, no byte-fallback byte (which joins a run
                # of bytes decoded as a whole, and replaced as a whole when it is not valid UTF-8)
                if "\ufffd" not in text and not (isinstance(piece, str) and _BYTE_PIECE.fullmatch(piece)):
                    breaker.append(i)
            elif (m := _Q_END.fullmatch(text)) and not m.group(1).strip(_END_BEFORE):
                self.question_end[i] = (m.group(1), bool(m.group(2)))

        def mask(ids: list[int]) -> torch.Tensor:
            out = torch.zeros(width, dtype=torch.bool)
            out[ids] = True
            return out

        self.question_body, self.answer_body = mask(question_body), mask(answer_body)
        self.alnum, self.breaker = mask(alnum), mask(breaker)
        # Korean clause ends ("...한다.", "...되며,"): a token holding one, or starting with the mark
        self.clause_end = mask([i for i in question_body if _HANGUL_THEN_MARK.search(texts[i])])
        body_texts = [(i, texts[i]) for i in question_body]
        self.space_first = mask([i for i, t in body_texts if t[:1].isspace()])
        self.spaces = mask([i for i, t in body_texts if re.search(r"\s\s", t)])
        self.word_end = mask([i for i, t in body_texts if not _HANGUL_FIRST.match(t)])
        # Korean items start with their question word (몇 회까지 ..., 언제까지 ...): a copied
        # statement never does; tokens that begin one, or are one and go on
        whole = set(breaker)
        self.wh_first = mask([i for i, t in body_texts if i in whole and _wh_consistent(t.strip())])
        self.byte_bytes = _byte_level_bytes(tokenizer, pieces)
        self.korean = mask([i for i, t in body_texts if all(_KO_CHAR.fullmatch(c) for c in t)
                            and (i not in self.byte_bytes or _hangul_part(self.byte_bytes[i]))])
        self.digits = mask([i for i in question_body if any(c.isdigit() for c in texts[i])])
        self.mark_first = mask([i for i in question_body if texts[i].lstrip(" ")[:1] in _CLAUSE_MARK and texts[i].strip()])
        if not self.question_end:
            raise ValueError("the tokenizer has no token ending in '?'")
        self.end_ids = torch.tensor(sorted(self.question_end))
        self._literals: dict[str, list[int]] = {}

    def literal(self, text: str) -> list[int]:
        """The tokens of a fixed piece of the reply ("1.", "\\n2.")."""
        if text not in self._literals:
            self._literals[text] = self.tok.encode(text, add_special_tokens=False)
        return self._literals[text]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) if ids else ""


def _wh_consistent(text: str) -> bool:
    """`text` is the start of a question word, or starts with one.

    >>> _wh_consistent("얼"), _wh_consistent("언제까지"), _wh_consistent("재택")
    (True, True, False)
    """
    return bool(text) and any(w.startswith(text) or text.startswith(w) for w in _KO_WH_WORDS)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from bytes to the printable characters byte-level BPE pieces are spelt in."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_bytes(tokenizer, pieces: list) -> dict[int, bytes]:
    """The raw bytes of the tokens that hold part of a character, for byte-level BPE
    vocabularies (GPT-2, Qwen); {} for others."""
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    out = {}
    for i, piece in enumerate(pieces):
        if isinstance(piece, str) and piece and all(c in decoder for c in piece):
            raw = bytes(decoder[c] for c in piece)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                out[i] = raw
    return out


def _hangul_part(raw: bytes) -> bool:
    """Bytes that can only be part of Hangul syllables (lead bytes EA-ED), ASCII, or
    continuation bytes.

    >>> _hangul_part("며".encode()[:2]), _hangul_part("۱".encode()[:1])
    (True, False)
    """
    return all(b < 0x80 or 0x80 <= b <= 0xBF or 0xEA <= b <= 0xED for b in raw)


class _Questions:
    """The state of one row writing a numbered list of questions."""

    def __init__(self, spec: QuestionList, vocab: Vocabulary, budget: int):
        self.spec, self.v = spec, vocab
        first = vocab.literal("1.")
        seps = [vocab.literal(f"\n{k}.") for k in range(2, spec.n + 1)]
        n = spec.n
        while n > 1 and len(first) + sum(len(s) for s in seps[: n - 1]) + n * (_MIN_BODY + 2) + 1 > budget:
            n -= 1  # fewer, complete items rather than many cut ones
        self.n = n
        self.pending = list(first)  # forced tokens still to come
        self.done = 0  # items closed
        self.item: list[int] = []  # tokens of the open item
        self.item_budget = 0
        self.finished = False
        self.copy_next: dict[tuple, set[int]] = {}  # (max_copy - 1) prompt tokens -> the tokens after them

    def set_prompt(self, ids: list[int]) -> None:
        """Remember the prompt's runs of tokens, so that an item cannot copy more than `max_copy`."""
        k = self.spec.max_copy
        if k:
            for i in range(len(ids) - k):
                self.copy_next.setdefault(tuple(ids[i:i + k]), set()).add(ids[i + k])

    def _seps_after(self, k: int) -> int:
        """Tokens of the separators before items k+1 .. n (k 0-based, the open item)."""
        return sum(len(self.v.literal(f"\n{j}.")) for j in range(k + 2, self.n + 1))

    def feed(self, token: int) -> None:
        if self.finished:
            return
        if self.pending:
            self.pending.pop(0)
        elif self.done == self.n:
            self.finished = True  # the end-of-sequence
        elif token in self.v.question_end and self._visible_end(token) is not None:
            self.done += 1
            self.item = []
            if self.done < self.n:
                newline = self.v.question_end[token][1]
                self.pending = list(self.v.literal(f"{self.done + 1}." if newline else f"\n{self.done + 1}."))
        else:
            self.item.append(token)

    def _visible_end(self, token: int) -> str | None:
        """The item's text before its "?" if `token` ends it with a "?" that shows in the decoded
        text (a byte-fallback "?" right after an incomplete character is decoded as U+FFFD)."""
        text = self.v.decode([*self.item, token]).rstrip("\n")
        return text[:-1] if text.endswith(("?", "？")) else None

    def allowed(self, left: int, scores: torch.Tensor, mask: torch.Tensor) -> None:
        """Set `mask` (one row) to the tokens allowed now, with `left` tokens of budget."""
        import torch

        v = self.v
        if self.finished or (not self.pending and self.done == self.n):
            mask[v.eos] = True
            return
        if self.pending:
            mask[self.pending[0]] = True
            return
        if not self.item:  # a new item: its share of what is left ("?" and one spare token each)
            items_left = self.n - self.done
            self.item_budget = (left - 1 - self._seps_after(self.done) - 2 * items_left) // items_left
        ends = {t: self._visible_end(t) for t in v.question_end}
        ends = {t: before for t, before in ends.items() if before is not None}
        text = " ".join(v.decode(self.item).split())
        if len(self.item) >= self.item_budget or len(text) >= self.spec.max_chars:  # close the item now
            if ends:
                mask[list(ends)] = True
            else:  # mid-character (byte fallback): one whole token first, then the "?" shows
                mask |= v.breaker
            return
        free = (v.question_body if self.item else v.breaker).clone()  # a whole first token: "k." stays "k."

        def narrow(keep: torch.Tensor) -> None:  # a rule applies unless it would leave nothing
            if bool((free & keep).any()):
                free.logical_and_(keep)

        raw = v.decode(self.item)
        narrow(~v.spaces)  # no runs of blanks (a way around every rule below)
        if raw[-1:].isspace():
            narrow(~v.space_first)
        if self.spec.lang == "ko":
            narrow(v.korean)  # Hangul and ASCII only
            if not _KO_WH.search(text):  # the question word first
                if not text:
                    narrow(v.wh_first)
                else:
                    keep = free.clone()
                    for i in free.nonzero().flatten().tolist():
                        if not _wh_consistent(text + v.texts[i].rstrip()):
                            keep[i] = False
                    narrow(keep)
                narrow(~v.digits)
            narrow(~v.clause_end)  # one clause: no "다." or "며," inside
            if _HANGUL_LAST.search(text):
                narrow(~v.mark_first)
            if text.endswith("다"):  # a declarative verb ending: the word must go on (다음, 다른)
                narrow(~v.word_end)
        k = self.spec.max_copy
        if k and len(self.item) >= k:
            copied = self.copy_next.get(tuple(self.item[-k:]))
            if copied:
                keep = torch.ones_like(free)
                keep[list(copied)] = False
                narrow(keep)
        mask |= free
        for tid, before in ends.items():
            if self._can_end(before):
                mask[tid] = True

    def _can_end(self, text: str) -> bool:
        text = " ".join(text.split())
        if len(text) < self.spec.min_chars or not any(c.isalnum() for c in text):
            return False
        return self.spec.lang != "ko" or (looks_like_question(text, "ko") and bool(_KO_WH.search(text)))


class _Answer:
    """The state of one row writing a one-line answer."""

    def __init__(self, spec: Answer, vocab: Vocabulary):
        self.spec, self.v = spec, vocab
        self.tokens: list[int] = []
        self.finished = False

    def feed(self, token: int) -> None:
        if token in self.v.eos:
            self.finished = True
        elif not self.finished:
            self.tokens.append(token)

    def allowed(self, left: int, scores: torch.Tensor, mask: torch.Tensor) -> None:
        import torch

        v = self.v
        text = v.decode(self.tokens)
        ok = parse_answer(text) is not None
        if self.finished or left <= 1 or (ok and len(text.strip()) >= self.spec.max_chars):
            mask[v.eos] = True
            return
        if ok:
            mask[v.eos] = True
        if left > 2:
            mask |= v.answer_body
            return
        # the last free token: only one after which the text still parses
        ranked = torch.where(v.answer_body.to(scores.device), scores, torch.finfo(scores.dtype).min)
        top = torch.topk(ranked, min(_CHECK_TOP, int(v.answer_body.sum()))).indices.tolist()
        good = [t for t in top if parse_answer(v.decode([*self.tokens, t])) is not None]
        if good:
            mask[good] = True
        elif not ok:
            mask |= v.answer_body & v.alnum


class StructureProcessor:
    """Masks the scores of every row to the tokens its structure allows (see the module docstring).
    A logits processor for `generate(logits_processor=LogitsProcessorList([...]))`: transformers
    calls it with (input_ids, scores) at every step, before temperature and top-p, so sampling
    only ever picks among the allowed tokens. (Not a `LogitsProcessor` subclass only so that this
    module imports without torch.)"""

    def __init__(self, spec: QuestionList | Answer, vocab: Vocabulary, batch_size: int, max_new_tokens: int):
        self.vocab = vocab
        self.max_new = max_new_tokens
        if isinstance(spec, QuestionList):
            self.rows = [_Questions(spec, vocab, max_new_tokens) for _ in range(batch_size)]
        else:
            self.rows = [_Answer(spec, vocab) for _ in range(batch_size)]
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import torch

        if self.start is None:
            if scores.shape[-1] != self.vocab.width:
                raise ValueError(f"scores have {scores.shape[-1]} columns, the vocabulary {self.vocab.width}")
            self.start = input_ids.shape[1]
            if isinstance(self.rows[0], _Questions):
                for row, ids in zip(self.rows, input_ids.tolist()):
                    row.set_prompt(ids)
        else:
            for row, token in zip(self.rows, input_ids[:, -1].tolist()):
                row.feed(token)
        left = self.max_new - (input_ids.shape[1] - self.start)  # tokens still to generate, this one included
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        for i, row in enumerate(self.rows):
            row.allowed(left, scores[i], mask[i])
        return scores.masked_fill(~mask.to(scores.device), float("-inf"))
