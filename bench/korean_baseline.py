"""Korean customer messages: the char-n-gram TF-IDF + linear SVM baseline, and token lengths.

    .venv/bin/python bench/korean_baseline.py [--config configs/ko-customer-gemma3.yaml ...]

Reads the split exactly as `tunelab train CONFIG` does (tunelab's own loader, NFC applied), fits
TF-IDF over character n-grams (`char_wb`, 1..n) + `LinearSVC` on train, picks C and n by
validation macro-F1 only, then scores that one model on test (accuracy, macro-F1, per class).
Korean has no reliable word boundaries in chat text (spacing is free: "취소해주세요" /
"취소 해 주세요"), which is why the baseline uses characters, not words. It also prints how a
first-match keyword rule does, to show how often the set's keywords mislead.

For each config whose backbone asset is installed, it also prints the token lengths of the
texts under that backbone's tokenizer (special tokens included, as training counts them), how
many exceed `data.max_length` (would be truncated), and tokens per character for NFC against
NFD input (NFD splits every Hangul syllable into 2-3 jamo).
"""

from __future__ import annotations

import argparse
import unicodedata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/ko-customer-gemma3.yaml", "configs/ko-customer-qwen2.5.yaml"]
C_GRID = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
# The keyword rule a first attempt would write (first match wins; none = general_inquiry). The set
# is written so that these words mislead: this shows how often, it is not a baseline to beat.
KEYWORDS = [("cancel_refund", ["취소", "반품", "교환", "환불", "해지", "cancel", "refund"]), ("info_change", ["변경", "바꿔", "바꾸", "수정", "바뀌"]),
            ("order_status", ["언제", "어디", "배송", "조회"])]
NGRAM_MAX = [3, 4, 5]


def load(config_path: str):
    """(config, splits) with the config's data paths taken relative to the repository root."""
    from tunelab.classify.data import load_splits
    from tunelab.config import load_config

    cfg = load_config(ROOT / config_path)
    paths = {k: str(ROOT / v) for k in ("train", "validation", "test") if (v := getattr(cfg.data, k)) and not v.startswith("asset:")}
    return cfg, load_splits(cfg.data.model_copy(update=paths))


def svm_baseline(splits) -> dict:
    """Grid over (n, C) on validation macro-F1; the chosen model, trained on train only, on test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    x, y = [e.text for e in splits.train], [e.label for e in splits.train]
    xv, yv = [e.text for e in splits.validation], [e.label for e in splits.validation]
    xt, yt = [e.text for e in splits.test], [e.label for e in splits.test]
    make = lambda n, c: make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(1, n), sublinear_tf=True), LinearSVC(C=c))  # noqa: E731
    grid = []
    for n in NGRAM_MAX:
        for c in C_GRID:
            pred = make(n, c).fit(x, y).predict(xv)
            grid.append((f1_score(yv, pred, average="macro"), accuracy_score(yv, pred), n, c))
    best = max(grid, key=lambda g: (g[0], g[1], -g[2], -g[3]))  # ties: the smaller n, then the smaller C
    _, _, n, c = best
    pred = make(n, c).fit(x, y).predict(xt)
    return {"grid": grid, "n": n, "C": c, "validation_macro_f1": best[0], "validation_accuracy": best[1],
            "test_accuracy": accuracy_score(yt, pred), "test_macro_f1": f1_score(yt, pred, average="macro"),
            "report": classification_report(yt, pred, digits=4, zero_division=0),
            "confusion": confusion_matrix(yt, pred, labels=splits.labels)}


def keyword_rule(text: str) -> str:
    """The label of the first keyword group found in `text`.

    >>> keyword_rule("환불 규정이 어떻게 되나요?"), keyword_rule("매장 몇 시까지 해요?")
    ('cancel_refund', 'general_inquiry')
    """
    return next((label for label, words in KEYWORDS if any(w in text.casefold() for w in words)), "general_inquiry")


def token_lengths(cfg, splits) -> str | None:
    """Token-length lines for the config's backbone, or None when its asset is not installed."""
    from tunelab.assets.store import asset_dir, is_installed
    from tunelab.model.backbone import load_tokenizer

    name = cfg.model.name
    if name.startswith("asset:"):
        if not is_installed(name[len("asset:"):]):
            return f"{name}: not installed here (tunelab assets install {name[len('asset:'):]}); token lengths not measured"
        folder = asset_dir(name[len("asset:"):])
    else:
        folder = name
    tok = load_tokenizer(folder)
    lines = [f"tokenizer of {name} ({len(tok):,} tokens in its vocabulary), data.max_length = {cfg.data.max_length}"]
    for split_name, examples in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        texts = [e.text for e in examples]
        n = np.array([len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]])
        lines.append(f"  {split_name:<10} n={len(n):<4} min {n.min():>3}  median {np.median(n):>5.1f}  p95 {np.percentile(n, 95):>5.1f}  "
                     f"max {n.max():>3}  over max_length: {(n > cfg.data.max_length).sum()}")
    texts = [e.text for e in splits.train + splits.validation + splits.test]
    chars = sum(len(t) for t in texts)
    for form in ("NFC", "NFD"):
        ids = tok([unicodedata.normalize(form, t) for t in texts], add_special_tokens=False)["input_ids"]
        lines.append(f"  {form} input: {sum(map(len, ids)) / chars:.3f} tokens per character ({chars:,} characters)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", help=f"run config(s) on data/ko-customer (default: {', '.join(CONFIGS)})")
    configs = ap.parse_args().config or CONFIGS
    cfg, splits = load(configs[0])
    sizes = {k: len(getattr(splits, k)) for k in ("train", "validation", "test")}
    print(f"data: {cfg.data.train} | sizes {sizes} | labels {', '.join(splits.labels)}")

    r = svm_baseline(splits)
    print("\nvalidation macro-F1 by (char n-grams 1..n, C):")
    for f1, acc, n, c in r["grid"]:
        print(f"  n={n} C={c:<5} macro-F1 {100 * f1:6.2f} %  accuracy {100 * acc:6.2f} %")
    print(f"\nchosen on validation: n={r['n']} C={r['C']} (validation macro-F1 {100 * r['validation_macro_f1']:.2f} %, accuracy {100 * r['validation_accuracy']:.2f} %)")
    print(f"TEST char-n-gram TF-IDF + linear SVM: accuracy {100 * r['test_accuracy']:.2f} %, macro-F1 {100 * r['test_macro_f1']:.2f} % ({sizes['test']} rows)\n")
    print(r["report"])
    print("confusion matrix (rows = true, columns = predicted):", ", ".join(splits.labels))
    print(r["confusion"])
    every = splits.train + splits.validation + splits.test
    misled = sum(keyword_rule(e.text) != e.label and any(w in e.text.casefold() for _, ws in KEYWORDS for w in ws) for e in every)
    rule_acc = np.mean([keyword_rule(e.text) == e.label for e in splits.test])
    print(f"\nkeyword rule (first match): test accuracy {100 * rule_acc:.2f} %; {misled} of {len(every)} messages ({100 * misled / len(every):.1f} %) "
          "hold a keyword that points to another class")

    for path in configs:
        print()
        print(token_lengths(*load(path)))


if __name__ == "__main__":
    main()
