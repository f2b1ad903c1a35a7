"""`tunelab predict RUN --input FILE|- --output FILE`: label texts with a trained classifier."""

HELP = "predict labels and class probabilities for texts (JSONL out, batched)"


def configure(p):
    from tunelab.commands.options import add_threads_option

    p.add_argument("run", help="run folder (or its model/ folder)")
    p.add_argument("--input", required=True, help="'-' for stdin (one text per line), a .txt file (one per line), or CSV/TSV/JSONL/Parquet")
    p.add_argument("--output", default="-", help="JSONL output file, or '-' for stdout")
    p.add_argument("--text-column", default="text", help="text column of a table input")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (batched by length)")
    add_threads_option(p)


def run(args) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    from tunelab.classify.predict import load_classifier, read_texts
    from tunelab.commands.options import apply_threads, rate_line
    from tunelab.data.io_atomic import write_jsonl_atomic
    from tunelab.data.outputs import check_output
    from tunelab.errors import TunelabError

    if args.batch_size < 1:
        raise TunelabError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.output != "-":
        check_output(args.output, inputs=[args.input])
    threads = apply_threads(args)
    clf = load_classifier(args.run)  # a wrong run folder fails before reading any input
    texts = read_texts(args.input, args.text_column)
    if not texts:
        raise TunelabError(f"{args.input}: no rows (nothing to predict)")
    started = time.perf_counter()
    rows = [{"text": t, **p} for t, p in zip(texts, clf.predict(texts, args.batch_size))]
    print(rate_line("predicted", len(rows), time.perf_counter() - started, threads, clf.device), file=sys.stderr)
    if args.output == "-":
        for r in rows:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        write_jsonl_atomic(Path(args.output), rows)
        print(f"wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
    return 0
