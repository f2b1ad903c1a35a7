"""Scores of generated answers against references, Korean-aware; all scores are in [0, 1].

    scores = score_predictions(preds, refs, refusal=[REFUSAL_KO, REFUSAL_EN])
    print(examples_table(prompts, refs, preds))

What "Korean-aware" means here:
- Text is NFKC-normalised first, so composed and decomposed Hangul (NFC vs NFD jamo, as from
  some macOS tools) and full-width forms compare equal.
- Exact match, token F1 and ROUGE-L share one normalisation (SQuAD style: lower case,
  punctuation removed except a decimal point between digits, so 4.5 % and 45 % differ,
  English articles a/an/the removed, whitespace collapsed) and one unit
  of comparison: a run of Latin letters/digits is one unit (an English word), but every Hangul
  syllable, CJK ideograph and kana is a unit of its own. Korean words carry particles and
  endings ("서울" / "서울은" / "서울입니다") and spacing varies, so whitespace words would
  score a near-correct Korean answer 0; syllables give partial credit, as in the KorQuAD F1.
- chrF (Popović 2015) works on characters with whitespace removed (as sacrebleu's default),
  so "보험금 청구" and "보험금청구" match fully. Character n-grams n = 1..6; chrP and chrR are
  the means of the per-order precision and recall over the orders both texts are long enough
  for; chrF = (1 + b^2) chrP chrR / (b^2 chrP + chrR) with b = 2 (recall weighs more). No
  lower-casing or punctuation removal, as in the original.
- Corpus scores are means of per-example scores (macro average).
- Refusal: a reference is a refusal when it equals a refusal string (normalised); a prediction
  is one when it contains one. Precision and recall are None when undefined (no refusals).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

# one unit per character: Hangul (syllables, jamo, compatibility jamo), CJK ideographs, kana
_CHAR_UNIT = r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3]"
_UNITS = re.compile(_CHAR_UNIT + r"|(?:(?!" + _CHAR_UNIT + r")\S)+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")  # the point of 4.5 is kept: a 4.5 % rate is not 45 %


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation (but decimal points) and English articles removed,
    whitespace collapsed.

    >>> normalize("The  Answer: 30일, 연 4.5%!")
    'answer 30일 연 4.5'
    """
    text = _DECIMAL.sub("\0", unicodedata.normalize("NFKC", text).lower())
    text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    text = text.replace("\0", ".")
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def units(text: str) -> list[str]:
    """Comparison units of a normalised text: English words, single Hangul/CJK characters.

    >>> units("KB국민 loan 3년")
    ['kb', '국', '민', 'loan', '3', '년']
    """
    return _UNITS.findall(normalize(text))


def exact_match(pred: str, ref: str) -> float:
    """1.0 if equal after normalisation.

    >>> exact_match("Paris.", "paris"), exact_match("서울", "서울입니다")
    (1.0, 0.0)
    """
    return float(normalize(pred) == normalize(ref))


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if overlap == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style bag-of-units F1 (units as in `units`).

    >>> token_f1("서울입니다", "서울")  # P = 2/5, R = 2/2
    0.5714285714285715
    """
    p, r = units(pred), units(ref)
    return _f1(sum((Counter(p) & Counter(r)).values()), len(p), len(r))


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence.

    >>> lcs_length(list("abcbdab"), list("bdcaba"))
    4
    """
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1: longest common subsequence of units.

    >>> rouge_l("the cat sat on mat", "the cat is on the mat")  # LCS cat,on,mat: P 3/4, R 3/4
    0.75
    """
    p, r = units(pred), units(ref)
    return _f1(lcs_length(p, r), len(p), len(r))


def _char_ngrams(text: str, n: int) -> Counter:
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf(pred: str, ref: str, order: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (chrF, beta 2), whitespace removed.

    >>> round(chrf("ab", "abc"), 4)  # n=1: P 1, R 2/3; n=2: P 1, R 1/2 -> chrR 7/12 -> 7/11
    0.6364
    """
    hyp = "".join(unicodedata.normalize("NFKC", pred).split())
    ref_ = "".join(unicodedata.normalize("NFKC", ref).split())
    if not hyp or not ref_:
        return float(hyp == ref_)
    precisions, recalls = [], []
    for n in range(1, order + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref_, n)
        if not h or not r:
            break  # both strings shorter than n: higher orders are empty too
        match = sum((h & r).values())
        precisions.append(match / sum(h.values()))
        recalls.append(match / sum(r.values()))
    cp, cr = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if cp == 0 and cr == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * cp * cr / (b2 * cp + cr)


