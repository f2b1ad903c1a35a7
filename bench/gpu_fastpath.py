"""The GPU fast path against the stock Hugging Face path, side by side on identical rows, in one run.

    python bench/gpu_fastpath.py --out OUT [--cases a,b,c,d,e] [--tiny] [--compile] [--graphs] [--auto] [--liger] [--budgets 2048,4096]

Cases (issue 15), random-init models of real shapes, bf16:
  (a) full SFT, Qwen2-0.5B shape, batch 8, prompt+answer 64-1024 tokens
  (b) LoRA r=16 (all linear layers) SFT, same shape and rows
  (c) GPT-2 124M classification, batch 32, lengths 10-120
  (d) SmolLM2-135M classification, batch 32, lengths 10-120
  (e) Qwen2-0.5B classification, batch 8, lengths 128-1024
Each case runs (1) the stock path: transformers Trainer (+ PEFT for LoRA), SDPA, dynamic padding
to the longest in the batch; (2) `tunelab train` in process with padded micro-batches (data.packing
off, train.compile off; fused AdamW, chunked LM-head loss); with --auto, also both switches on auto
(the defaults, `tunelab.train.fastpath`); (3) the same with data.packing on (padding-free rows; on CUDA
varlen attention, `tunelab.model.varlen`); (4) with --compile, padded and packed also with train.compile
on (SFT and classification); (5) with --liger, packed again after Liger-Kernel's Triton RMSNorm, RoPE and SwiGLU replaced the
model's own (an experiment: is the step launch-bound enough that fused kernels pay?); (6) with
--budgets, padded and packed with train.max_tokens_per_micro_batch at each value; (7) with --graphs,
packed with train.cuda_graphs on (each micro-batch one replayed CUDA graph), compiled too with --compile. A variant
that fails prints its error and the run goes on. Reported: real (non-pad) tokens/s over the training steps, first to last (CUDA-synchronised;
set-up, validation and checkpoint writes left out of both paths, compile time included), MFU,
peak GPU memory, the mean training loss of the last 10 steps.

MFU = 6 * N * tokens/s / 790e12 for full training and 4 * N for LoRA (frozen weights get no weight
gradient), N = parameters of the linear layers that every real token goes through (the LM head
counted once; the embedding lookup not counted); 790 TFLOP/s is the bf16 matrix rate measured on
this H200 (`../shared/design/anchors.md`). tunelab runs the LM head only on answer tokens, so its
true FLOPs are lower than counted: the same count for both paths keeps the ratio a speed ratio.

The tokenizer is a byte-level BPE built here over 3,000 made-up words (one token each after a space);
the models keep their real vocabulary sizes (151,936 for Qwen2), which is what the LM head costs.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

PEAK_FLOPS = 790e12
SHAPES = {
    "qwen2-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                 vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True)),
    "gpt2-124m": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)),
}
TINY = {  # --tiny: the same code on a CPU in seconds
    "qwen2-0.5b": ("qwen2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=20000, tie_word_embeddings=True)),
    "gpt2-124m": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024, vocab_size=20000)),
    "smollm2-135m": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=20000, tie_word_embeddings=True)),
}
CASES = {  # case: (task, shape, trainable, batch, min tokens, max tokens)
    "a": ("sft", "qwen2-0.5b", "all", 8, 64, 1024),
    "b": ("sft", "qwen2-0.5b", "lora", 8, 64, 1024),
    "c": ("classification", "gpt2-124m", "all", 32, 10, 120),
    "d": ("classification", "smollm2-135m", "all", 32, 10, 120),
    "e": ("classification", "qwen2-0.5b", "all", 8, 128, 1024),
}
_rng = random.Random(7)
WORDS = sorted({"".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(3, 7))) for _ in range(3000)})


def build_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (the kind Qwen2/Llama/GPT-2 load as their own class in
    transformers 5) trained until every word of WORDS, after a space, is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=20000, special_tokens=["<pad>", "<eos>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(0)
    tok.train_from_iterator([" ".join(rng.sample(WORDS, 200)) for _ in range(2000)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return fast


def make_model_dir(root: Path, shape: str, tokenizer, tiny: bool) -> Path:
    import transformers as tf

    kind, kw = (TINY if tiny else SHAPES)[shape]
    folder = root / shape
    if (folder / "config.json").is_file():
        return folder
    common = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)
    config = {"qwen2": tf.Qwen2Config, "gpt2": tf.GPT2Config, "llama": tf.LlamaConfig}[kind](**kw, **common)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_rows(task: str, n: int, lo: int, hi: int, seed: int = 0) -> list[dict]:
    """Rows whose token counts are uniform in [lo, hi]: SFT prompt+completion (the answer a
    quarter of the tokens, at least 8), classification texts with two balanced labels."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        total = rng.randint(lo, hi)
        if task == "sft":
            answer = max(8, total // 4)
            rows.append({"prompt": words(rng, max(1, total - answer - 8)), "completion": words(rng, answer)})
        else:
            rows.append({"text": words(rng, total), "label": rng.choice(["a", "b"])})
    return rows


def linear_params(model) -> int:
    """Weights of the matrix layers: nn.Linear, and GPT-2's Conv1D (a linear layer stored transposed)."""
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))


