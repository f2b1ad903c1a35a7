"""Split a document into chunks a teacher can write questions about.

    chunks = chunk_text(doc.text, doc.source, max_chars=1200, overlap=150, min_chars=80)

A document is cut into blocks: markdown headings (`# ...`) and paragraphs (separated by blank
lines). Blocks are packed greedily into chunks of at most `max_chars` characters; a paragraph
longer than that is cut at sentence ends (`.`, `?`, `!`, also after Korean `다.`/`요.`), and a
sentence longer than that at a space. A heading starts a new chunk when the current one is at
least half full, so sections stay together without leaving tiny chunks. Each chunk starts with
the headings it falls under (without `#` marks, joined with " > ": "Travel Policy > Lodging"),
so a question about "the deductible" knows which policy it is in. Consecutive chunks of one section share up to `overlap` characters (whole
sentences from the end of the previous chunk), so a fact cut at a boundary is whole in one of
them. Chunks shorter than `min_chars` are dropped (a lone heading, a page number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?。？！])\s+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    source: str  # document path
    index: int  # 0, 1, ... within the document
    text: str  # what the teacher and the training row see as the context
    heading: str = ""  # the section title the chunk falls under, '' before the first heading


def blocks(text: str) -> list[tuple[str, int]]:
    """(text, heading level) blocks: markdown headings (level 1-6) and paragraphs (level 0).

    >>> blocks("# 규칙\\n## 연차\\n입사 1년 후 15일.\\n\\n이월은 3월까지.")
    [('규칙', 1), ('연차', 2), ('입사 1년 후 15일.', 0), ('이월은 3월까지.', 0)]
    """
    out: list[tuple[str, int]] = []
    for para in _PARAGRAPH_BREAK.split(text):
        body: list[str] = []
        for line in para.split("\n"):
            m = _HEADING.match(line.strip())
            if m:
                if body:
                    out.append(("\n".join(body).strip(), 0))
                    body = []
                out.append((m.group(2), len(m.group(1))))
            else:
                body.append(line)
        if "\n".join(body).strip():
            out.append(("\n".join(body).strip(), 0))
    return out


def sentences(text: str, max_chars: int) -> list[str]:
    """Sentences of `text`, each cut further at spaces (or anywhere) to fit `max_chars`.

    >>> sentences("첫 문장입니다. 둘째 문장이요? 셋", 100)
    ['첫 문장입니다.', '둘째 문장이요?', '셋']
    >>> sentences("aaaa bbbb cccc", 9)
    ['aaaa bbbb', 'cccc']
    """
    out = []
    for sent in _SENTENCE_END.split(text.strip()):
        while len(sent) > max_chars:
            cut = sent.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            out.append(sent[:cut].strip())
            sent = sent[cut:].strip()
        if sent:
            out.append(sent)
    return out


def _tail(pieces: list[tuple[str, str]], overlap: int) -> list[tuple[str, str]]:
    """The last whole sentences of `pieces` ((separator, text) pairs) within `overlap` characters."""
    sents: list[tuple[str, str]] = []
    for sep, text in pieces:
        parts = sentences(text, 10**9)
        sents += [(sep if i == 0 else " ", t) for i, t in enumerate(parts)]
    tail: list[tuple[str, str]] = []
    size = 0
    for sep, text in reversed(sents):
        if size + len(text) + 1 > overlap:
            break
        tail.insert(0, (sep, text))
        size += len(text) + 1
    return tail


def chunk_text(text: str, source: str, max_chars: int = 1200, overlap: int = 150, min_chars: int = 80) -> list[Chunk]:
    """Chunks of `text` (see the module docstring), each with its source and index.

    >>> doc = "# Leave\\nStaff get 15 days. Unused days carry over to March.\\n\\n# Travel\\nTrains are second class."
    >>> [(c.index, c.heading, c.text) for c in chunk_text(doc, "hr.md", max_chars=60, overlap=0, min_chars=10)]
    [(0, 'Leave', 'Leave\\nStaff get 15 days. Unused days carry over to March.'), (1, 'Travel', 'Travel\\nTrains are second class.')]
    """
    assert max_chars > 0 and 0 <= overlap < max_chars, (max_chars, overlap)
    chunks: list[tuple[str, str]] = []  # (text, heading)
    path: list[tuple[int, str]] = []  # (level, title) of the headings we are under
    heading = ""  # their titles joined with " > "
    top = ""  # the heading printed at the top of the chunk being filled
    pieces: list[tuple[str, str]] = []  # (separator before it, text): "\n" between blocks, " " between sentences
    fresh = False  # pieces hold new text, not only the overlap carried over

    def size(parts: list[tuple[str, str]]) -> int:
        return sum(len(t) + 1 for _, t in parts) + (len(top) + 1 if top else 0)

    def joined(parts: list[tuple[str, str]]) -> str:
        return "".join((sep if i else "") + t for i, (sep, t) in enumerate(parts))

    def emit(carry: bool) -> None:
        nonlocal pieces, fresh, top
        if fresh and pieces:
            chunks.append(((top + "\n" if top else "") + joined(pieces), top))
        pieces = _tail(pieces, overlap) if carry and overlap else []
        fresh = False
        top = heading

    for block, level in blocks(text):
        if level:
            path = [(lv, t) for lv, t in path if lv < level] + [(level, block)]
            heading = " > ".join(t for _, t in path)
            if size(pieces) >= max_chars // 2 or not fresh:
                emit(carry=False)
            elif size(pieces + [("\n", block)]) <= max_chars:
                pieces.append(("\n", block))  # a short section joins the chunk, its own title inline
            continue
        budget = max(max_chars - (len(heading) + 2 if heading else 1), 1)
        parts = [block] if len(block) <= budget else sentences(block, budget)
        for i, piece in enumerate(parts):
            if size(pieces + [("", piece)]) > max_chars:
                emit(carry=True)
                while pieces and size(pieces + [("", piece)]) > max_chars:  # overlap + piece too long
                    pieces.pop(0)
            pieces.append(("\n" if i == 0 else " ", piece))
            fresh = True
    emit(carry=False)
    kept = [(t, h) for t, h in chunks if len(t) >= min_chars]
    return [Chunk(source, i, t, h) for i, (t, h) in enumerate(kept)]
