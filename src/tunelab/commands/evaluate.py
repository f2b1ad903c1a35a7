"""`tunelab eval RUN --data FILE`: score a trained run on a labelled file.

Classifiers: accuracy, macro-F1, per class, confusion matrix. SFT runs (dispatched on the run's
tunelab.json): answer loss and perplexity, then generated answers scored (exact match, token F1,
ROUGE-L, chrF; refusal precision/recall for document QA). The workflows are
`tunelab.classify.evaluate.evaluate_file` and `tunelab.sft.evaluate.evaluate_file`.

    tunelab eval runs/docqa --data test.jsonl --predictions preds.jsonl --judge-rubric docqa

With --judge-rubric an SFT run's generated answers are also graded by an LLM judge
(`tunelab.judge.workflow.judge_files`, as `tunelab judge PREDICTIONS` would; its folder is
PREDICTIONS.judge-RUBRIC/) and the judge's mean score joins the scores.
"""

HELP = "evaluate a trained run on a labelled data file (classification: accuracy, macro-F1...; sft: loss, ROUGE-L, chrF, refusals)"


def configure(p):
    from tunelab.commands.options import add_threads_option

    p.add_argument("run", help="run folder (or its model/ folder)")
    p.add_argument("--data", required=True, help="labelled CSV/TSV/JSONL/Parquet file, or asset:NAME")
    p.add_argument("--text-column", default=None, help="text column (default: as in the run's config, else 'text')")
    p.add_argument("--label-column", default=None, help="label column (default: as in the run's config, else 'label')")
    p.add_argument("--output", default=None, help="write the scores as JSON here")
    p.add_argument("--batch-size", type=int, default=32)
    add_threads_option(p)
    p.add_argument("--max-rows", type=int, default=None, help="sft: generate answers for at most this many rows")
    p.add_argument("--max-new-tokens", type=int, default=None, help="sft: most new tokens per answer (default: the run's)")
    p.add_argument("--predictions", default=None, help="sft: write prompt/reference/generated rows as JSONL here")
    p.add_argument("--judge-rubric", default=None, help="sft: also grade the answers with an LLM judge on this rubric (docqa, instruct or YAML; needs --predictions)")
    p.add_argument("--judge", default=None, help="sft, with --judge-rubric: the judge model, as in `tunelab judge --judge`")
    p.add_argument("--judge-endpoint", default=None, help="sft, with --judge-rubric: an OpenAI-compatible base URL for the judge")
    p.add_argument("--allow-remote", action="store_true", help="allow a judge endpoint that is not on this machine")


def run(args) -> int:
    import json

    from tunelab.commands.options import apply_threads
    from tunelab.data.io_atomic import write_jsonl_atomic, write_text_atomic
    from tunelab.data.outputs import check_output
    from tunelab.errors import TunelabError
    from tunelab.sft.export import is_sft_run

    if args.batch_size < 1:
        raise TunelabError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise TunelabError(f"--max-new-tokens {args.max_new_tokens}: expected at least 1")
    for flag, out in (("--output", args.output), ("--predictions", args.predictions)):
        if out:
            check_output(out, inputs=[args.data], flag=flag)
    threads = apply_threads(args)
    if args.judge_rubric:
        from tunelab.judge.judges import build_judge
        from tunelab.judge.rubrics import load_rubric

        if not args.predictions or not is_sft_run(args.run):
            raise TunelabError("--judge-rubric grades the answers of an SFT run: it needs --predictions FILE (the judge reads it)")
        load_rubric(args.judge_rubric)  # bad rubric, remote endpoint without --allow-remote: stop before generating
        build_judge(args.judge, endpoint=args.judge_endpoint, allow_remote=args.allow_remote)

    if is_sft_run(args.run):
        from tunelab.sft.evaluate import evaluate_file, format_scores

        result = evaluate_file(args.run, args.data, args.batch_size, args.max_rows, args.max_new_tokens)
        scores = result["scores"]
        print(f"{result['name']}: {result['rows']} rows (answers generated for {len(result['predictions'])})")
        print(format_scores(scores))
        if args.predictions:
            write_jsonl_atomic(args.predictions, result["predictions"])
        if args.judge_rubric:
            from tunelab.judge.workflow import judge_files

            folder, judged = judge_files(args.predictions, rubric=args.judge_rubric, judge=args.judge, endpoint=args.judge_endpoint,
                                         allow_remote=args.allow_remote)  # fmt: skip
            scores["judge"] = {k: judged[k] for k in ("judge", "rubric", "rubric_version", "scale", "mean_score", "scored", "unparseable")}
            print(f"judge ({judged['judge']}, rubric {judged['rubric']}): mean {judged['mean_score']} over {judged['scored']} answers, "
                  f"{judged['unparseable']} unparseable; report in {folder}/")  # fmt: skip
    else:
        from tunelab.classify.evaluate import evaluate_file, format_report
        from tunelab.commands.options import rate_line

        scores, name, n, seconds, device = evaluate_file(args.run, args.data, args.text_column, args.label_column, args.batch_size)
        print(f"{name}: {rate_line('scored', n, seconds, threads, device)}")
        print(format_report(scores))
    if args.output:
        write_text_atomic(args.output, json.dumps(scores, indent=1, ensure_ascii=False))
    return 0