def mfu(tokens_per_s: float, n: int, lora: bool) -> float:
    return (4 if lora else 6) * n * tokens_per_s / PEAK_FLOPS


def sft_examples(folder: Path, rows: list[dict], max_length: int) -> list[dict]:
    """Token ids and labels exactly as tunelab builds them (alpaca template, loss on the answer)."""
    from tunelab.model.backbone import load_tokenizer
    from tunelab.sft.formats import row_to_messages
    from tunelab.sft.templates import build_template
    from tunelab.sft.tokenize import tokenize_messages

    tok = load_tokenizer(folder)
    template = build_template("alpaca", tok)
    out = []
    for i, r in enumerate(rows):
        ex = tokenize_messages(row_to_messages({**r, "_line": i + 1}, source="bench"), template, tok, max_length=max_length)
        out.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
    return out


def count_linear(task: str, folder: Path) -> int:
    """N for the MFU: linear-layer parameters of the model each path trains (meta device: no memory)."""
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = tf.AutoModelForCausalLM.from_config(config) if task == "sft" else tf.AutoModel.from_config(config)
    return linear_params(model)


def _step_clock():
    """A Trainer callback timing the training steps alone, first step to last (CUDA synchronised):
    the stock path's counterpart of tunelab's `step_seconds` (Trainer set-up left out of both)."""
    import transformers as tf

    class StepClock(tf.TrainerCallback):
        start = end = second = None

        def on_step_begin(self, args, state, control, **kw):
            if self.start is None or self.second is None:
                torch.cuda.synchronize()
                now = time.perf_counter()
                if self.start is None:
                    self.start = now
                else:  # the second step begins: the first one is over
                    self.second = now

        def on_train_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.end = time.perf_counter()

        @property
        def seconds(self) -> float:
            return self.end - self.start

        @property
        def first(self) -> float:
            return self.second - self.start

    return StepClock()


def run_stock(task: str, folder: Path, rows: list[dict], trainable: str, steps: int, batch: int, out: Path, max_length: int) -> dict:
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(folder))
    if task == "sft":
        model = tf.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="sdpa", dtype=torch.float32)
        data = sft_examples(folder, rows, max_length)
        collator = tf.DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, padding="longest")
        real = [len(e["input_ids"]) for e in data]
    else:
        model = tf.AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2, attn_implementation="sdpa", dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        data = [dict(tok(r["text"], truncation=True, max_length=max_length), labels=int(r["label"] == "b")) for r in rows]
        collator = tf.DataCollatorWithPadding(tok)
        real = [len(e["input_ids"]) for e in data]
    n = linear_params(model)
    if trainable == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    args = tf.TrainingArguments(output_dir=str(out / "hf"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-5 if trainable != "lora" else 5e-4,
                                bf16=True, logging_steps=10, save_strategy="no", report_to=[], dataloader_num_workers=2, seed=123, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10))
    clock = _step_clock()
    trainer = tf.Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=[clock])
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    trainer.train()
    seconds = clock.seconds
    tokens = sum(real) * (steps * batch / len(real))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "last_loss": losses[-1] if losses else None, "mfu": mfu(tokens / seconds, n, trainable == "lora"),
            **steady(tokens, seconds, clock.first, steps)}


