"""Strict parsing of judge replies: a score is read only when the reply says it plainly.

    parse_score("SCORE: 4\nREASON: correct but wordy", (1, 5))   # (4, "correct but wordy")
    parse_score("I think it's about a 4", (1, 5))                # None: unparseable
    parse_verdict("WINNER: B\nREASON: grounded")                 # ("B", "grounded")

A reply parses when it has exactly one `SCORE:` line holding one integer inside the scale and one
non-empty `REASON:` line (keys case-insensitive, markdown bold or a leading `-` tolerated, other
lines ignored). Anything else (no score, two scores, 4.5, 4/5, 7 on a 1-5 scale, no reason) is
unparseable: it is retried once and then counted, never guessed.
"""

from __future__ import annotations

import re

_LINE = re.compile(r"^[\s>*#`_-]*(SCORE|WINNER|REASON)[\s*_`]*[:：][\s*_`]*(.*?)[\s*_`]*$", re.IGNORECASE)


def _fields(reply: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (reply or "").splitlines():
        m = _LINE.match(line)
        if m:
            out.setdefault(m.group(1).upper(), []).append(m.group(2).strip())
    return out


def _reason(fields: dict) -> str | None:
    reasons = [r for r in fields.get("REASON", []) if r]
    return reasons[0] if len(reasons) == 1 else None


def parse_score(reply: str, scale: tuple[int, int]) -> tuple[int, str] | None:
    """(score, reason), or None when the reply is not in the format.

    >>> parse_score("**SCORE:** 5\\n**REASON:** grounded and short", (1, 5))
    (5, 'grounded and short')
    >>> parse_score("SCORE: 4.5\\nREASON: hm", (1, 5)), parse_score("SCORE: 6\\nREASON: hm", (1, 5))
    (None, None)
    """
    fields = _fields(reply)
    scores, reason = fields.get("SCORE", []), _reason(fields)
    if len(scores) != 1 or reason is None or not re.fullmatch(r"[+-]?\d+", scores[0]):
        return None
    score = int(scores[0])
    return (score, reason) if scale[0] <= score <= scale[1] else None


def parse_verdict(reply: str) -> tuple[str, str] | None:
    """("A" | "B" | "TIE", reason), or None.

    >>> parse_verdict("WINNER: tie\\nREASON: both right")
    ('TIE', 'both right')
    >>> parse_verdict("WINNER: A or B\\nREASON: unsure") is None
    True
    """
    fields = _fields(reply)
    winners, reason = fields.get("WINNER", []), _reason(fields)
    if len(winners) != 1 or reason is None:
        return None
    w = winners[0].strip(" .[]()<>\"'").upper()
    w = {"ANSWER A": "A", "ANSWER B": "B", "답변 A": "A", "답변 B": "B"}.get(w, w)
    return (w, reason) if w in ("A", "B", "TIE") else None
