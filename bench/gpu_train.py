"""GPU path check and throughput, side by side with the stock Hugging Face Trainer, in one run.

    python bench/gpu_train.py --tokenizer DIR --out OUT [--steps 150]

Random-init models of real shapes (GPT-2 124M, SmolLM2-135M / Llama), bf16, SDPA attention,
sequence classification on synthetic texts whose token lengths are uniform in 10-120 (the
anchors' setting), batch 32. For each shape it runs, on identical data:
  (a) transformers Trainer + AutoModelForSequenceClassification, dynamic padding (the anchor path);
  (b) `tunelab train` in process, all layers trainable, padding to the longest in the batch,
      with and without batching by similar length.
and prints real (non-pad) tokens per second, peak GPU memory and the final training loss.
Weight values do not change throughput, so random init is a fair stand-in for the real weights.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

SHAPES = {
    "gpt2-124m": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024)),
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)),
}


def make_model_dir(root: Path, name: str, tokenizer) -> Path:
    import transformers as tf

    kind, kw = SHAPES[name]
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    config = tf.GPT2Config(**kw, **common) if kind == "gpt2" else tf.LlamaConfig(**kw, **common)
    folder = root / name
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def make_texts(tokenizer, n: int, lo: int, hi: int, seed: int = 0) -> list[dict]:
    """Texts decoded from random ordinary tokens, lengths uniform in [lo, hi] tokens."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    rows = []
    while len(rows) < n:
        ids = [rng.choice(vocab) for _ in range(rng.randint(lo, hi))]
        text = tokenizer.decode(ids)
        if lo <= len(tokenizer(text)["input_ids"]) <= hi:
            rows.append({"text": text, "label": rng.choice(["a", "b"])})
    return rows


def run_hf_trainer(folder: Path, rows: list[dict], steps: int, batch: int, out: Path) -> dict:
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(folder))
    model = tf.AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2, attn_implementation="sdpa")
    model.config.pad_token_id = tok.pad_token_id
    enc = [dict(tok(r["text"]), labels=int(r["label"] == "b")) for r in rows]
    args = tf.TrainingArguments(output_dir=str(out / "hf"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-5, bf16=True, logging_steps=steps, save_strategy="no", report_to=[], dataloader_num_workers=2, seed=123)
    trainer = tf.Trainer(model=model, args=args, train_dataset=enc, data_collator=tf.DataCollatorWithPadding(tok))
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = trainer.train()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = sum(len(e["input_ids"]) for e in enc) * (steps * batch / len(enc))
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": result.training_loss}


def run_tunelab(folder: Path, data: Path, steps: int, batch: int, out: Path, group: bool) -> dict:
    from tunelab.classify.run import train_classifier
    from tunelab.config import validate_dict

    torch.cuda.reset_peak_memory_stats()
    cfg = validate_dict({
        "output_dir": str(out),
        "data": {"train": str(data), "split": {"validation": 0.0, "test": 0.05}, "max_length": 128, "group_by_length": group},
        "model": {"name": str(folder), "trainable": "all", "pooling": "last"},
        "train": {"max_steps": steps, "batch_size": batch, "lr": 5e-5, "eval_every": 10**6, "seed": 123},
    })
    s = train_classifier(cfg, force=True, log=lambda *a: None)
    return {"tokens_per_s": s["train_tokens_per_second"], "seconds": s["train_seconds"], "peak_gib": s["peak_memory_mb"] / 1024, "precision": s["precision"], "test_acc": s["test"]["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rows", type=int, default=6000)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    out = Path(args.out)
    work = Path("/tmp/tunelab-bench")
    work.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rows = make_texts(tok, args.rows, 10, 120)
    data = work / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    results = {}
    for name in SHAPES:
        folder = make_model_dir(work / "models", name, tok)
        r = {"hf_trainer": run_hf_trainer(folder, rows, args.steps, args.batch, work)}
        r["tunelab"] = run_tunelab(folder, data, args.steps, args.batch, work / f"run-{name}", group=False)
        r["tunelab_grouped"] = run_tunelab(folder, data, args.steps, args.batch, work / f"run-{name}-g", group=True)
        results[name] = r
        for k, v in r.items():
            print(f"{name:14s} {k:16s} tokens/s {v['tokens_per_s']:9.0f}  peak {v['peak_gib']:5.2f} GiB  {v['seconds']:6.1f} s", flush=True)
    (out / "gpu_train.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
