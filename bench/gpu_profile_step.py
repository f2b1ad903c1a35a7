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
    for name, attn, fn in [("stock_full_logits", "sdpa", stock), ("tunelab_padded", "sdpa", mine(lambda b: collate(b, 0))),
                           ("tunelab_packed_varlen", varlen.register(), mine(pack))]:
        model.set_attn_implementation(attn)
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
            if i >= 3:
                times.append(time.perf_counter() - t)
        r = {"wall_ms": round(1e3 * statistics.median(times), 2), "tokens_per_s": round(real / statistics.median(times)),
             "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        try:
            r.update(kernel_profile(fn, batches[:3], opt))
        except Exception as err:  # the wall times stand without the profile
            r["profile_error"] = repr(err)[:300]
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


# Host calls that block until the GPU has caught up: each one drains the launch queue.
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy ", "cudaMemcpyAsync", "aten::item", "aten::_local_scalar_dense", "aten::nonzero")


if __name__ == "__main__":
    main()
