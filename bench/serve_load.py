"""`tunelab serve` under load on this machine, loopback only, with a bounded client (issue 17).

    .venv/bin/python bench/serve_load.py [--cls-requests 10000] [--demo-requests 1000] [--chat-requests 200]

Builds its runs in a scratch folder (a few training steps: serving speed does not depend on how
well a model is trained):
- a MiniLM-L6 classifier (`asset:minilm-l6` on sms-spam) and the demo's SmolLM2-135M classifier
  (`configs/spam-smollm2.yaml`); each served with batching on (the default `--max-batch-size`)
  and off (`--max-batch-size 1`), and sent one-text `POST /v1/classify` requests from 64 client
  threads (each waits for its answer before sending the next: at most 64 in flight);
- a SmolLM2-135M-Instruct SFT run (`configs/sft-smollm2-alpaca.yaml`, LoRA, 2 steps; needs
  `tunelab assets install alpaca-eval`), sent `POST
  /v1/chat/completions` with `stream: true`, greedy, at most 32 new tokens, from 16 client threads.
It prints, per case: requests, errors (any status but 200, or a broken stream), requests/s, p50
and p99 latency; for chat, completion tokens/s (streamed content chunks) and the p50/p99 time to
first token. The client shares the 2 cores with the server, as a caller on the same box would.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNELAB = [sys.executable, "-m", "tunelab.cli"]
KEY = secrets.token_hex(16)


def cli(*args: str) -> None:
    proc = subprocess.run([*TUNELAB, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"tunelab {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`tunelab serve RUN ...` in a child process, ready when /health answers (within `wait_s`);
    its stderr goes to the file `log` if given."""

    def __init__(self, run: Path, *flags: str, device: str = "cpu", wait_s: float = 180, log: Path | None = None):
        self.port, self.log = free_port(), log
        self.proc = subprocess.Popen([*TUNELAB, "serve", str(run), "--port", str(self.port), "--device", device, *flags], cwd=ROOT,
                                     env={**os.environ, "TUNELAB_API_KEY": KEY}, stdout=subprocess.DEVNULL,
                                     stderr=log.open("w") if log else subprocess.DEVNULL)
        deadline = time.time() + wait_s
        while time.time() < deadline:
            try:
                if request(self.port, "GET", "/health", None)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                sys.exit(f"tunelab serve {run} exited with {self.proc.returncode}{self.log_tail()}")
            time.sleep(0.5)
        self.proc.terminate()
        sys.exit(f"the server did not answer /health within {wait_s:g} s{self.log_tail()}")

    def log_tail(self) -> str:
        return f":\n{self.log.read_text()[-2000:]}" if self.log and self.log.is_file() else ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def request(port: int, method: str, path: str, body: dict | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def classify_load(port: int, texts: list[str], concurrency: int) -> dict:
    def one(text: str) -> tuple[bool, float]:
        start = time.perf_counter()
        status, raw = request(port, "POST", "/v1/classify", {"input": text})
        return status == 200 and "label" in raw.decode(), time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, texts))
    wall = time.perf_counter() - start
    latencies = [t for _, t in results]
    return {"requests": len(texts), "errors": sum(not ok for ok, _ in results), "requests_per_s": len(texts) / wall,
            "p50_ms": 1e3 * statistics.median(latencies), "p99_ms": 1e3 * percentile(latencies, 0.99), "wall_s": wall}


