"""CUDA check of `train.cuda_graphs`: SFT through replayed graphs equals the eager loop on the GPU.

    OUT=out python3 bench/gpu_check_cuda_graphs.py     # on the GPU machine, from the repository root

SFT: for tiny Llama, Qwen2 and Gemma 3 models (bf16 autocast, packed rows on the varlen kernel), 12
optimizer steps of 8 examples cut into micro-batches of at most 160 tokens (several shapes per
step): once eagerly and once through graphs, both on the same fixed-shape rows. Prints the largest
relative difference of each step's gradients and of the final weights, and how many shapes were
captured and micro-batches replayed (the CPU tests check the bookkeeping with a stand-in; this
checks that the capture itself holds: no host sync, no allocation outside the pool, RNG).
Classification: the same for tiny Llama, Qwen2, Gemma 3 and BERT classifiers (last, mean and first
pooling, causal mask on and off), 12 steps of 16 texts cut at 400 tokens.
"""
import json
import os
import sys
import traceback
from pathlib import Path

import torch
import transformers as tf

sys.path[:0] = ["src", "."]
from tunelab.config import TrainConfig  # noqa: E402
from tunelab.model import varlen  # noqa: E402
from tunelab.sft.collate import pack  # noqa: E402
from tunelab.sft.objective import SftObjective, head_is_plain  # noqa: E402
from tunelab.train.loop import fit, plan_steps  # noqa: E402
from tunelab.train.runtime import make_accelerator  # noqa: E402

VOCAB = 512


def config_of(arch: str):
    common = dict(vocab_size=VOCAB, pad_token_id=0, eos_token_id=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    return {"llama": lambda: tf.LlamaConfig(**common), "qwen2": lambda: tf.Qwen2Config(**common),
            "gemma3": lambda: tf.Gemma3TextConfig(head_dim=16, sliding_window=16, **common)}[arch]()


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(8, 80, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2:]})
    return out


def train_recording(model, rows: list, collate, objective, lengths: list[int], batch: int, budget: int, graphs: bool, folder: Path) -> dict:
    """12 steps through `fit` (bf16, no clipping, micro-batches of at most `budget` tokens), keeping
    each step's gradients, the final weights, the losses and the graphs' log lines."""
    cfg = TrainConfig(max_steps=12, batch_size=batch, lr=1e-3, warmup=0, device="cuda", precision="bf16", max_tokens_per_micro_batch=budget,
                      eval_every=10**6, max_grad_norm=None)
    accelerator, _ = make_accelerator(cfg)
    grads, lines, real_step = [], [], torch.optim.AdamW.step

    def recording_step(self, *a, **k):
        grads.append([p.grad.float().clone() for p in model.parameters() if p.grad is not None])
        return real_step(self, *a, **k)

    torch.optim.AdamW.step = recording_step
    try:
        result = fit(model, rows, collate, objective, None, cfg, plan_steps(len(rows), cfg, lengths=lengths), folder, accelerator,
                     log=lines.append, cuda_graphs=graphs)
    finally:
        torch.optim.AdamW.step = real_step
    return {"grads": grads, "weights": [p.detach().float().clone() for p in result.model.parameters()],
            "losses": [r["train_loss"] for r in result.history], "log": [x for x in lines if "cuda_graphs" in x]}


def run(arch: str, graphs: bool, root: str) -> dict:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config_of(arch))
    model.set_attn_implementation(varlen.register())
    assert head_is_plain(model)  # decided before training, as the recipe does (the chunked head-only loss)
    rows = data()
    return train_recording(model, rows, lambda items: pack(items, fixed_shapes=True), SftObjective(), [len(e["input_ids"]) for e in rows],
                           8, 160, graphs, Path(root) / f"{arch}-{graphs}")


