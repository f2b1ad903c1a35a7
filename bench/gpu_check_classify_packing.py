"""CUDA check of packed vs padded classification: equality (fp32, bf16 autocast) and speed.

python3 bench/gpu_check_classify_packing.py     # on the GPU machine, from the repository root
"""

import sys
import time

import torch
import transformers as tf

sys.path[:0] = ["src", "."]
from tests.helpers import tiny_config  # noqa: E402

from tunelab.classify.collate import ClassificationCollator, PackingCollator  # noqa: E402
from tunelab.classify.model import TextClassifier  # noqa: E402
from tunelab.classify.objective import ClassificationObjective  # noqa: E402

print("torch", torch.__version__, "transformers", tf.__version__, torch.cuda.get_device_name())
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = torch.device("cuda")
obj = ClassificationObjective()


def items(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, vocab - 1, (n,), generator=g).tolist(), i % 3) for i, n in enumerate(lengths)]


def to(b):
    return {k: v.to(dev) for k, v in b.items()}


def run(model, batch):
    model.zero_grad(set_to_none=True)
    loss = obj(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def compare(name, model, its, pad_id, autocast):
    pb, kb = to(ClassificationCollator(pad_id)(its)), to(PackingCollator(pad_id)(its))
    with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        la = model(pb["input_ids"], pb["attention_mask"]).float()
        lb = model(kb["input_ids"], None, segment_ids=kb["segment_ids"], position_ids=kb["position_ids"]).float()
        loss_a, ga = run(model, pb)
        loss_b, gb = run(model, kb)
    gd = max(float((ga[n] - gb[n]).abs().max()) for n in ga)
    gn = max(float((ga[n] - gb[n]).norm() / (ga[n].norm() + 1e-12)) for n in ga)
    print(
        f"{name:28s} {'bf16' if autocast else 'fp32'} logits maxdiff {float((la - lb).abs().max()):.1e} loss diff {float((loss_a - loss_b).abs()):.1e} grad max abs diff {gd:.1e} worst rel-norm {gn:.1e}"
    )


V = 300
lengths = (5, 20, 1, 27, 9, 64, 3, 100)
for arch in ["llama", "qwen2", "gpt2", "gemma3", "bert"]:
    for causal in [True, False] if arch != "bert" else [True]:
        for pooling in ["last", "mean"]:
            torch.manual_seed(0)
            cfg = tiny_config(arch, V)
            cfg.max_position_embeddings = 256
            if arch == "gpt2":
                cfg.n_positions = 256
            bb = tf.AutoModel.from_config(cfg)
            m = TextClassifier(bb, 3, pooling=pooling, causal_mask=causal).to(dev).eval()
            for ac in (False, True):
                compare(f"{arch} causal={causal} {pooling}", m, items(lengths, V), 0, ac)
torch.manual_seed(0)
mp = tf.AutoModel.from_config(
    tf.MPNetConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=258, pad_token_id=1), attn_implementation="eager"
)
m = TextClassifier(mp, 3, pooling="mean").to(dev).eval()
for ac in (False, True):
    compare("mpnet mean", m, items(lengths, V), 1, ac)


# Speed: forward+backward of one micro-batch, bf16 autocast, padded (longest) vs packed.
def bench(name, model, its, pad_id, reps=20):
    model.train()
    out = {}
    for kind, coll in (("padded", ClassificationCollator(pad_id)), ("packed", PackingCollator(pad_id))):
        b = to(coll(its))
        for i in range(reps + 5):
            if i == 5:
                torch.cuda.synchronize()
                t = time.perf_counter()
            with torch.autocast("cuda", torch.bfloat16):
                loss = obj(model, b)
            loss.backward()
        torch.cuda.synchronize()
        out[kind] = (time.perf_counter() - t) / reps * 1000
        model.zero_grad(set_to_none=True)
    padded_tokens = len(its) * max(len(x) for x, _ in its)
    real = sum(len(x) for x, _ in its)
    print(f"{name:44s} padded {out['padded']:7.1f} ms  packed {out['packed']:7.1f} ms  (real tokens {real}/{padded_tokens} padded)")


g = torch.Generator().manual_seed(0)
short = [int(x) for x in torch.randint(8, 64, (32,), generator=g)]  # SMS-like
spread = [int(x) for x in torch.randint(16, 257, (32,), generator=g)]  # up to max_length 256
skew = [int(x) for x in (torch.distributions.LogNormal(3.5, 0.7).sample((32,)).clamp(4, 256))]
smol = tf.LlamaConfig(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True
)
minilm = tf.BertConfig(vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12)
for cname, cfg, causals in (("smollm2-135m-like", smol, (True, False)), ("minilm-l6-like", minilm, (True,))):
    torch.manual_seed(0)
    bb = tf.AutoModel.from_config(cfg)
    for causal in causals:
        m = TextClassifier(bb, 3, pooling="last" if cname.startswith("smol") else "mean", causal_mask=causal).to(dev)
        for lname, ls in (("short 8-64", short), ("spread 16-256", spread), ("lognormal", skew)):
            bench(f"{cname} causal={causal} {lname}", m, items(ls, 1000), 0)
print("max mem GiB", torch.cuda.max_memory_allocated() / 2**30)

# Experiment: FlexAttention block-sparse mask (skips blocks across examples) for the packed row.
try:
    from torch.nn.attention.flex_attention import create_block_mask

    torch.manual_seed(0)
    bb = tf.AutoModel.from_config(smol).to(dev)
    m = TextClassifier(bb, 3, pooling="last", causal_mask=False)
    for lname, ls in (("short 8-64", short), ("spread 16-256", spread), ("lognormal", skew)):
        its = items(ls, 1000)
        kb = to(PackingCollator(0)(its))
        seg = kb["segment_ids"][0]
        T = seg.numel()
        bm = create_block_mask(lambda b, h, q, k: seg[q] == seg[k], 1, None, T, T, device="cuda")
        bb.set_attn_implementation("sdpa")
        with torch.autocast("cuda", torch.bfloat16):
            ref = bb(
                input_ids=kb["input_ids"], **__import__("tunelab.classify.packing", fromlist=["x"]).packed_backbone_inputs(m.packing_plan, kb["segment_ids"], kb["position_ids"], torch.float32)
            ).last_hidden_state.float()
        bb.set_attn_implementation("flex_attention")

        def step():
            with torch.autocast("cuda", torch.bfloat16):
                h = bb(input_ids=kb["input_ids"], attention_mask=bm, position_ids=kb["position_ids"], use_cache=False).last_hidden_state
            h.float().sum().backward()
            return h

        h = step()
        diff = float((h.float() - ref).abs().max())
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        print(f"flex smollm causal=False {lname}: {(time.perf_counter() - t) / 20 * 1000:.1f} ms (fwd+bwd of backbone), max diff vs sdpa mask {diff:.2e}")
        bb.zero_grad(set_to_none=True)
    bb.set_attn_implementation("sdpa")
except Exception as err:
    print("flex experiment failed:", type(err).__name__, str(err)[:500])
