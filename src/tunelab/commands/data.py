"""`tunelab data inspect|clean|split|synth|review`: prepare a data set before training.

    tunelab data inspect data/tickets.csv --tokenizer asset:smollm2-135m-instruct --max-length 256 --html inspect.html
    tunelab data clean data/tickets.csv --output data/clean.jsonl --lang ko --max-chars 2000
    tunelab data split data/clean.jsonl --out data/splits --validation 0.1 --test 0.2 --seed 123
    tunelab data synth docs/ --config configs/synth/docqa-ko.yaml --output data/qa.jsonl
    tunelab data review data/qa.jsonl            # then: tunelab data review-export data/qa.jsonl -o accepted.jsonl

FILE is a CSV/TSV/JSONL/Parquet file, a folder of per-label folders, or asset:NAME. Only argparse
is imported here; the work (numpy, transformers) is imported inside `run`.
"""

import argparse

HELP = "inspect, clean (normalise, deduplicate, redact personal data), split, synthesize QA, review by eye"


def _add_reader_args(p) -> None:
    g = p.add_argument_group("reading FILE")
    g.add_argument("--text-column", help="column(s) holding the text, comma-separated (default: text, or a guess)")
    g.add_argument("--label-column", help="column holding the label (default: label when present)")
    g.add_argument("--format", default=None, choices=["auto", "csv", "tsv", "jsonl", "parquet", "folders"],
                   help="file format (default: from the extension)")  # fmt: skip
    g.add_argument("--encoding", default=None, help="text encoding (default utf-8; e.g. cp949, latin-1)")
    g.add_argument("--no-header", action="store_true", help="CSV/TSV without a header row")
    g.add_argument("--columns", help="column names for a header-less CSV/TSV, comma-separated")
    g.add_argument("--no-quoting", action="store_true", help="CSV/TSV whose text holds bare quotes")


def _threshold(value: str) -> float | None:
    v = float(value)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1] (0 turns it off), got {value}")
    return v or None


def configure(p) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    q = sub.add_parser("inspect", help="rows, labels, lengths, duplicates, conflicts, scripts; table and HTML",
                       description="Print facts about a data set; optionally write them as an HTML page with plots.")  # fmt: skip
    q.add_argument("file", metavar="FILE")
    _add_reader_args(q)
    q.add_argument("--tokenizer", help="asset:NAME or a model folder whose tokenizer counts tokens")
    q.add_argument("--max-length", type=int, help="count rows longer than this many tokens")
    q.add_argument("--near-dup-threshold", type=_threshold, default=0.7, help="Jaccard threshold (default 0.7; 0: skip)")
    q.add_argument("--html", metavar="OUT", help="write an HTML page with plots")
    q.add_argument("--json", metavar="OUT", help="write the facts as JSON")

    c = sub.add_parser("clean", help="normalise, filter, deduplicate, redact personal data; report every change",
                       description="Write the cleaned rows as JSONL and a report listing every row removed or "
                                   "changed with its reason and line. The input file is never modified.")  # fmt: skip
    c.add_argument("file", metavar="FILE")
    c.add_argument("--output", "-o", required=True, help="cleaned rows (JSONL)")
    c.add_argument("--report", help="report JSONL (default OUTPUT stem + .report.jsonl; summary in .summary.json)")
    _add_reader_args(c)
    c.add_argument("--no-pii", action="store_true", help="do not redact personal data")
    c.add_argument("--pii-types", help="redact only these, comma-separated: EMAIL,PHONE,RRN,CARD,ACCOUNT,IP,PASSPORT,LICENSE")
    c.add_argument("--near-dup-threshold", type=_threshold, default=0.7, help="Jaccard threshold (default 0.7; 0: keep near duplicates)")
    c.add_argument("--no-exact-dedup", action="store_true", help="keep exact duplicates")
    c.add_argument("--min-chars", type=int, default=1, help="drop rows shorter than this (default 1)")
    c.add_argument("--max-chars", type=int, help="drop rows longer than this")
    c.add_argument("--lang", choices=["ko", "en", "any"], default="any", help="keep rows mostly in Hangul (ko) or Latin (en)")
    c.add_argument("--min-script-share", type=float, default=0.5, help="share of letters in the --lang script (default 0.5)")
    c.add_argument("--keep-garbled", action="store_true", help="keep rows that look garbled")
    c.add_argument("--label-conflicts", choices=["report", "drop"], default="report",
                   help="same text, different labels: report and keep the first (default) or drop them all")  # fmt: skip
    c.add_argument("--no-html", action="store_true", help="do not strip HTML")
    c.add_argument("--no-mojibake", action="store_true", help="do not repair mojibake")
    c.add_argument("--single-line", action="store_true", help="collapse line breaks too")
    c.add_argument("--domain-reference", metavar="FILE", help="in-domain example texts; drop rows unlike them")
    c.add_argument("--domain-threshold", type=float, default=0.3, help="minimum similarity to the domain (default 0.3)")
    c.add_argument("--encoder", default="asset:minilm-l6", help="encoder for --domain-reference (default asset:minilm-l6)")

    s = sub.add_parser("split", help="stratified train/validation/test or k folds, duplicate groups kept together",
                       description="Split rows so that near-duplicate groups never straddle two splits.")  # fmt: skip
    s.add_argument("file", metavar="FILE")
    s.add_argument("--out", required=True, help="output folder")
    _add_reader_args(s)
    s.add_argument("--validation", type=float, default=None, help="validation fraction (default 0.1; not with --folds)")
    s.add_argument("--test", type=float, default=0.2, help="test fraction (default 0.2)")
    s.add_argument("--folds", type=int, help="k folds of the non-test rows instead of one validation split")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--near-dup-threshold", type=_threshold, default=0.7, help="Jaccard threshold for groups (default 0.7; 0: exact only)")
    _configure_synth_review(sub)