def _as_list(refusal) -> list[str]:
    return [refusal] if isinstance(refusal, str) else list(refusal)


def is_refusal(text: str, refusal) -> bool:
    """True if the text contains a refusal string (normalised); refusal: str or list of str.

    >>> is_refusal("죄송합니다. 답변을 찾을 수 없습니다", "답변을 찾을 수 없습니다.")
    True
    """
    n = normalize(text)
    return any(normalize(r) in n for r in _as_list(refusal))


def refusal_scores(preds: list[str], refs: list[str], refusal) -> dict:
    """Precision and recall of refusing, with unanswerable questions as the positive class.

    >>> refusal_scores(["No idea", "답변을 찾을 수 없습니다.", "3일"],
    ...                ["답변을 찾을 수 없습니다.", "답변을 찾을 수 없습니다.", "5일"],
    ...                "답변을 찾을 수 없습니다.")["refusal_recall"]
    0.5
    """
    strings = {normalize(r) for r in _as_list(refusal)}
    gold = [normalize(r) in strings for r in refs]
    said = [is_refusal(p, refusal) for p in preds]
    tp = sum(g and s for g, s in zip(gold, said))
    return {
        "refusal_precision": tp / sum(said) if any(said) else None,
        "refusal_recall": tp / sum(gold) if any(gold) else None,
        "n_refusal_refs": sum(gold),
        "n_refusal_preds": sum(said),
    }


def score_predictions(preds: list[str], refs: list[str], refusal=None) -> dict:
    """Mean exact match, token F1, ROUGE-L and chrF; with `refusal`, the refusal scores and
    the exact match on answerable references only (`answer_exact_match`).

    >>> score_predictions(["Paris", "4"], ["Paris.", "five"])["exact_match"]
    0.5
    """
    assert len(preds) == len(refs), f"{len(preds)} predictions for {len(refs)} references"
    n = len(refs)

    def mean(fn, pairs):
        pairs = list(pairs)
        return sum(fn(p, r) for p, r in pairs) / len(pairs) if pairs else None

    pairs = list(zip(preds, refs))
    out = {
        "n": n,
        "exact_match": mean(exact_match, pairs),
        "token_f1": mean(token_f1, pairs),
        "rouge_l": mean(rouge_l, pairs),
        "chrf": mean(chrf, pairs),
    }
    if refusal is not None:
        out.update(refusal_scores(preds, refs, refusal))
        strings = {normalize(r) for r in _as_list(refusal)}
        answerable = [(p, r) for p, r in pairs if normalize(r) not in strings]
        out["answer_exact_match"] = mean(exact_match, answerable)
    return out


def _cell(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        half = max_chars // 2
        text = text[:half] + " … " + text[-half:]
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def examples_table(prompts: list[str], refs: list[str], preds: list[str], n: int = 5,
                   max_chars: int = 300) -> str:
    """A markdown table of the first n examples: prompt, reference, generated, chrF.

    Long cells keep their start and end (a docqa prompt's question and its last lines).

    >>> print(examples_table(["2+2?"], ["4"], ["4"]))
    | # | prompt | reference | generated | chrF |
    |---|---|---|---|---|
    | 1 | 2+2? | 4 | 4 | 100.0 |
    """
    rows = ["| # | prompt | reference | generated | chrF |", "|---|---|---|---|---|"]
    for i, (p, r, g) in enumerate(list(zip(prompts, refs, preds))[:n], start=1):
        rows.append(f"| {i} | {_cell(p, max_chars)} | {_cell(r, max_chars)} | "
                    f"{_cell(g, max_chars)} | {100 * chrf(g, r):.1f} |")
    return "\n".join(rows)
