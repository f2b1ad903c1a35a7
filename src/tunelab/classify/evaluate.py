"""Classification evaluation: batched logits, then accuracy, macro-F1, per-class scores and the
confusion matrix (scikit-learn's implementations)."""

from __future__ import annotations

import json

import torch

from tunelab.classify.predict import load_classifier, predict_logits
from tunelab.errors import TunelabError


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    """accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix
    (rows = true label, columns = predicted label)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i in ids},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "labels": labels,
    }


def evaluate_items(model, items, collate, batch_size: int, device, labels: list[str], class_weights=None,
                   with_probabilities: bool = False) -> dict:
    """Loss (mean cross-entropy), accuracy, macro-F1 and the rest on a list of (ids, label) items;
    with `with_probabilities`, also "probabilities": each item's softmax, in the items' order.

    With several processes the batches (those `predict_logits` makes: sorted by length, cut
    every `batch_size`) are dealt over them and the logits gathered (`distributed.map_batches`),
    so each batch is scored once, exactly as by one process, and every process gets the scores."""
    from tunelab.train.distributed import map_batches

    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    with torch.no_grad():
        parts = map_batches(lambda idx: predict_logits(model, [items[i] for i in idx], collate, batch_size, device), batches)
    logits = torch.zeros(0)
    if parts:
        logits = torch.empty(len(items), parts[0].shape[-1])  # (N, C) in the items' order
        for idx, part in zip(batches, parts):
            logits[idx] = part
    y_true = torch.tensor([y for _, y in items])
    loss = torch.nn.functional.cross_entropy(logits, y_true, weight=class_weights).item()
    scores = classification_metrics(y_true.tolist(), logits.argmax(-1).tolist(), labels)
    if with_probabilities:
        scores["probabilities"] = torch.softmax(logits.float(), -1).tolist()
    return {"loss": loss, **scores}


def prediction_lines(texts: list[str], y_true: list[int], probabilities: list[list[float]], labels: list[str]) -> str:
    """test_predictions.jsonl: per test row its text, true and predicted label and the class
    probabilities, for error analysis and for averaging the runs of several seeds."""
    lines = []
    for text, y, probs in zip(texts, y_true, probabilities):
        pred = max(range(len(probs)), key=probs.__getitem__)
        lines.append(json.dumps({"text": text, "label": labels[y], "predicted": labels[pred], "correct": pred == y,
                                 "probabilities": {lab: round(p, 6) for lab, p in zip(labels, probs)}},
                                ensure_ascii=False) + "\n")
    return "".join(lines)


def format_report(scores: dict) -> str:
    """A short text table: overall scores, per-class scores, confusion matrix."""
    labels = scores["labels"]
    width = max(8, *(len(lab) for lab in labels))
    lines = [f"accuracy {scores['accuracy'] * 100:.2f} %   macro-F1 {scores['macro_f1'] * 100:.2f} %", ""]
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for lab in labels:
        c = scores["per_class"][lab]
        lines.append(f"{lab:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)", " " * width + "  " + " ".join(f"{lab[:8]:>8}" for lab in labels)]
    for lab, row in zip(labels, scores["confusion_matrix"]):
        lines.append(f"{lab:<{width}}  " + " ".join(f"{v:8d}" for v in row))
    return "\n".join(lines)


def evaluate_file(run, data: str, text_column: str | None = None, label_column: str | None = None,
                  batch_size: int = 32) -> tuple[dict, str, int, float, object]:
    """`tunelab eval` of a classifier: the run scored on a labelled file (or asset:NAME).
    Returns (scores, the data's display name, rows scored, seconds spent tokenising and scoring,
    the device); rows whose label the run does not know stop with file:line."""
    import time
    from collections import Counter

    from tunelab.assets.resolve import read_data_spec
    from tunelab.classify.collate import encode_texts
    from tunelab.classify.data import drop_unseen_labels, extract_examples
    from tunelab.config import DataConfig

    clf = load_classifier(run)
    data_cfg = DataConfig(train=data, text_column=text_column, label_column=label_column)
    rows, text_col, label_col, name = read_data_spec(data, data_cfg)
    examples = extract_examples(rows, text_col, label_col, name, "error", Counter())
    examples = drop_unseen_labels(examples, set(clf.labels), "evaluation", "error", Counter())
    if not examples:
        raise TunelabError(f"{name}: no rows to evaluate")
    index = {lab: i for i, lab in enumerate(clf.labels)}
    started = time.perf_counter()
    enc = encode_texts(clf.tokenizer, [e.text for e in examples], [index[e.label] for e in examples], clf.max_length)
    scores = evaluate_items(clf.model, list(zip(enc.ids, enc.labels)), clf.collate, batch_size, clf.device, clf.labels)
    return scores, name, len(examples), time.perf_counter() - started, clf.device
