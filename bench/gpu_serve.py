"""`tunelab serve` classification on the GPU: requests/s at concurrency 256 against one request at a time (issue 17).

    python3 bench/gpu_serve.py --out OUT [--shape smollm2-135m] [--requests 20000] [--baseline-requests 500] [--dtype bf16] [--tiny]

(on the GPU machine with tunelab's src/ and the carried wheels, fastapi and uvicorn among them, on
PYTHONPATH, as bench/device_sweep.sh sets it). No weights are needed: the classifier is a random-init
backbone of a real shape (bench/gpu_fastpath.py's SHAPES; default the demo's SmolLM2-135M, `--shape
qwen2-0.5b` for a larger one) with gpu_fastpath's made-up BPE tokenizer, trained by `tunelab train
configs/spam-smollm2.yaml` for 20 steps (--train-steps) on 400 made-up two-label rows of 10-120
tokens (serving speed does not depend on how well a model is trained). The run is then served by
`tunelab serve RUN --device cuda --dtype bf16`, one server with batching on for (a) and one with it
off for (b) then (c), and sent one-text `POST /v1/classify` requests (texts of 10-120 tokens) from
client threads on the same machine, each waiting for its answer before sending the next (at most
`concurrency` requests in flight, a new connection per request):
  (a) batching on (the default --max-batch-size, 32), concurrency 256, --requests of them;
  (b) batching off (--max-batch-size 1), concurrency 256, --requests of them;
  (c) the baseline: batching off, concurrency 1 (one request at a time), --baseline-requests of them.
The server's default --max-queue (64 waiting requests) would answer 503 to most of 256 concurrent
requests, so both servers get --max-queue 256 (no more can wait: the client keeps at most 256 in
flight). Before each case, a few requests at its concurrency warm the server up (CUDA's lazy
loading, kernel choice) and are not counted.

Printed per case, and written to OUT/results.json after every case: requests, errors (any status
but 200), requests/s (requests over the wall time of the case), p50 and p99 latency (send to
answer, connection included), client_cpu and server_cpu (CPU seconds of the client process and of
the server process over the wall time; a server_cpu near 1.0 means the server's Python, one event
loop and one model worker sharing the GIL, is the bound rather than the GPU); then the speedups:
(a) over (c) is what batching plus concurrency buys over serving one request at a time, (a) over
(b) is batching's own share at the same concurrency. The servers' stderr (model load lines,
errors) goes to OUT/server-batching-on.log and OUT/server-batching-off.log. `--tiny` runs the same
code with gpu_fastpath's tiny shapes on the CPU in well under a minute: a check of the script, not
a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import gpu_fastpath
import serve_load

CONCURRENCY = 256
SERVERS = {  # server: (flags of `tunelab serve`, its cases in order: (case, name, concurrency))
    "batching-on": ((), [("a", "batching on, concurrency 256", CONCURRENCY)]),
    "batching-off": (("--max-batch-size", "1"), [("b", "batching off, concurrency 256", CONCURRENCY),
                                                 ("c", "batching off, concurrency 1 (baseline)", 1)]),
}


def train_run(work: Path, shape: str, tiny: bool, device: str, steps: int) -> Path:
    """A random-init `shape` classifier trained for `steps` steps on made-up rows: the run folder."""
    tokenizer = gpu_fastpath.build_tokenizer(work / "tokenizer")
    model = gpu_fastpath.make_model_dir(work / "models", shape, tokenizer, tiny)
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in gpu_fastpath.make_rows("classification", 400, 10, 120)))
    run = work / "run"
    serve_load.cli("train", "configs/spam-smollm2.yaml", f"model.name={model}", f"data.train={data}", f"output_dir={run}",
                   f"train.max_steps={steps}", f"train.device={device}")
    return run


def request_texts(n: int, seed: int) -> list[str]:
    return [r["text"] for r in gpu_fastpath.make_rows("classification", n, 10, 120, seed=seed)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(server: serve_load.Server, texts: list[str], concurrency: int) -> dict:
    """classify_load after a warm-up, with the client's and the server's CPU use over the case."""
    warmup = request_texts(max(10, min(2 * concurrency, len(texts) // 10)), seed=99)
    serve_load.classify_load(server.port, warmup, concurrency)
    client, busy = time.process_time(), cpu_seconds(server.proc.pid)
    r = serve_load.classify_load(server.port, texts, concurrency)
    r["client_cpu"] = (time.process_time() - client) / r["wall_s"]
    r["server_cpu"] = (cpu_seconds(server.proc.pid) - busy) / r["wall_s"]
    return {"concurrency": concurrency, **r}


def machine(device: str) -> dict:
    import torch

    gpu = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else "none (CPU)"
    return {"gpu": gpu, "cpu_cores": os.cpu_count(), "cpu_cores_usable": len(os.sched_getaffinity(0)), "torch": torch.__version__}


def speedups(results: dict) -> dict:
    rate = {case: results[f"({case}) {name}"]["requests_per_s"] for _, cases in SERVERS.values() for case, name, _ in cases}
    return {"a_over_c": rate["a"] / rate["c"], "a_over_b": rate["a"] / rate["b"], "b_over_c": rate["b"] / rate["c"]}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for results.json and the server logs")
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(gpu_fastpath.SHAPES))
    ap.add_argument("--requests", type=int, help="requests of cases (a) and (b) (default 20000; 200 with --tiny)")
    ap.add_argument("--baseline-requests", type=int, help="requests of case (c) (default 500; 50 with --tiny)")
    ap.add_argument("--device", help="where to train and serve (default cuda; cpu with --tiny)")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="the served weights' dtype (default bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--train-steps", type=int, help="training steps of the served run (default 20; 4 with --tiny)")
    ap.add_argument("--wait-s", type=float, default=180, help="how long each server may take to answer /health (model load)")
    ap.add_argument("--tiny", action="store_true", help="gpu_fastpath's tiny shapes on the CPU, few requests: check the script")
    args = ap.parse_args()
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.requests = args.requests or (200 if args.tiny else 20000)
    args.baseline_requests = args.baseline_requests or (50 if args.tiny else 500)
    args.train_steps = args.train_steps or (4 if args.tiny else 20)
    return args


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(args.device), "setup": {"shape": args.shape, "tiny": args.tiny, "device": args.device, "dtype": args.dtype}}
    print(", ".join(f"{k} {v}" for k, v in {**results["machine"], **results["setup"]}.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="tunelab-gpu-serve-") as scratch:
        run = train_run(Path(scratch), args.shape, args.tiny, args.device, args.train_steps)
        for label, (flags, cases) in SERVERS.items():
            with serve_load.Server(run, *flags, "--dtype", args.dtype, "--max-queue", str(max(64, CONCURRENCY)), device=args.device,
                                   wait_s=args.wait_s, log=out / f"server-{label}.log") as server:
                for case, name, concurrency in cases:
                    texts = request_texts(args.requests if concurrency > 1 else args.baseline_requests, seed=ord(case))
                    serve_load.show(f"({case}) {name}", measure(server, texts, concurrency), results, out)
    serve_load.show("speedup", speedups(results), results, out)


if __name__ == "__main__":
    main()