def chat_one(port: int, question: str) -> tuple[str, float, float, int]:
    """(outcome: "ok" or what went wrong, time to first content, total time, content chunks) of one
    streamed chat request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start, first, chunks, outcome = time.perf_counter(), None, 0, "stream ended without [DONE]"
    try:
        conn.request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
                     body=json.dumps({"messages": [{"role": "user", "content": question}], "stream": True, "temperature": 0, "max_tokens": 32}))
        r = conn.getresponse()
        if r.status != 200:
            return f"HTTP {r.status}", 0.0, time.perf_counter() - start, 0
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                outcome = "ok" if outcome == "stream ended without [DONE]" else outcome
                break
            event = json.loads(data)
            if "choices" not in event:  # an error event (e.g. the request's timeout): the stream is unfinished
                outcome = f"error event: {event.get('error', {}).get('code') or event.get('error', {}).get('message')}"
                continue
            if event["choices"][0]["delta"].get("content"):
                chunks += 1
                first = first or time.perf_counter() - start
    finally:
        conn.close()
    return outcome, first or 0.0, time.perf_counter() - start, chunks


def chat_load(port: int, questions: list[str], concurrency: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda q: chat_one(port, q), questions))
    wall = time.perf_counter() - start
    firsts = [f for outcome, f, _, n in results if outcome == "ok" and n]
    failures = Counter(outcome for outcome, *_ in results if outcome != "ok")
    return {"requests": len(questions), "errors": sum(failures.values()), "error_kinds": dict(failures), "requests_per_s": len(questions) / wall,
            "tokens_per_s": sum(n for *_, n in results) / wall, "ttft_p50_ms": 1e3 * statistics.median(firsts),
            "ttft_p99_ms": 1e3 * percentile(firsts, 0.99), "p50_ms": 1e3 * statistics.median(t for _, _, t, _ in results), "wall_s": wall}


def spam_texts(n: int) -> list[str]:
    from tunelab.assets.resolve import read_data_spec
    from tunelab.config import DataConfig

    rows, col, _, _ = read_data_spec("asset:sms-spam", DataConfig(train="asset:sms-spam"))
    texts = [str(r[col]) for r in rows if str(r[col]).strip()]
    rng = random.Random(0)
    return [rng.choice(texts) for _ in range(n)]


def show(name: str, r: dict, results: dict, out: Path) -> None:
    """Print a case and write every case so far (a long run keeps what it measured)."""
    results[name] = r
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"{name}: " + ", ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cls-requests", type=int, default=10000, help="requests against the MiniLM classifier, per case")
    ap.add_argument("--demo-requests", type=int, default=1000, help="requests against the demo's SmolLM2 classifier, per case")
    ap.add_argument("--chat-requests", type=int, default=200)
    ap.add_argument("--cases", default="classify,chat", help="which of classify and chat to run")
    ap.add_argument("--timeout", type=float, help="the server's per-request timeout in seconds (default: the server's)")
    ap.add_argument("--out", default="bench/results/serve-load")
    args = ap.parse_args()
    results, out, cases = {}, ROOT / args.out, args.cases.split(",")
    out_file = out / "results.json"
    if out_file.exists():  # a run of some cases keeps the others' figures
        results = json.loads(out_file.read_text())
    with tempfile.TemporaryDirectory(prefix="tunelab-serve-load-") as scratch:
        runs = Path(scratch)
        if "classify" in cases:
            classify_cases(runs, args, results, out)
        if "chat" in cases:
            chat_case(runs, args, results, out)


def classify_cases(runs: Path, args, results: dict, out: Path) -> None:
    cli("train", "configs/spam-smollm2.yaml", "model.name=asset:minilm-l6", "model.pooling=mean", "model.trainable=all",
            f"output_dir={runs / 'minilm'}", "train.max_steps=20")
    cli("train", "configs/spam-smollm2.yaml", f"output_dir={runs / 'demo'}", "train.max_steps=20")
    for run, n in (("minilm", args.cls_requests), ("demo", args.demo_requests)):
        texts = spam_texts(n)
        for batching, flags in (("batching on", ()), ("batching off", ("--max-batch-size", "1"))):
            with Server(runs / run, *flags, *timeout_flag(args)) as server:
                r = classify_load(server.port, texts, 64)
            show(f"classify {run}, {batching}, concurrency 64", r, results, out)


def chat_case(runs: Path, args, results: dict, out: Path) -> None:
    cli("train", "configs/sft-smollm2-alpaca.yaml", f"output_dir={runs / 'chat'}", "data.max_rows=60", "train.max_steps=2",
        "sft.generation.max_rows=1")
    questions = [f"Question {i}: what is a good name for a pet {animal}?" for i, animal in
                 enumerate(random.Random(0).choices(["cat", "dog", "fish", "bird", "rabbit"], k=args.chat_requests))]
    with Server(runs / "chat", *timeout_flag(args)) as server:
        r = chat_load(server.port, questions, 16)
    show("chat smollm2, stream, concurrency 16", r, results, out)


def timeout_flag(args) -> tuple[str, ...]:
    return ("--timeout", str(args.timeout)) if args.timeout else ()


if __name__ == "__main__":
    main()
