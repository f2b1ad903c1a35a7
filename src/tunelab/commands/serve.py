"""`tunelab serve RUN [RUN ...]`: an OpenAI-compatible HTTP server for finished runs.

    TUNELAB_API_KEY=secret tunelab serve runs/spam runs/docqa-ko --port 8000
    curl -H "Authorization: Bearer secret" localhost:8000/v1/classify -d '{"model": "spam", "input": "WIN cash"}'

Listens on 127.0.0.1 unless --host says otherwise. Every route but /health needs the API key
(TUNELAB_API_KEY, or one generated and printed here). See tunelab.serve.app for the routes.
"""

HELP = "serve runs over HTTP (OpenAI-compatible chat/completions for SFT runs, /v1/classify for classifiers)"


def configure(p):
    from tunelab.serve.limits import Limits

    d = Limits()
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or model/ or exported folders); the folder name is the request's `model`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weights' dtype (fp32 gives `tunelab predict`'s exact numbers; fp16 needs a GPU)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="texts classified together, or generation requests decoded together")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests per run; beyond it the server answers 503")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="the most new tokens a generation request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger request bodies get a 413")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request, queue wait included (504 after)")


def run(args) -> int:
    import sys

    import uvicorn

    from tunelab.classify.predict import load_classifier
    from tunelab.errors import TunelabError
    from tunelab.serve.app import create_app
    from tunelab.serve.auth import ENV, api_key
    from tunelab.serve.limits import Limits
    from tunelab.serve.runs import load_runs
    from tunelab.sft.stream import load_generator

    for flag in ("max_batch_size", "max_queue", "max_tokens", "max_body_bytes", "port"):
        if getattr(args, flag) < 1:
            raise TunelabError(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    if args.timeout <= 0 or args.max_wait_ms < 0:
        raise TunelabError("--timeout must be above 0 and --max-wait-ms at least 0")
    limits = Limits(max_body_bytes=args.max_body_bytes, max_tokens=args.max_tokens, timeout_s=args.timeout,
                    max_queue=args.max_queue, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
    loaders = {"classification": load_classifier, "sft": load_generator}  # the task packages' backends
    served = load_runs(args.runs, loaders, args.device, args.dtype, log=lambda line: print(line, file=sys.stderr))
    key, generated = api_key()
    app = create_app(served, key, limits)
    where = f"http://{args.host}:{args.port}"
    print(f"serving {', '.join(served)} at {where}", file=sys.stderr)
    print(f"API key: {key}  (generated; set {ENV} to choose one)" if generated else f"API key: from ${ENV}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: other machines can reach this server (the API key still applies)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=int(args.timeout))
    return 0
