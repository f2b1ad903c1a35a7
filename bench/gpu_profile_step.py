"""Where one SFT training step spends its time on the GPU: wall time against GPU-busy time.

    python bench/gpu_profile_step.py --out OUT [--layers 24] [--steps 20]

A Qwen2-0.5B-shaped model (random init, fp32 weights, bf16 autocast, fused AdamW), batch 8 of
prompt+answer rows 64-1024 tokens long (the rows of bench/gpu_fastpath.py case a), three ways:
the stock loss (the model's own full logits, padded), tunelab's padded step (chunked LM head on the
answer tokens) and tunelab's packed step (one row, varlen attention). For each: the median wall
time of a step after 3 warm-up steps, and from torch.profiler the summed CUDA kernel time of a
step and its largest kernels. Wall much above kernel time means the GPU waits on the host
(kernel launches, Python), which compile or CUDA graphs address; kernel time itself is what
packing and fewer FLOPs address.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src")]


def rows(n: int, lo: int, hi: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        total = rng.randint(lo, hi)
        answer = max(8, total // 4)
        ids = [rng.randrange(3, vocab) for _ in range(total)]
        out.append({"input_ids": ids, "labels": [-100] * (total - answer) + ids[total - answer:]})
    return out


def main() -> None:
    import transformers as tf

    from tunelab.model import varlen
    from tunelab.sft.collate import collate, pack
    from tunelab.sft.objective import sft_loss
    from tunelab.train.optim import make_optimizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true", help="also the packed and padded steps with compiled blocks (first steps timed apart)")
    ap.add_argument("--only-compiled", action="store_true", help="with --compile: skip the eager variants")
    args = ap.parse_args()
    dev = torch.device("cuda")
    config = tf.Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers, num_attention_heads=14, num_key_value_heads=2,
                            vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True, pad_token_id=0)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(dev).train()
    opt = make_optimizer(model, 1e-5, 0.0)
    batches = [rows(8, 64, 1024, config.vocab_size, seed=s) for s in range(args.steps + 3)]
    real = statistics.mean(sum(len(r["input_ids"]) for r in b) for b in batches)

    def stock(b):
        x = collate(b, 0)
        labels = x["labels"].masked_fill(x["attention_mask"] == 0, -100)
        return model(input_ids=x["input_ids"].to(dev), attention_mask=x["attention_mask"].to(dev), labels=labels.to(dev), use_cache=False).loss

    def mine(batch_of):
        def step(b):
            x = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch_of(b).items()}
            loss, n = sft_loss(model, x)
            return loss / n
        return step

    report = {"real_tokens_per_step": real, "layers": args.layers}
    padded, packed = mine(lambda b: collate(b, 0)), mine(pack)
    variants = [("stock_full_logits", "sdpa", stock, False), ("tunelab_padded", "sdpa", padded, False),
                ("tunelab_packed_varlen", varlen.register(), packed, False)]
    if args.compile:
        variants += [("tunelab_packed_varlen_compiled", varlen.NAME, packed, True), ("tunelab_padded_compiled", "sdpa", padded, True)]
    for name, attn, fn, compiled in variants:
        if args.only_compiled and not compiled:
            continue
        model.set_attn_implementation(attn)
        if compiled:
            from tunelab.train.compiling import compile_blocks, uncompile_blocks

            torch._dynamo.reset()
            compile_blocks(model)
        times = []
        for i, b in enumerate(batches):
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast("cuda", torch.bfloat16):
                loss = fn(b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        steady = times[3:]
        r = {"wall_ms": round(1e3 * statistics.median(steady), 2), "mean_ms": round(1e3 * statistics.mean(steady), 2),
             "first_steps_s": [round(x, 2) for x in times[:3]], "tokens_per_s": round(real / statistics.median(steady)),
             "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        if compiled:
            from torch._dynamo.utils import counters

            r["dynamo"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "graph_break")}
        try:
            r.update(kernel_profile(fn, batches[:3], opt))
        except Exception as err:  # the wall times stand without the profile
            r["profile_error"] = repr(err)[:300]
        if not compiled:
            r["sync_sites"] = sync_sites(fn, batches[0], opt)
        else:
            try:
                r["item_stacks"] = item_stacks(fn, batches[1], opt)
            except Exception as err:
                r["item_stacks_error"] = repr(err)[:300]
            uncompile_blocks(model)
        report[name] = r
        torch.cuda.reset_peak_memory_stats()
        print(name, json.dumps(r), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "profile_step.json").write_text(json.dumps(report, indent=1))


def kernel_profile(fn, batches, opt) -> dict:
    """Summed CUDA kernel time per step, kernel count and the largest kernels, over len(batches) steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for b in batches:
            with torch.autocast("cuda", torch.bfloat16):
                loss = fn(b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
    n = len(batches)
    averages = prof.key_averages()
    events = [e for e in averages if e.device_type.name == "CUDA"]
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:8]
    host = sorted((e for e in averages if e.device_type.name == "CPU"), key=lambda e: -e.self_cpu_time_total)[:15]
    waits = [e for e in averages if any(w in e.key for w in SYNCS)]
    return {"kernel_ms": round(sum(e.self_device_time_total for e in events) / 1e3 / n, 2),
            "kernels_per_step": sum(e.count for e in events) // n,
            "top_kernels_ms": {e.key[:70]: round(e.self_device_time_total / 1e3 / n, 2) for e in top},
            # where the host's time goes (self time, per step), and what makes it wait for the GPU
            "top_host_ops_ms": {e.key[:70]: [round(e.self_cpu_time_total / 1e3 / n, 2), e.count // n] for e in host},
            "host_waits_per_step": {e.key[:70]: [round(e.self_cpu_time_total / 1e3 / n, 2), e.count // n] for e in waits}}


def sync_sites(fn, batch, opt) -> dict:
    """Where one step makes the host wait for the GPU: torch's sync debug mode warns at each
    synchronising call; the innermost frame of tunelab or transformers code names the site."""
    import traceback
    import warnings

    sites: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if ("tunelab" in f.filename or "transformers" in f.filename or "bench" in f.filename)]
        site = f"{frames[-1].filename.split('/')[-1]}:{frames[-1].lineno} {frames[-1].line}"[:120] if frames else f"{filename}:{lineno}"
        sites[site] = sites.get(site, 0) + 1

    old = warnings.showwarning
    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            with torch.autocast("cuda", torch.bfloat16):
                loss = fn(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = old
    return sites


def item_stacks(fn, batch, opt, depth: int = 8) -> list:
    """Where a compiled step reads tensor values on the host (`aten::item` and its kernel
    `_local_scalar_dense`; sync debug mode does not see these inside compiled code): the Python
    stack of each such call from the profiler's Python tracer, innermost frames first, with the
    source line of each frame whose file path is absolute (generated inductor code included),
    grouped and counted."""
    import linecache
    import re

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        with torch.autocast("cuda", torch.bfloat16):
            loss = fn(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    groups: dict[tuple, int] = {}
    for e in prof.events():
        if e.name != "aten::item":
            continue
        frames, parent = [], e.cpu_parent
        while parent is not None and len(frames) < depth:  # the Python tracer's frames are the op's parents
            m = re.match(r"(.+)\((\d+)\): (.+)", parent.name)
            if m:
                path = m.group(1) if m.group(1).startswith("/") else ""
                line = linecache.getline(path, int(m.group(2))).strip()[:100] if path else ""
                frames.append(f"{parent.name[-110:]} | {line}")
            parent = parent.cpu_parent
        groups[tuple(frames)] = groups.get(tuple(frames), 0) + 1
    return [{"count": n, "stack": list(k)} for k, n in sorted(groups.items(), key=lambda kv: -kv[1])[:8]]


# Host calls that block until the GPU has caught up: each one drains the launch queue.
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy ", "cudaMemcpyAsync", "aten::item", "aten::_local_scalar_dense", "aten::nonzero")


if __name__ == "__main__":
    main()
