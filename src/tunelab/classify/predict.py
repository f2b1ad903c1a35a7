"""Use a finished run: `tunelab.load(RUN).predict(texts)` and the reading/writing behind
`tunelab predict` and `tunelab eval`."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import torch

from tunelab.classify.collate import ClassificationCollator, encode_texts
from tunelab.classify.export import load_exported
from tunelab.errors import TunelabError
from tunelab.train.runtime import model_dir_of


@torch.no_grad()
def predict_logits(model, items: list[tuple[list[int], int]], collate, batch_size: int, device) -> torch.Tensor:
    """Logits (N, C) for `items` in their original order. Items are batched by length so that
    little padding is computed; inference mode, no dropout. A collator that adds `frozen_states`
    (the frozen-prefix cache's) has them passed on."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    out = [None] * len(items)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([items[i] for i in idx])
        cached = {"frozen_states": batch["frozen_states"].to(device)} if "frozen_states" in batch else {}
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), **cached).float().cpu()
        for row, i in enumerate(idx):
            out[i] = logits[row]
    model.train(was_training)
    return torch.stack(out) if out else torch.zeros(0)


def _pick_device(device):
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Classifier:
    """A trained text classifier with its tokenizer, labels and padding settings."""

    def __init__(self, model, tokenizer, meta: dict, device):
        self.model, self.tokenizer, self.meta, self.device = model, tokenizer, meta, device
        self.labels: list[str] = meta["labels"]
        self.max_length = int(meta.get("max_length", 512))
        self.collate = ClassificationCollator(tokenizer.pad_token_id, "longest", self.max_length)

    def logits(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        # NFC as in training (classify.data.extract_examples): NFD Korean would tokenise differently.
        texts = [unicodedata.normalize("NFC", t) for t in texts]
        enc = encode_texts(self.tokenizer, texts, [0] * len(texts), self.max_length)
        return predict_logits(self.model, list(zip(enc.ids, enc.labels)), self.collate, batch_size, self.device)

    def predict(self, texts: list[str] | str, batch_size: int = 32) -> list[dict]:
        """[{"label": name, "probs": {name: p, ...}}, ...] for each text (a single string is fine)."""
        if isinstance(texts, str):
            texts = [texts]
        probs = torch.softmax(self.logits(texts, batch_size), dim=-1)
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": self.labels[best], "probs": {name: round(p, 6) for name, p in zip(self.labels, row)}})
        return out


def load_classifier(run, device=None) -> Classifier:
    device = _pick_device(device)
    model, tokenizer, meta = load_exported(model_dir_of(run), device)
    return Classifier(model, tokenizer, meta, device)


def read_texts(path: str, text_column: str = "text") -> list[str]:
    """Texts to predict: `-` (stdin, one per line), a .txt file (one per line), or a data file."""
    import sys

    if path == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.is_file():
            raise TunelabError(f"input file not found: {p}" if not p.exists() else f"{p}: not a regular file")
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            line = p.read_bytes()[: err.start].count(b"\n") + 1
            raise TunelabError(f"{p}:{line}: not UTF-8 text (byte {err.object[err.start]:#04x}); convert it, e.g. iconv -f cp949 -t utf-8") from None
        return [line.rstrip("\n") for line in lines if line.strip()]
    from tunelab.data.readers import read_rows

    rows = read_rows(p)
    if rows and text_column not in rows[0]:
        raise TunelabError(f"{p}: no column {text_column!r} (found: {', '.join(k for k in rows[0] if k != '_line')}); use --text-column")
    bad = next((r for r in rows if not isinstance(r.get(text_column), str) or not r[text_column].strip()), None)
    if bad is not None:
        raise TunelabError(f"{p}:{bad.get('_line')}: {text_column!r} is {'empty' if bad.get(text_column) in (None, '') else type(bad[text_column]).__name__}; expected a text")
    return [r[text_column] for r in rows]
