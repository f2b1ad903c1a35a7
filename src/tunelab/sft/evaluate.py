"""SFT evaluation: token loss and perplexity of the answers, then generated answers scored.

    loss = token_loss(model, examples, pad_id=tok.pad_token_id)          # {"loss", "perplexity", ...}
    result = generate_and_score(model, tok, template, items, generation)  # scores, predictions
    print(format_scores(result["scores"]))

Loss is the mean cross-entropy per target token over the whole set (summed, then divided once,
as in training), so it does not depend on the batch size. Generation uses the run's template and
decoding settings; for document-QA templates the refusal precision/recall and the exact match
on answerable questions are added (`tunelab.sft.metrics`).
"""

from __future__ import annotations

import math

import torch

from tunelab.data.refusals import REFUSAL_EN, REFUSAL_KO
from tunelab.errors import TunelabError
from tunelab.sft.collate import collate
from tunelab.sft.formats import split_prompt
from tunelab.sft.metrics import examples_table, score_predictions
from tunelab.sft.objective import sft_loss

REFUSALS = {"docqa-ko": [REFUSAL_KO], "docqa-en": [REFUSAL_EN], "docqa": [REFUSAL_KO, REFUSAL_EN]}


def refusal_strings(template) -> list[str] | None:
    """The refusal answers of a document-QA template (also inside a chat template), else None.

    >>> from tunelab.sft.templates import build_template
    >>> refusal_strings(build_template("docqa-ko")), refusal_strings(build_template("alpaca"))
    (['답변을 찾을 수 없습니다.'], None)
    """
    inner = getattr(template, "user_template", None) or template
    return REFUSALS.get(getattr(inner, "name", None))


@torch.no_grad()
def token_loss(model, examples: list[dict], pad_id: int, batch_size: int = 8, device=None) -> dict:
    """Mean target-token cross-entropy and perplexity over `examples` ({"input_ids", "labels"})."""
    if not examples:
        return {"loss": None, "perplexity": None, "n_targets": 0}
    from tunelab.train.distributed import map_batches

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))

    def score(idx: list[int]) -> tuple[float, int]:
        batch = collate([examples[i] for i in idx], pad_id)
        loss_sum, count = sft_loss(model, {k: v.to(device) for k, v in batch.items()})
        return loss_sum.item(), int(count)

    total, n = 0.0, 0
    try:  # with several processes the batches are dealt over them; summed in order, as by one
        for loss_sum, count in map_batches(score, [order[k:k + batch_size] for k in range(0, len(order), batch_size)]):
            total, n = total + loss_sum, n + count
    finally:
        model.train(was_training)
    loss = total / max(n, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "n_targets": n}


def generate_and_score(model, tokenizer, template, items, generation: dict, batch_size: int = 8) -> dict:
    """Generate an answer for each item (data.Item or messages ending with the answer), score.

    Returns {"scores", "predictions", "references", "prompts"}; prompts are the last user turn's
    plain text (for the examples table).
    """
    conversations = [getattr(it, "messages", it) for it in items]
    prompts, refs = zip(*(split_prompt(m) for m in conversations)) if conversations else ((), ())
    settings = dict(max_new_tokens=generation["max_new_tokens"], do_sample=generation["do_sample"], temperature=generation["temperature"],
                    top_p=generation["top_p"], seed=generation.get("seed"), batch_size=batch_size)
    preds = _generate_sharded(model, tokenizer, template, list(prompts), settings)
    scores = score_predictions(preds, list(refs), refusal=refusal_strings(template))
    langs = [getattr(it, "row", {}).get("lang") for it in items]
    if per_language := by_lang(preds, list(refs), langs, template):
        scores["by_lang"] = per_language
    return {"scores": scores, "predictions": preds, "references": list(refs),
            "prompts": [p[-1]["content"] for p in prompts]}


def by_lang(preds: list[str], refs: list[str], langs: list, template) -> dict | None:
    """The same scores per value of the rows' `lang` field (document QA in several languages:
    refusal precision and recall must hold in each, not only on average), or None unless every
    row has a `lang` string and there are at least two of them."""
    if not langs or not all(isinstance(x, str) for x in langs) or len(set(langs)) < 2:
        return None
    return {lang: score_predictions([p for p, x in zip(preds, langs) if x == lang], [r for r, x in zip(refs, langs) if x == lang],
                                    refusal=refusal_strings(template)) for lang in sorted(set(langs))}


