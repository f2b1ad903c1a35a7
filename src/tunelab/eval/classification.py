"""Classification evaluation: batched logits, then accuracy, macro-F1, per-class scores and the
confusion matrix (scikit-learn's implementations)."""

from __future__ import annotations

import torch


@torch.no_grad()
def predict_logits(model, items: list[tuple[list[int], int]], collate, batch_size: int, device) -> torch.Tensor:
    """Logits (N, C) for `items` in their original order. Items are batched by length so that
    little padding is computed; inference mode, no dropout."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    out = [None] * len(items)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([items[i] for i in idx])
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
        for row, i in enumerate(idx):
            out[i] = logits[row]
    model.train(was_training)
    return torch.stack(out) if out else torch.zeros(0)


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


def evaluate_items(model, items, collate, batch_size: int, device, labels: list[str], class_weights=None) -> dict:
    """Loss (mean cross-entropy), accuracy, macro-F1 and the rest on a list of (ids, label) items."""
    logits = predict_logits(model, items, collate, batch_size, device)
    y_true = torch.tensor([y for _, y in items])
    loss = torch.nn.functional.cross_entropy(logits, y_true, weight=class_weights).item()
    scores = classification_metrics(y_true.tolist(), logits.argmax(-1).tolist(), labels)
    return {"loss": loss, **scores}


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