def run(args) -> int:
    return {"inspect": _inspect, "clean": _clean, "split": _split, "synth": _synth, "review": _review,
            "review-export": _review_export}[args.data_command](args)  # fmt: skip


# --- synth and review ----------------------------------------------------------------------------


def _configure_synth_review(sub) -> None:
    y = sub.add_parser("synth", help="question/answer rows from documents, written by a local teacher LLM",
                       description="Chunk documents (txt, md, html, docx, pdf), have a teacher write questions and "
                                   "grounded answers, add unanswerable rows, filter, write JSONL for docqa training.")  # fmt: skip
    y.add_argument("inputs", nargs="+", metavar="DOCS", help="document files or folders")
    y.add_argument("--config", required=True, help="synth YAML (e.g. configs/synth/docqa-ko.yaml)")
    y.add_argument("--output", "-o", required=True, help="QA rows (JSONL); report and dropped items are written beside it")
    y.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. teacher.batch_size=2 (repeatable)")
    y.add_argument("--teacher", help="asset:NAME or a model folder (local), or openai:MODEL (endpoint from TUNELAB_TEACHER_BASE_URL)")
    y.add_argument("--allow-remote", action="store_true", help="allow sending document chunks to an OpenAI-compatible endpoint")
    y.add_argument("--max-chunks", type=int, help="use at most this many chunks, spread over the documents (quick runs)")
    y.add_argument("--cache", help="reply cache (SQLite; default OUTPUT stem + .synth-cache.sqlite)")

    r = sub.add_parser("review", help="accept, reject and edit rows by eye in a local web page",
                       description="Serve FILE.jsonl on 127.0.0.1 with a random token; decisions and edits go to "
                                   "FILE.review.sqlite. The source file is never modified.")  # fmt: skip
    r.add_argument("file", metavar="FILE.jsonl")
    r.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: any free port)")
    r.add_argument("--export", metavar="OUT", help="write the accepted (and edited) rows to OUT and exit")
    r.add_argument("--grade", metavar="LOW-HIGH", help="grading mode: score answers on a rubric's scale (e.g. 1-5), for `tunelab judge --human`")

    e = sub.add_parser("review-export", help="write the accepted (and edited) rows of a review as JSONL",
                       description="Accepted rows, with their edits, in file order, ready for training.")  # fmt: skip
    e.add_argument("file", metavar="FILE.jsonl")
    e.add_argument("--output", "-o", required=True, help="accepted rows (JSONL, written atomically)")