def _generate_sharded(model, tokenizer, template, prompts: list, settings: dict) -> list[str]:
    """`generate` over all prompts; with several processes its batches (longest prompts first,
    cut every batch_size) are dealt over them (`distributed.map_batches`), each batch generated
    as one process would. Sampled answers (do_sample) then differ from one process's, since each
    batch starts the sampling seed afresh."""
    from tunelab.sft.generate import as_messages, generate
    from tunelab.sft.tokenize import encode_prompt
    from tunelab.train.distributed import map_batches, world_size

    if world_size() == 1:
        return generate(model, tokenizer, template, prompts, **settings)
    lengths = [len(encode_prompt(as_messages(p, "auto"), template, tokenizer)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    size = settings["batch_size"]
    batches = [order[k:k + size] for k in range(0, len(order), size)]
    out: list[str] = [""] * len(prompts)
    for idx, answers in zip(batches, map_batches(lambda idx: generate(model, tokenizer, template, [prompts[i] for i in idx], **settings), batches)):
        for i, answer in zip(idx, answers):
            out[i] = answer
    return out


def examples_markdown(result: dict, n: int = 5, title: str = "Test examples") -> str:
    """A markdown page: the first n (prompt, reference, generated) rows and the scores."""
    table = examples_table(result["prompts"], result["references"], result["predictions"], n=n)
    return f"# {title}\n\n{table}\n\n{format_scores(result['scores'])}\n"


def format_scores(scores: dict) -> str:
    """Scores as a short two-column table (percentages), None shown as n/a."""
    names = ["exact_match", "token_f1", "rouge_l", "chrf", "answer_exact_match", "refusal_precision", "refusal_recall"]
    rows = ["| metric | value |", "|---|---|"]
    for k in names:
        if k in scores:
            v = scores[k]
            rows.append(f"| {k} | {'n/a' if v is None else f'{100 * v:.1f} %'} |")
    for k in ("loss", "perplexity"):
        if scores.get(k) is not None:
            rows.append(f"| {k} | {scores[k]:.4f} |")
    rows.append(f"| rows | {scores.get('n', '')} |")
    for lang, part in (scores.get("by_lang") or {}).items():
        rows += ["", f"rows with lang = {lang}:", format_scores(part)]
    return "\n".join(rows)


def evaluate_file(run, data: str, batch_size: int = 32, max_rows: int | None = None, max_new_tokens: int | None = None) -> dict:
    """`tunelab eval` of an SFT run: answer loss and perplexity over every row of `data`, then
    answers generated for the first `max_rows` and scored. Returns {"scores", "name", "rows",
    "predictions"} (predictions: source/prompt/reference/generated per generated row)."""
    from collections import Counter

    from tunelab.config import DataConfig
    from tunelab.sft.data import encode_split, read_sft_rows, to_items
    from tunelab.sft.export import load_sft
    from tunelab.sft.generate import decoding_settings

    lm = load_sft(run)
    rows, name = read_sft_rows(data, DataConfig(train=data))
    items = to_items(rows, lm.meta.get("format", "auto"), name, "error", Counter())
    if not items:
        raise TunelabError(f"{name}: no rows to evaluate")
    counts: Counter = Counter()
    examples = encode_split(items, lm.template, lm.tokenizer, max_length=int(lm.meta.get("max_length", 1024)),
                            train_on_prompt=bool(lm.meta.get("train_on_prompt")), bad_rows="skip", counts=counts)
    scores = token_loss(lm.model, examples, lm.tokenizer.pad_token_id, batch_size)
    generation = decoding_settings(lm.meta.get("generation"), max_new_tokens=max_new_tokens)
    shown = items[:max_rows] if max_rows else items
    result = generate_and_score(lm.model, lm.tokenizer, lm.template, shown, generation, min(batch_size, 16))
    scores.update(result["scores"], truncated=counts["truncated"], too_long=counts["too_long"])
    predictions = [{"source": it.where, "prompt": p, "reference": r, "generated": g}
                   for it, p, r, g in zip(shown, result["prompts"], result["references"], result["predictions"])]
    return {"scores": scores, "name": name, "rows": len(items), "predictions": predictions}
