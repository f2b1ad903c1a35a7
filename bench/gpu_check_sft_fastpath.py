"""CUDA check of the SFT fast path: packed (varlen/flex/sdpa) == padded, compile, checkpointing, fused AdamW, e2e.

    OUT=out python3 bench/gpu_check_sft_fastpath.py    # on the GPU machine, from the repository root
    OUT=out QUICK=1 python3 bench/gpu_check_sft_fastpath.py    # the packed == padded checks only
"""
import json
import os
import random
import sys
import time

import torch
import transformers as tf

sys.path[:0] = ["src", "."]
from tests.helpers import tiny_tokenizer, write_config  # noqa: E402

from tunelab.model import varlen  # noqa: E402
from tunelab.sft.collate import collate, pack  # noqa: E402
from tunelab.sft.objective import head_is_plain, packed_attention, packing_isolates, sft_loss  # noqa: E402
from tunelab.train.compiling import compile_blocks  # noqa: E402
from tunelab.train.optim import make_optimizer  # noqa: E402

print("torch", torch.__version__, "transformers", tf.__version__, torch.cuda.get_device_name(), flush=True)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = torch.device("cuda")
OUT = os.environ.get("OUT", "/tmp")
report = {}


def cfg_of(arch, vocab=512):
    common = dict(vocab_size=vocab, pad_token_id=0, eos_token_id=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(head_dim=16, sliding_window=16, **common)
    raise ValueError(arch)


def examples(lengths, vocab=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    return out


def to(b):
    return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()}


def loss_grads(model, batch, autocast=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        loss, n = sft_loss(model, batch)
    (loss / n).backward()
    return (loss / n).detach().float(), [p.grad.detach().clone() for p in model.parameters()]


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def maxrel(ga, gb):
    return max(rel(a, b) for a, b in zip(ga, gb))


exs = examples([37, 5, 120, 64, 1, 250, 17, 90])
for arch in ["llama", "qwen2", "gemma3"]:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg_of(arch)).to(dev).train()
    r = {"head_is_plain": head_is_plain(model), "packed_attention": packed_attention(model.config, "cuda")}
    padded, packed = to(collate(exs, 0)), to(pack(exs))
    lp, gp = loss_grads(model, padded)
    for attn in ["sdpa", "flex_attention", varlen.register()]:
        try:
            model.set_attn_implementation(attn)
            r[f"isolates_{attn}"] = packing_isolates(model)
            lk, gk = loss_grads(model, packed)
            r[f"fp32_{attn}_loss_rel"] = rel(lk, lp)
            r[f"fp32_{attn}_grad_rel"] = maxrel(gk, gp)
            if attn == varlen.NAME:  # under bf16 autocast the FlashAttention kernel must run, not the reference path
                reference, varlen._per_example = varlen._per_example, None
            try:
                lb, _ = loss_grads(model, packed, autocast=True)
            finally:
                if attn == varlen.NAME:
                    varlen._per_example = reference
            r[f"bf16_{attn}_loss_rel"] = rel(lb, lp)
        except Exception as err:
            r[f"error_{attn}"] = repr(err)[:400]
        finally:
            model.set_attn_implementation("sdpa")
    report[arch] = r
    print(arch, json.dumps(r), flush=True)

if os.environ.get("QUICK"):
    with open(f"{OUT}/sft_gpu_report.json", "w") as fh:
        json.dump(report, fh, indent=1)
    sys.exit(0)

# compile + flex + checkpointing, rows of changing length
try:
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = tf.AutoModelForCausalLM.from_config(cfg_of("llama")).to(dev).train()
    torch.manual_seed(0)
    comp = tf.AutoModelForCausalLM.from_config(cfg_of("llama")).to(dev).train()
    for m in (eager, comp):
        m.set_attn_implementation("flex_attention")
    comp.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compile_blocks(comp)
    opt = make_optimizer(comp, 1e-3, 0.0)
    r = {"fused": bool(opt.defaults.get("fused"))}
    diffs, times = [], []
    for step in range(8):
        batch = to(pack(examples([random.Random(step).randint(5, 300) for _ in range(6)], seed=step)))
        t = time.perf_counter()
        lc, gc = loss_grads(comp, batch)
        torch.cuda.synchronize()
        times.append(round(time.perf_counter() - t, 3))
        le, ge = loss_grads(eager, batch)
        diffs.append((rel(lc, le), maxrel(gc, ge)))
    r["loss_grad_rel_per_step"] = [(f"{a:.1e}", f"{b:.1e}") for a, b in diffs]
    r["seconds_per_step"] = times
    from torch._dynamo.utils import counters

    r["dynamo_stats"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "graph_break")}
    report["compile"] = r
    print("compile", json.dumps(r)[:3000], flush=True)
