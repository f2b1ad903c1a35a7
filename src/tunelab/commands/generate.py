"""`tunelab generate RUN --prompt TEXT | --input FILE --output FILE`: answers from an SFT run.

    tunelab generate runs/docqa-ko --prompt "보험금 청구 기한은?" --context policy.txt
    tunelab generate runs/alpaca --input questions.jsonl --output answers.jsonl --max-new-tokens 64

Prompts are built with the template saved in the run (exactly as in training), batched with left
padding and decoded with the KV cache; greedy unless --sample. Defaults come from the run's
`sft.generation` settings.
"""

HELP = "generate answers with a fine-tuned (SFT) run: --prompt TEXT, or --input FILE --output FILE (batched)"


def needs_document(run) -> None:
    """Stop early (before loading the model) when a document-QA run gets no --context."""
    from tunelab.errors import TunelabError
    from tunelab.sft.evaluate import refusal_strings
    from tunelab.sft.templates import load_template
    from tunelab.train.runtime import model_dir_of

    template = load_template(model_dir_of(run))
    if refusal_strings(template):
        raise TunelabError(f"{run}: this run answers questions about a document (template "
                           f"{getattr(template, 'name', 'chat')}); pass --context TEXT or --context @FILE")


def configure(p):
    from tunelab.commands.options import add_decoding_options

    p.add_argument("run", help="SFT run folder (or its model/ folder, or an exported folder)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a question or instruction (repeat for several, generated as one batch)")
    src.add_argument("--input", help="a .txt file (one prompt per line) or JSONL/CSV/Parquet rows in an SFT format (answers, if any, are ignored)")
    p.add_argument("--context", default=None, help="with --prompt: the document for a document-QA run (text, or @FILE)")
    p.add_argument("--output", default="-", help="with --input: JSONL output (each row plus 'generated'), or '-' for stdout")
    p.add_argument("--format", default="auto", choices=["auto", "alpaca", "prompt_completion", "messages", "sharegpt", "docqa"], help="row format of --input")
    p.add_argument("--batch-size", type=int, default=8)
    add_decoding_options(p)


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from tunelab.commands.options import decoding, read_context
    from tunelab.errors import TunelabError
    from tunelab.sft.export import load_sft
    from tunelab.sft.formats import row_to_messages
    from tunelab.sft.generate import generate

    if args.prompt and args.output != "-":
        raise TunelabError("--output goes with --input; with --prompt the answers are printed")
    context = read_context(args.context)
    if args.prompt and context is None:
        needs_document(args.run)
    if args.prompt:
        rows = [{"question": q, "context": context} if context is not None else {"prompt": q} for q in args.prompt]
    elif Path(args.input).suffix.lower() == ".txt":
        path = Path(args.input)
        if not path.is_file():
            raise TunelabError(f"input file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [{"prompt": t, "_line": i} for i, t in enumerate(lines, start=1) if t.strip()]
    else:
        from tunelab.data.readers import read_rows

        rows = read_rows(args.input)
    source = args.input or "--prompt"
    fmt = args.format if args.input else "auto"
    conversations = [row_to_messages(r, fmt, source=source, require_answer=False) for r in rows]
    lm = load_sft(args.run, args.device)
    gen = decoding(args, lm.meta)
    answers = generate(lm.model, lm.tokenizer, lm.template, conversations, max_new_tokens=gen["max_new_tokens"],
                       do_sample=gen["do_sample"], temperature=gen["temperature"], top_p=gen["top_p"],
                       seed=gen.get("seed"), batch_size=args.batch_size)
    if args.prompt:
        for i, answer in enumerate(answers):
            if len(answers) > 1:
                print(f"[{i + 1}] ", end="")
            print(answer)
        return 0
    out = [{**{k: v for k, v in r.items() if k != "_line"}, "generated": a} for r, a in zip(rows, answers)]
    if args.output == "-":
        for r in out:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        from tunelab.data.io_atomic import write_jsonl_atomic

        write_jsonl_atomic(args.output, out)
        print(f"wrote {len(out)} answers to {args.output}", file=sys.stderr)
    return 0