def _synth(args) -> int:
    from tunelab.synth.pipeline import synth_command

    return synth_command(args.inputs, args.config, args.output, overrides=args.set, teacher=args.teacher,
                         allow_remote=args.allow_remote, max_chunks=args.max_chunks, cache=args.cache)  # fmt: skip


def _review(args) -> int:
    from tunelab.review.server import export_command, serve_command

    return export_command(args.file, args.export) if args.export else serve_command(args.file, args.port, args.grade)


def _review_export(args) -> int:
    from tunelab.review.server import export_command

    return export_command(args.file, args.output)


# --- shared --------------------------------------------------------------------------------------


def _read(args, spec: str):
    """(rows, reader options, text columns, label column) for FILE, honouring asset defaults."""
    from tunelab.assets import resolve_dataset
    from tunelab.data.readers import read_rows

    path, opts = resolve_dataset(spec)
    kwargs = {k: opts[k] for k in ("format", "encoding", "header", "columns", "quoting") if k in opts}
    if args.format:
        kwargs["format"] = args.format
    if args.encoding:
        kwargs["encoding"] = args.encoding
    if args.no_header:
        kwargs["header"] = False
    if args.columns:
        kwargs["columns"] = [c.strip() for c in args.columns.split(",")]
    if args.no_quoting:
        kwargs["quoting"] = False
    rows = read_rows(path, **kwargs)
    text = args.text_column or opts.get("text_column")
    text_cols = [c.strip() for c in text.split(",")] if text else None
    label = args.label_column or opts.get("label_column")
    if rows:
        present = set().union(*(r.keys() for r in rows[:1000]))
        for name, cols in (("--text-column", text_cols or []), ("--label-column", [label] if label else [])):
            missing = [c for c in cols if c not in present]
            if missing:
                raise _error(f"{path}: {name} {', '.join(missing)} is not a column; columns: "
                             f"{', '.join(sorted(k for k in present if not k.startswith('_')))}")  # fmt: skip
    return path, rows, text_cols, label


def _reference_texts(spec: str, text_cols: list[str] | None) -> list[str]:
    """Texts of the --domain-reference file (its own format; the same text column when it has it)."""
    from tunelab.assets import resolve_dataset
    from tunelab.data.clean import guess_text_columns, row_text
    from tunelab.data.readers import read_rows

    path, opts = resolve_dataset(spec)
    rows = read_rows(path, **{k: opts[k] for k in ("format", "encoding", "header", "columns", "quoting") if k in opts})
    if not rows:
        raise _error(f"{path}: the domain reference has no rows")
    cols = text_cols if text_cols and all(c in rows[0] for c in text_cols) else None
    cols = cols or ([opts["text_column"]] if opts.get("text_column") else guess_text_columns(rows, None, str(path)))
    texts = [t for t in (row_text(r, cols) for r in rows) if t.strip()]
    if not texts:
        raise _error(f"{path}: the domain reference has no text in column(s) {', '.join(cols)}")
    return texts


def _error(msg: str):
    from tunelab.errors import TunelabError

    return TunelabError(msg)


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


# --- inspect -------------------------------------------------------------------------------------


def _inspect(args) -> int:
    from tunelab.data.inspect import inspect_rows, public_stats, render_html, render_table
    from tunelab.data.io_atomic import write_json_atomic, write_text_atomic
    from tunelab.data.outputs import check_output

    path, rows, text_cols, label = _read(args, args.file)
    for flag, out in (("--html", args.html), ("--json", args.json)):
        if out:
            check_output(out, inputs=[path], flag=flag)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        from tunelab.assets import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(args.tokenizer)))
    elif args.max_length:
        raise _error("--max-length counts tokens: give --tokenizer too")
    stats = inspect_rows(rows, text_column=text_cols, label_column=label, tokenizer=tokenizer,
                         max_length=args.max_length, near_dup_threshold=args.near_dup_threshold, source=str(path))  # fmt: skip
    print(render_table(stats), end="")
    if args.html:
        print(f"wrote {write_text_atomic(args.html, render_html(stats))}")
    if args.json:
        print(f"wrote {write_json_atomic(args.json, public_stats(stats))}")
    return 0


