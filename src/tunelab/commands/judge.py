"""`tunelab judge ANSWERS`: grade generated answers with an LLM judge, and measure how far to trust it.

    tunelab judge runs/docqa                                     # the run's test answers, doc-QA rubric
    tunelab judge answers.jsonl --rubric instruct --judge asset:qwen2.5-coder-0.5b-instruct
    tunelab judge answers.jsonl --human graded.csv               # + agreement with people
    tunelab judge answers.jsonl --human answers.review.sqlite    # people's grades from the review page
    tunelab judge base.jsonl --against tuned.jsonl               # pairwise, both orders
    tunelab judge answers.jsonl --endpoint http://127.0.0.1:11434/v1 --judge qwen2.5:7b

The workflow is `tunelab.judge.workflow.judge_files`; this module parses and prints.
"""

HELP = "grade answers with an LLM judge on a rubric (or compare two answer files), with agreement against human scores"


def configure(p):
    p.add_argument("answers", help="a run folder (its test_predictions.jsonl) or a JSONL/CSV file with prompt and answer fields")
    p.add_argument("--against", help="a second answer file (or run) with the same questions: pairwise comparison, both orders")
    p.add_argument("--rubric", help="docqa, instruct, or a rubric YAML file (default: docqa for document answers, else instruct)")
    p.add_argument("--judge", help="local: asset:NAME or a model folder (default: the strongest installed instruct asset); "
                                   "with --endpoint: the model name the endpoint serves")  # fmt: skip
    p.add_argument("--endpoint", help="an OpenAI-compatible base URL (http://127.0.0.1:8080/v1); key, if any, in TUNELAB_JUDGE_API_KEY")
    p.add_argument("--allow-remote", action="store_true", help="allow an endpoint that is not on this machine (the answers leave it)")
    p.add_argument("--human", help="human scores: a file with a --human-column, or FILE.review.sqlite from the review page's grading mode")
    p.add_argument("--human-column", default="human_score", help="column of --human holding the scores (default human_score)")
    p.add_argument("--output", help="output folder (default: RUN/judge-RUBRIC or ANSWERS.judge-RUBRIC/)")
    p.add_argument("--lang", default="auto", choices=["auto", "en", "ko"], help="prompt language (auto: Korean when the row has Hangul)")
    p.add_argument("--limit", type=int, help="judge only the first N rows")
    p.add_argument("--repeats", type=int, default=1, help="judge N times with sampling to report self-consistency (needs --temperature > 0)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy, reproducible")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="local judge: prompts generated together")
    p.add_argument("--concurrency", type=int, default=4, help="endpoint: requests in flight")
    p.add_argument("--max-new-tokens", type=int, default=96)


def run(args) -> int:
    from tunelab.errors import TunelabError
    from tunelab.judge.report import SMALL, agreement_rows, summary_lines
    from tunelab.judge.workflow import judge_files

    for flag in ("limit", "repeats", "batch_size", "concurrency", "max_new_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise TunelabError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= args.temperature <= 2:
        raise TunelabError(f"--temperature must be between 0 and 2, got {args.temperature}")
    out_dir, summary = judge_files(args.answers, against=args.against, rubric=args.rubric, judge=args.judge, endpoint=args.endpoint,
                                   allow_remote=args.allow_remote, human=args.human, human_column=args.human_column,
                                   output=args.output, lang=args.lang, limit=args.limit, repeats=args.repeats,
                                   temperature=args.temperature, seed=args.seed, batch_size=args.batch_size,
                                   concurrency=args.concurrency, max_new_tokens=args.max_new_tokens)  # fmt: skip
    width = max(len(k) for k, _ in summary_lines(summary))
    for key, value in summary_lines(summary):
        print(f"{key:<{width}}  {value}")
    if summary.get("human"):
        print(f"agreement with {summary['human']['source']} ({summary['human']['agreement']['n']} rows, 95 % bootstrap intervals):")
        for name, value, interval in agreement_rows(summary["human"]["agreement"]):
            print(f"  {name:<24} {value:>6}  {interval}")
        if summary["human"]["agreement"]["n"] < SMALL:
            print(f"  (fewer than {SMALL} rows scored by both: the intervals are rough)")
    print(f"wrote {out_dir}/ (report.md, report.html, {'pairs' if summary['mode'] == 'pairwise' else 'scores'}.jsonl, summary.json)")
    return 0