except Exception as err:
    import traceback

    traceback.print_exc()
    report["compile_error"] = repr(err)[:1000]


# end to end: tunelab train on CUDA, fast path (defaults) vs padded + no compile
def e2e(name, **opts):
    from tunelab.config import load_config
    from tunelab.sft.run import train_sft

    root = "/tmp/e2e"
    os.makedirs(root, exist_ok=True)
    tok = tiny_tokenizer()
    folder = f"{root}/model"
    if not os.path.isdir(folder):
        torch.manual_seed(0)
        config = tf.Qwen2Config(vocab_size=32768, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                                num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                tie_word_embeddings=True)
        tf.Qwen2ForCausalLM(config).save_pretrained(folder)
        tok.save_pretrained(folder)
        rng = random.Random(0)
        words = "the refund period is days from delivery capital of France Paris answer question context".split()
        with open(f"{root}/rows.jsonl", "w") as fh:
            for _ in range(400):
                p = " ".join(rng.choice(words) for _ in range(rng.randint(10, 300)))
                c = " ".join(rng.choice(words) for _ in range(rng.randint(2, 80)))
                fh.write(json.dumps({"prompt": p, "completion": " " + c}) + "\n")
    data = opts.pop("data", {})
    train = {"max_steps": 40, "batch_size": 8, "lr": 1e-4, "warmup": 0, "eval_every": 20, "seed": 1, **opts}
    cfg = {"task": "sft", "output_dir": f"{root}/{name}", "data": {"train": f"{root}/rows.jsonl", "max_length": 1024,
           "split": {"validation": 0.1, "test": 0.0}, **data}, "model": {"name": folder, "trainable": "all"}, "train": train,
           "sft": {"template": "alpaca", "generation": {"max_new_tokens": 2, "max_rows": 1}}}
    lines = []
    s = train_sft(load_config(write_config(__import__("pathlib").Path(f"{root}/{name}.yaml"), cfg)), force=True, log=lines.append)
    keep = {k: s.get(k) for k in ("packing", "train_seconds", "train_tokens_per_second", "peak_memory_mb", "precision", "train", "validation")}
    keep["log"] = [x for x in lines if any(w in x for w in ("packing", "compile", "loss:", "plan", "checkpointing"))]
    return keep


for name, opts in [("fast", {}), ("padded", {"data": {"packing": "off"}, "compile": "off"}),
                   ("fast_budget_ckpt", {"max_tokens_per_micro_batch": 2048, "gradient_checkpointing": True})]:
    try:
        t = time.perf_counter()
        report[f"e2e_{name}"] = e2e(name, **opts)
        report[f"e2e_{name}"]["wall"] = round(time.perf_counter() - t, 1)
    except Exception as err:
        import traceback

        traceback.print_exc()
        report[f"e2e_{name}"] = {"error": repr(err)[:1000]}
    print(name, json.dumps(report[f"e2e_{name}"]), flush=True)

with open(f"{OUT}/sft_gpu_report.json", "w") as fh:
    json.dump(report, fh, indent=1)