def tunelab_config(task: str, folder: Path, data: Path, trainable: str, steps: int, batch: int, out: Path, max_length: int,
                   packing: str, compile: str, budget: int | None = None, graphs: str = "off") -> dict:
    """The raw tunelab config every tunelab variant trains with (bench/gpu_estimate.py uses it too)."""
    raw = {
        "task": task,
        "output_dir": str(out),
        "data": {"train": str(data), "split": {"validation": 0.0, "test": 0.0}, "max_length": max_length,
                 "packing": packing},
        "model": {"name": str(folder), "trainable": trainable},
        "train": {"max_steps": steps, "batch_size": batch, "lr": 5e-5 if trainable != "lora" else 5e-4, "eval_every": 10**6, "seed": 123,
                  "warmup": 0.1, "compile": compile, "max_tokens_per_micro_batch": budget, "cuda_graphs": graphs},
        "eval": {"train_rows": 64},
    }
    if task == "sft":
        raw["sft"] = {"template": "alpaca"}
    else:
        raw["model"]["pooling"] = "last"
        raw["data"]["split"]["test"] = 0.02
    return raw


def run_tunelab(task: str, folder: Path, data: Path, trainable: str, steps: int, batch: int, out: Path, max_length: int, n: int,
                packing: str, compile: str, budget: int | None = None, graphs: str = "off") -> dict:
    from tunelab.config import validate_dict
    from tunelab.tasks import recipe

    raw = tunelab_config(task, folder, data, trainable, steps, batch, out, max_length, packing, compile, budget, graphs)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    lines = []
    s = recipe(task)(validate_dict(raw), force=True, log=lines.append)
    for line in lines:  # what the fast path's switches resolved to, and the graphs' captures
        if "cuda_graphs" in line or "data.packing" in line or "train.compile" in line:
            print(f"    {out.name}: {line}", flush=True)
    losses = [json.loads(line).get("train_loss") for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    return {"tokens_per_s": s["train_tokens_per_second"], "seconds": s["step_seconds"], "peak_gib": s["peak_memory_mb"] / 1024,
            "last_loss": losses[-1] if losses else None, "mfu": mfu(s["train_tokens_per_second"], n, trainable == "lora"), "precision": s["precision"], "packing": s.get("packing"),
            "cuda_graphs": s.get("cuda_graphs"),
            **steady(s["train_tokens_per_second"] * s["step_seconds"], s["step_seconds"], s.get("first_step_seconds"), steps)}


def steady(tokens: float, seconds: float, first: float | None, steps: int) -> dict:
    """The speed without the first step (compile, kernel selection: paid once per run, so a long run
    approaches this figure), taking the first step's share of the tokens to be 1/steps."""
    if first is None or steps < 2 or seconds <= first:
        return {"first_step_s": first}
    return {"first_step_s": round(first, 2), "steady_tokens_per_s": tokens * (steps - 1) / steps / (seconds - first)}


def liger(kind: str) -> None:
    """Liger-Kernel's fused RMSNorm, RoPE and SwiGLU patched into transformers' module for `kind`
    (the loss stays tunelab's chunked one). Global: later runs of that family use them too."""
    import liger_kernel.transformers as lk

    patch = {"qwen2": lk.apply_liger_kernel_to_qwen2, "llama": lk.apply_liger_kernel_to_llama}[kind]
    kw = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    patch(**kw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="a,b,c,d,e")
    ap.add_argument("--steps-sft", type=int, default=60)
    ap.add_argument("--steps-cls", type=int, default=150)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, few steps: check the script on a CPU")
    ap.add_argument("--compile", action="store_true", help="also run with train.compile on")
    ap.add_argument("--variants", default="", help="only these tunelab variants, comma-separated (default: all asked for)")
    ap.add_argument("--auto", action="store_true", help="also run with data.packing and train.compile auto (the defaults)")
    ap.add_argument("--liger", action="store_true", help="also run packed with Liger-Kernel's fused norm/rope/swiglu (if installed)")
    ap.add_argument("--graphs", action="store_true", help="also run packed with train.cuda_graphs on (and compiled too with --compile)")
    ap.add_argument("--budgets", default="", help="comma-separated train.max_tokens_per_micro_batch values: padded and packed runs with each")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/tunelab-fastpath")
    work.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(work / "tokenizer")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    results = {}
    compile_variant = args.compile
    for case in args.cases.split(","):
        task, shape, trainable, batch, lo, hi = CASES[case]
        steps = (args.steps_sft if task == "sft" else args.steps_cls) if not args.tiny else 4
        folder = make_model_dir(work / "models", shape, tok, args.tiny)
        rows = make_rows(task, steps * batch + 64, lo, hi, seed=ord(case))
        data = work / f"rows-{case}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        max_length = hi + 16
        n = count_linear(task, folder)
        r = {}
        if torch.cuda.is_available():
            r["stock"] = run_stock(task, folder, rows, trainable, steps, batch, work / f"hf-{case}", max_length)
        # (data.packing, train.compile, train.max_tokens_per_micro_batch, train.cuda_graphs)
        variants = {"tunelab": ("off", "off", None, "off"), "tunelab_packed": ("on", "off", None, "off")}
        if args.auto:  # what a user gets without setting any switch (tunelab.train.fastpath)
            variants["tunelab_auto"] = ("auto", "auto", None, "auto")
        for b in filter(None, args.budgets.split(",")):
            variants[f"tunelab_b{b}"], variants[f"tunelab_packed_b{b}"] = ("off", "off", int(b), "off"), ("on", "off", int(b), "off")
        if args.graphs:
            variants["tunelab_packed_graphs"] = ("on", "off", None, "on")
        if compile_variant:  # train.compile: on, padded and packed
            variants["tunelab_compile"] = ("off", "on", None, "off")
            variants["tunelab_packed_compile"] = ("on", "on", None, "off")
            if args.graphs:
                variants["tunelab_packed_compile_graphs"] = ("on", "on", None, "on")
        if args.liger:
            variants["tunelab_packed_liger"] = ("on", "off", None, "off")
        if args.variants:  # e.g. --variants tunelab,tunelab_auto: only these (the stock path always runs)
            variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
        for name, (packing, compile, budget, graphs) in variants.items():
            try:
                if name.endswith("_liger"):
                    liger(SHAPES[shape][0])
                r[name] = run_tunelab(task, folder, data, trainable, steps, batch, work / f"run-{case}-{name}", max_length, n, packing, compile, budget,
                                      graphs)
            except Exception as err:  # one failed variant must not cost the others' device time
                print(f"({case}) {name} failed: {type(err).__name__}: {err}", flush=True)
        results[case] = {"task": task, "shape": shape, "trainable": trainable, "batch": batch, "lengths": [lo, hi], "steps": steps, **r}
        (out / "fastpath.json").write_text(json.dumps(results, indent=1))
        for k, v in r.items():
            print(f"({case}) {shape:13s} {task:14s} {trainable:4s} {k:15s} tokens/s {v['tokens_per_s']:9.0f}  MFU {100 * v['mfu']:5.1f} %  "
                  f"peak {v['peak_gib']:6.2f} GiB  {v['seconds']:6.1f} s  first step {v.get('first_step_s')} s  "
                  f"steady tokens/s {v.get('steady_tokens_per_s', 0):9.0f}  last loss {v['last_loss']}", flush=True)
        if "stock" in r:
            for name in (v for v in variants if v in r):
                steady_ratio = r[name].get("steady_tokens_per_s", 0) / r["stock"].get("steady_tokens_per_s", float("inf"))
                print(f"({case}) {name}: speed-up over stock {r[name]['tokens_per_s'] / r['stock']['tokens_per_s']:.2f}x "
                      f"(steady {steady_ratio:.2f}x), memory {r[name]['peak_gib'] / r['stock']['peak_gib']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
