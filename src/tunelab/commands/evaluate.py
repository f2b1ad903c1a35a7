"""`tunelab eval RUN --data FILE`: score a trained run on a labelled file.

Classifiers: accuracy, macro-F1, per class, confusion matrix. SFT runs (dispatched on the run's
tunelab.json): answer loss and perplexity, then generated answers scored (exact match, token F1,
ROUGE-L, chrF; refusal precision/recall for document QA), see `eval_sft`.
"""

HELP = "evaluate a trained run on a labelled data file (classification: accuracy, macro-F1...; sft: loss, ROUGE-L, chrF, refusals)"


def configure(p):
    p.add_argument("run", help="run folder (or its model/ folder)")
    p.add_argument("--data", required=True, help="labelled CSV/TSV/JSONL/Parquet file, or asset:NAME")
    p.add_argument("--text-column", default=None, help="text column (default: as in the run's config, else 'text')")
    p.add_argument("--label-column", default=None, help="label column (default: as in the run's config, else 'label')")
    p.add_argument("--output", default=None, help="write the scores as JSON here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-rows", type=int, default=None, help="sft: generate answers for at most this many rows")
    p.add_argument("--max-new-tokens", type=int, default=None, help="sft: most new tokens per answer (default: the run's)")
    p.add_argument("--predictions", default=None, help="sft: write prompt/reference/generated rows as JSONL here")


def run(args) -> int:
    from tunelab.sft.export import is_sft_run

    if is_sft_run(args.run):
        return eval_sft(args)
    return eval_classifier(args)


def eval_sft(args) -> int:
    """Loss/perplexity over the answers of every row, then generation on the first --max-rows."""
    import json
    from collections import Counter
    from pathlib import Path

    from tunelab.config import DataConfig
    from tunelab.eval.sft import format_scores, generate_and_score, token_loss
    from tunelab.sft.data import encode_split, read_sft_rows, to_items
    from tunelab.sft.export import load_sft
    from tunelab.data.io_atomic import write_text_atomic

    lm = load_sft(args.run)
    rows, name = read_sft_rows(args.data, DataConfig(train=args.data))
    items = to_items(rows, lm.meta.get("format", "auto"), name, "error", Counter())
    counts: Counter = Counter()
    examples = encode_split(items, lm.template, lm.tokenizer, max_length=int(lm.meta.get("max_length", 1024)),
                            train_on_prompt=bool(lm.meta.get("train_on_prompt")), bad_rows="skip", counts=counts)
    scores = token_loss(lm.model, examples, lm.tokenizer.pad_token_id, args.batch_size)
    generation = dict(lm.meta.get("generation") or {"max_new_tokens": 128, "do_sample": False, "temperature": 1.0, "top_p": 1.0})
    if args.max_new_tokens:
        generation["max_new_tokens"] = args.max_new_tokens
    shown = items[: args.max_rows] if args.max_rows else items
    result = generate_and_score(lm.model, lm.tokenizer, lm.template, shown, generation, min(args.batch_size, 16))
    scores.update(result["scores"], truncated=counts["truncated"], too_long=counts["too_long"])
    print(f"{name}: {len(items)} rows (answers generated for {len(shown)})")
    print(format_scores(scores))
    if args.output:
        write_text_atomic(Path(args.output), json.dumps(scores, indent=1, ensure_ascii=False))
    if args.predictions:
        from tunelab.data.io_atomic import write_jsonl_atomic

        write_jsonl_atomic(args.predictions, [{"source": it.where, "prompt": p, "reference": r, "generated": g} for it, p, r, g in
                                              zip(shown, result["prompts"], result["references"], result["predictions"])])
    return 0


def eval_classifier(args) -> int:
    import json
    from pathlib import Path

    from tunelab.config import DataConfig
    from tunelab.data.classification import drop_unseen_labels, extract_examples, read_source
    from tunelab.eval.classification import evaluate_items, format_report
    from tunelab.predict import load_classifier
    from tunelab.data.io_atomic import write_text_atomic
    from collections import Counter

    clf = load_classifier(args.run)
    data_cfg = DataConfig(train=args.data, text_column=args.text_column, label_column=args.label_column)
    rows, text_col, label_col, name = read_source(args.data, data_cfg)
    examples = extract_examples(rows, text_col, label_col, name, "error", Counter())
    examples = drop_unseen_labels(examples, set(clf.labels), "evaluation", "error", Counter())
    from tunelab.data.collate import encode_texts

    index = {lab: i for i, lab in enumerate(clf.labels)}
    enc = encode_texts(clf.tokenizer, [e.text for e in examples], [index[e.label] for e in examples], clf.max_length)
    scores = evaluate_items(clf.model, list(zip(enc.ids, enc.labels)), clf.collate, args.batch_size, clf.device, clf.labels)
    print(f"{name}: {len(examples)} rows")
    print(format_report(scores))
    if args.output:
        write_text_atomic(Path(args.output), json.dumps(scores, indent=1, ensure_ascii=False))
    return 0
