"""`tunelab eval RUN --data FILE`: score a trained classifier on a labelled file."""

HELP = "evaluate a trained run on a labelled data file (accuracy, macro-F1, per class, confusion matrix)"


def configure(p):
    p.add_argument("run", help="run folder (or its model/ folder)")
    p.add_argument("--data", required=True, help="labelled CSV/TSV/JSONL/Parquet file, or asset:NAME")
    p.add_argument("--text-column", default=None, help="text column (default: as in the run's config, else 'text')")
    p.add_argument("--label-column", default=None, help="label column (default: as in the run's config, else 'label')")
    p.add_argument("--output", default=None, help="write the scores as JSON here")
    p.add_argument("--batch-size", type=int, default=32)


def run(args) -> int:
    import json
    from pathlib import Path

    from tunelab.config import DataConfig
    from tunelab.data.classification import drop_unseen_labels, extract_examples, read_source
    from tunelab.eval.classification import evaluate_items, format_report
    from tunelab.predict import load_classifier, write_jsonl_atomic  # noqa: F401
    from tunelab.train.checkpoint import write_text_atomic
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