# --- clean ---------------------------------------------------------------------------------------


def _clean(args) -> int:

    from tunelab.data.clean import CleanOptions, clean_rows, hf_mean_pool_encoder, write_outputs
    from tunelab.data.outputs import check_output

    path, rows, text_cols, label = _read(args, args.file)
    output = check_output(args.output, inputs=[path])
    if args.report:
        check_output(args.report, inputs=[path, output], flag="--report")
    if not rows:
        raise _error(f"{path}: no rows to clean")
    options = CleanOptions(
        text_columns=text_cols, label_column=label, html=not args.no_html, mojibake=not args.no_mojibake,
        keep_newlines=not args.single_line, min_chars=args.min_chars, max_chars=args.max_chars,
        lang=args.lang, min_script_share=args.min_script_share, drop_garbled=not args.keep_garbled,
        exact_dedup=not args.no_exact_dedup, near_dup_threshold=args.near_dup_threshold, pii=not args.no_pii,
        label_conflicts=args.label_conflicts, domain_threshold=args.domain_threshold, progress=True,
    )  # fmt: skip
    if args.pii_types:
        options.pii_types = tuple(t.strip().upper() for t in args.pii_types.split(",") if t.strip())
    if args.domain_reference:
        from tunelab.assets import resolve_model

        options.domain_reference = _reference_texts(args.domain_reference, text_cols)
        options.embed = hf_mean_pool_encoder(resolve_model(args.encoder))
    kept, report = clean_rows(rows, options, source=str(path))
    output, report_path, summary_path = write_outputs(kept, report, output, args.report, input_path=path)

    s = report.summary
    lines = [("rows in", f"{s['rows_in']:,}"), ("rows out", f"{s['rows_out']:,}")]
    lines += [(f"removed: {k}", f"{v:,}") for k, v in s["removed"].items()]
    lines += [(f"changed: {k}", f"{v:,}") for k, v in s["changed_kept"].items()]
    lines += [(f"redacted: {k}", f"{v:,} rows") for k, v in s["pii_rows"].items()]
    if s["label_conflict_groups"]:
        lines.append(("label conflicts", f"{s['label_conflict_groups']:,} groups (see the report)"))
    lines.append(("time", f"{s['seconds']['total']:.1f} s ({s['rows_per_second']:,.0f} rows/s)"))
    print(f"tunelab data clean {path}\n{_table(lines)}")
    print(f"wrote {output}\nwrote {report_path}\nwrote {summary_path}")
    return 0


# --- split ---------------------------------------------------------------------------------------


def _split(args) -> int:
    from tunelab.data.clean import guess_text_columns, row_text
    from tunelab.data.outputs import check_output
    from tunelab.data.split import write_splits

    path, rows, text_cols, label = _read(args, args.file)
    check_output(args.out, inputs=[path], flag="--out", folder=True)
    if not rows:
        raise _error(f"{path}: no rows to split")
    if label is None and "label" in rows[0]:
        label = "label"
    text_cols = text_cols or guess_text_columns(rows, label, str(path))
    summary, written = write_splits(rows, [row_text(r, text_cols) for r in rows], [r.get(label) for r in rows] if label else None,
                                    args.out, validation=args.validation, test=args.test, folds=args.folds, seed=args.seed,
                                    near_dup_threshold=args.near_dup_threshold, source=str(path), label_column=label)
    print(f"tunelab data split {path}")
    print(_table([(p, f"{sum(c.values()):,} rows  " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
                  for p, c in summary["parts"].items()]))  # fmt: skip
    print(f"  duplicate groups kept on one side: {summary['groups_with_several_rows']:,}")
    for w in written:
        print(f"wrote {w}")
    return 0