def run_classifier(arch: str, pooling: str, causal: bool, graphs: bool, root: str) -> dict:
    """The same for a tiny classifier on packed varlen rows (`PackingCollator(fixed_shapes=True)`)."""
    from tests.helpers import tiny_config

    from tunelab.classify.collate import PackingCollator
    from tunelab.classify.model import TextClassifier
    from tunelab.classify.objective import ClassificationObjective
    from tunelab.classify.packing import use_varlen

    torch.manual_seed(0)
    cfg = tiny_config(arch, VOCAB)
    cfg.max_position_embeddings = 256
    for name in ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob", "hidden_dropout_prob", "resid_pdrop", "embd_pdrop"):  # exact equality
        if hasattr(cfg, name):
            setattr(cfg, name, 0.0)
    model = TextClassifier(tf.AutoModel.from_config(cfg), 3, pooling=pooling, causal_mask=causal)
    assert use_varlen(model, torch.device("cuda"), print), arch
    g = torch.Generator().manual_seed(1)
    rows = [(torch.randint(3, VOCAB - 1, (int(torch.randint(4, 100, (1,), generator=g)),), generator=g).tolist(), k % 3) for k in range(128)]
    return train_recording(model, rows, PackingCollator(0, fixed_shapes=True), ClassificationObjective(), [len(ids) for ids, _ in rows],
                           16, 400, graphs, Path(root) / f"cls-{arch}-{pooling}-{causal}-{graphs}")


def compare(graphed: dict, eager: dict) -> tuple[float, float]:
    """Largest relative difference of the step gradients and of the final weights."""
    step_diff = max(rel(a, b) for sa, sb in zip(graphed["grads"], eager["grads"]) for a, b in zip(sa, sb))
    return step_diff, max(rel(a, b) for a, b in zip(graphed["weights"], eager["weights"]))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _loud_record():
    """The first failed capture prints its whole traceback (the log keeps one line)."""
    from tunelab.train import cuda_graphs

    real = cuda_graphs._CudaBackend.record

    def record(self, fn):
        try:
            return real(self, fn)
        except Exception:
            if not getattr(record, "printed", False):
                traceback.print_exc()
                record.printed = True
            raise
    cuda_graphs._CudaBackend.record = record


def main() -> None:
    _loud_record()
    out = os.environ.get("OUT", "/tmp")
    print("torch", torch.__version__, "transformers", tf.__version__, torch.cuda.get_device_name(), flush=True)
    report = {}
    for arch in ("llama", "qwen2", "gemma3"):
        eager, graphed = run(arch, False, "/tmp/graphs-check"), run(arch, True, "/tmp/graphs-check")
        step_diff, weight_diff = compare(graphed, eager)
        report[arch] = {"steps": len(graphed["grads"]), "max_rel_grad_diff": step_diff, "max_rel_weight_diff": weight_diff,
                        "losses_eager": eager["losses"], "losses_graphs": graphed["losses"], "log": graphed["log"]}
        print(f"{arch}: {len(graphed['grads'])} steps, step gradients within {step_diff:.2e} (relative), weights within {weight_diff:.2e}; "
              f"losses {eager['losses']} vs {graphed['losses']}; {graphed['log']}", flush=True)
    for arch, pooling, causal in (("llama", "last", True), ("qwen2", "mean", False), ("gemma3", "last", True), ("bert", "first", True)):
        eager = run_classifier(arch, pooling, causal, False, "/tmp/graphs-check")
        graphed = run_classifier(arch, pooling, causal, True, "/tmp/graphs-check")
        step_diff, weight_diff = compare(graphed, eager)
        report[f"classification-{arch}-{pooling}-{causal}"] = {"max_rel_grad_diff": step_diff, "max_rel_weight_diff": weight_diff, "log": graphed["log"]}
        print(f"classification {arch} {pooling} causal={causal}: step gradients within {step_diff:.2e}, weights within {weight_diff:.2e}; "
              f"{graphed['log']}", flush=True)
    with open(os.path.join(out, "cuda_graphs_check.json"), "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
