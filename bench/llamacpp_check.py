"""Does `tunelab export RUN OUT --gguf f16|q8_0` load in real llama.cpp and decode as tunelab does?

    npm i -E --prefix /tmp/llamacpp node-llama-cpp@3.21.1      # once; prebuilt llama.cpp, no compile
    .venv/bin/python bench/llamacpp_check.py [--run RUN] [--work /tmp/tunelab-llamacpp-check]
                                             [--node-llama-cpp /tmp/llamacpp] [--max-new-tokens 24] [--threads 1]

1. Without --run: a tiny LoRA SFT run of `asset:smollm2-135m-instruct` on CPU (a few steps on a
   handful of made-up rows, in the model's chat template) under WORK/run, so the export path with
   a merged adapter is what gets checked; --run RUN checks an existing SFT run instead.
2. `tunelab export RUN WORK/FORMAT --gguf FORMAT` for f16 and q8_0 (the real CLI, a subprocess).
3. bench/llamacpp_greedy.mjs loads each GGUF in llama.cpp (node-llama-cpp, CPU) and decodes the
   prompts greedily (temperature 0) from tunelab's own prompt ids; tunelab decodes the same ids
   with the run's HF model through sft/generate.py's `generation_config` (the settings `generate`
   uses: greedy, stop at EOS and the end-of-turn token), and `generate` itself gives the text.
   For q8_0 also from a copy of the model with the weights Q8_0 stores (quantized, dequantized),
   which tells rounding (a 135M model's greedy path flips on it) from an export bug.
4. Prints per format and prompt: leading token ids equal / tunelab's token count (up to and with
   the stop token; q8_0: also against the rounded copy), where each stopped, whether the texts
   match (llama.cpp's detokenized answer, cut at its first end-of-generation token) and, where
   the paths part, tunelab's logit gap between its token and llama.cpp's (a near tie or not); per format,
   what llama.cpp read as EOS/EOT/end-of-generation, whether the chat template in the file is the
   run's, and whether llama.cpp builds tunelab's prompt ids from it (its Jinja engine and its
   tokenizer). Everything also goes to WORK/results.json.

Exit status 1 when llama.cpp cannot load a file or the f16 tokens differ from tunelab's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNELAB = [sys.executable, "-m", "tunelab.cli"]
NODE_SCRIPT = Path(__file__).with_name("llamacpp_greedy.mjs")
FORMATS = ("f16", "q8_0")
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "How many legs does a spider have?"}],
    [{"role": "user", "content": "What is 12 + 345? Reply with the number."}],
]
# made-up training rows (alpaca format): enough for a few LoRA steps, nothing to learn from
ROWS = [{"instruction": f"Add {a} and {b}.", "output": f"{a} plus {b} is {a + b}."} for a in range(2, 8) for b in range(3, 7)]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """`cmd` in the repository root; exits with its output when it fails."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


def train_tiny_run(work: Path, steps: int) -> Path:
    """A LoRA SFT run of SmolLM2-135M-Instruct: `steps` optimizer steps of batch 4, max_length 96."""
    import yaml

    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    cfg = {"task": "sft", "output_dir": str(work / "run"),
           "data": {"train": str(data), "max_length": 96, "split": {"validation": 0.1, "test": 0.1, "seed": 1}},
           "model": {"name": "asset:smollm2-135m-instruct", "trainable": "lora",
                     "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}},
           "train": {"max_steps": steps, "batch_size": 4, "lr": 2e-3, "eval_every": steps, "seed": 1},
           "eval": {"batch_size": 4},
           "sft": {"template": "chat", "format": "alpaca", "generation": {"max_new_tokens": 8, "max_rows": 1}}}
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    run([*TUNELAB, "train", str(config), "--force"])
    return work / "run"


def export_gguf(run_dir: Path, out: Path, quant: str) -> Path:
    """The GGUF file `tunelab export RUN OUT --gguf QUANT --force` writes."""
    run([*TUNELAB, "export", str(run_dir), str(out), "--gguf", quant, "--force"])
    return out / json.loads((out / "tunelab.json").read_text(encoding="utf-8"))["gguf"]


def until_stop(tokens: list[int], stops) -> list[int]:
    """The tokens up to and with the first stop token (all of them when none comes).

    >>> until_stop([5, 6, 2, 7], {2})
    [5, 6, 2]
    """
    end = next((k for k, t in enumerate(tokens) if t in stops), len(tokens) - 1)
    return tokens[:end + 1]


def leading_equal(a: list[int], b: list[int]) -> int:
    """How many leading ids two sequences share.

    >>> leading_equal([1, 2, 3], [1, 2, 4, 5])
    2
    """
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def greedy_ids(model, cfg, ids: list[int]) -> list[int]:
    """New ids of HF `generate` under `cfg` (tunelab's greedy GenerationConfig), cut after the stop."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             generation_config=cfg)
    return until_stop(out[0, len(ids):].tolist(), set(cfg.eos_token_id))


def q8_0_rounded(model):
    """A copy of `model` whose weights are what the q8_0 GGUF stores (quantized as the exporter's
    `_encode` does, then dequantized): the reference that tells Q8_0 rounding from an export bug."""
    import copy

    import gguf
    import torch

    from tunelab.sft.gguf_export import _encode

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in rounded.state_dict().values():  # tied embeddings: one tensor, rounded once
            data, kind = _encode(tensor.float().numpy(), "q8_0")
            if kind == gguf.GGMLQuantizationType.Q8_0:
                tensor.copy_(torch.from_numpy(gguf.dequantize(data, kind)).reshape(tensor.shape))
    return rounded


def tunelab_reference(run_dir: Path, max_new_tokens: int) -> dict:
    """tunelab's side: prompt ids (`encode_prompt`), greedy ids through the settings `generate` uses
    (`generation_config`: greedy, stop at EOS and the end-of-turn token) from the run's model and
    from its Q8_0-rounded copy, `generate`'s texts, the stop ids and the HF chat template the
    export writes into the GGUF."""
    from tunelab.sft.export import hf_chat_template, load_sft
    from tunelab.sft.generate import generate, generation_config, stop_token_ids
    from tunelab.sft.tokenize import encode_prompt, special_prefix

    lm = load_sft(run_dir, device="cpu")
    stops = stop_token_ids(lm.template, lm.tokenizer)
    cfg = generation_config(lm.tokenizer, stops, max_new_tokens=max_new_tokens, do_sample=False, temperature=1.0, top_p=1.0)
    rounded = q8_0_rounded(lm.model)
    texts = generate(lm.model, lm.tokenizer, lm.template, PROMPTS, max_new_tokens=max_new_tokens)
    prompts = []
    for messages, text in zip(PROMPTS, texts):
        ids = encode_prompt(messages, lm.template, lm.tokenizer)
        prompts.append({"messages": messages, "ids": ids, "tokens": greedy_ids(lm.model, cfg, ids),
                        "tokens_q8_0_rounded": greedy_ids(rounded, cfg, ids), "text": text})
    special = {k: getattr(lm.tokenizer, f"{k}_token_id") for k in ("bos", "eos")}
    return {"prompts": prompts, "stops": stops, "special": special, "add_bos": bool(special_prefix(lm.tokenizer)),
            "chat_template": hf_chat_template(lm.template, lm.tokenizer), "tokenizer": lm.tokenizer,
            "models": {"fp32": lm.model, "q8_0-rounded": rounded}}


def logit_gap(model, ids: list[int], mine: int, theirs: int) -> float:
    """How far `model`'s next-token logit of its own pick stands above llama.cpp's pick after
    `ids`: a small gap is a near tie that rounding flips, a large one would be an export bug."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]  # (vocab,)
    return float(logits[mine] - logits[theirs])


def add_gaps(rows: list[dict], ref: dict, got: dict) -> None:
    """Each row where the two greedy paths part (not just stop at different lengths) gets the
    logit gap at that step, under the fp32 model and its Q8_0-rounded copy."""
    for row, mine, theirs in zip(rows, ref["prompts"], got["results"]):
        k = row["equal"]
        if k < min(len(mine["tokens"]), len(theirs["tokens"])):
            ids = mine["ids"] + mine["tokens"][:k]
            row["gap"] = {name: logit_gap(m, ids, mine["tokens"][k], theirs["tokens"][k]) for name, m in ref["models"].items()}
            row["gap_tokens"] = ref["tokenizer"].convert_ids_to_tokens([mine["tokens"][k], theirs["tokens"][k]])


def llamacpp_greedy(gguf: Path, ref: dict, node_dir: Path, work: Path, max_new_tokens: int, threads: int) -> dict:
    """bench/llamacpp_greedy.mjs on one GGUF: llama.cpp's metadata view and greedy tokens, or
    {"error": ...} with node's stderr when llama.cpp (or node-llama-cpp) fails. One thread by
    default: llama.cpp's threads spin at every op's barrier, and on 2 cores shared with other work
    two threads took 300 s for what one does in 1 s."""
    request = work / f"request-{gguf.stem}.json"
    request.write_text(json.dumps({"gguf": str(gguf), "node_llama_cpp": str(node_dir), "max_new_tokens": max_new_tokens,
                                   "threads": threads, "prompts": [{"ids": p["ids"], "messages": p["messages"]} for p in ref["prompts"]]}))
    proc = subprocess.run(["node", str(NODE_SCRIPT), str(request)], capture_output=True, text=True)
    (work / f"llamacpp-{gguf.stem}.log").write_text(proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-4000:] or f"node exited {proc.returncode}"}
    return json.loads(proc.stdout)


def compare(ref: dict, got: dict) -> list[dict]:
    """Per prompt: tunelab's and llama.cpp's tokens side by side (each cut after its first stop)."""
    eog = set(got["llama_cpp"]["eog_tokens"])
    rows = []
    for mine, theirs in zip(ref["prompts"], got["results"]):
        cpp = until_stop(theirs["tokens"], eog)
        rounded = mine["tokens_q8_0_rounded"]
        rows.append({"equal": leading_equal(mine["tokens"], cpp), "total": len(mine["tokens"]), "llama_cpp_len": len(cpp),
                     "equal_q8_0_rounded": leading_equal(rounded, cpp), "total_q8_0_rounded": len(rounded),
                     "tunelab_stop": mine["tokens"][-1] if mine["tokens"][-1] in ref["stops"] else None,
                     "llama_cpp_stop": cpp[-1] if cpp[-1] in eog else None,
                     "text_equal": mine["text"] == theirs["text"].strip(), "tunelab_text": mine["text"],
                     "llama_cpp_text": theirs["text"].strip(),
                     "template_prompt_equal": theirs["template_ids"] == mine["ids"], "template_error": theirs["template_error"],
                     "tokenizer_round_trip_equal": theirs["prompt_ids_tokenized"] == mine["ids"]})
    return rows


def metadata_lines(ref: dict, meta: dict, rows: list[dict]) -> list[str]:
    """What llama.cpp read from the file, next to what tunelab expects."""
    tok = ref["tokenizer"]

    def name(i):
        return "none" if i is None else f"{i} {tok.convert_ids_to_tokens(i)!r}"

    stops_are_eog = all(s in meta["eog_tokens"] for s in ref["stops"])
    template_same = sum(r["template_prompt_equal"] for r in rows)
    return [f"  llama.cpp: arch {meta['architecture']}, vocab {meta['vocabulary_type']}, context {meta['train_context']}, "
            f"add BOS {meta['add_bos']} (tunelab {ref['add_bos']})",
            f"  EOS {name(meta['eos'])} (tunelab {name(ref['special']['eos'])}); EOT {name(meta['eot'])}; "
            f"end-of-generation ids {[name(i) for i in meta['eog_tokens']]}; tunelab's stop ids {ref['stops']} all EOG: {stops_are_eog}",
            f"  chat template read from GGUF: {meta['chat_template'] is not None}, same as the run's: "
            f"{meta['chat_template'] == ref['chat_template']}; node-llama-cpp chat wrapper: {meta['chat_wrapper']}",
            f"  prompt ids from the GGUF template (llama.cpp Jinja + tokenizer) == tunelab's: {template_same}/{len(rows)}"
            + "".join(f"\n    template error: {r['template_error']}" for r in rows[:1] if r["template_error"]),
            f"  tokenizer round trip (llama.cpp tokenize of the prompt text) == tunelab's ids: "
            f"{sum(r['tokenizer_round_trip_equal'] for r in rows)}/{len(rows)}",
            *(f"  warning: {w}" for w in meta["warnings"])]


def report(quant: str, ref: dict, got: dict) -> tuple[list[str], list[dict]]:
    """Printable lines for one format, and its per-prompt rows."""
    if "error" in got:
        return [f"{quant}: llama.cpp failed:\n{got['error']}"], []
    rows = compare(ref, got)
    add_gaps(rows, ref, got)
    lines = [f"{quant}:", *metadata_lines(ref, got["llama_cpp"], rows)]
    for i, r in enumerate(rows, 1):
        lines.append(f"  prompt {i}: tokens equal {r['equal']}/{r['total']} (llama.cpp {r['llama_cpp_len']}), "
                     f"stop tunelab {r['tunelab_stop']} / llama.cpp {r['llama_cpp_stop']}, text equal {r['text_equal']}"
                     + (f"; vs tunelab with Q8_0-rounded weights {r['equal_q8_0_rounded']}/{r['total_q8_0_rounded']}"
                        if quant == "q8_0" else ""))
        if "gap" in r:
            lines.append(f"    parted at token {r['equal'] + 1}: tunelab {r['gap_tokens'][0]!r}, llama.cpp {r['gap_tokens'][1]!r}; "
                         f"tunelab's logit gap between them {r['gap']['fp32']:.3f} (Q8_0-rounded weights: {r['gap']['q8_0-rounded']:.3f})")
        if not r["text_equal"]:
            lines.append(f"    tunelab:   {r['tunelab_text']!r}\n    llama.cpp: {r['llama_cpp_text']!r}")
    return lines, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, help="an existing SFT run folder (default: train a tiny one)")
    p.add_argument("--work", type=Path, default=Path("/tmp/tunelab-llamacpp-check"), help="scratch folder (run, exports, results)")
    p.add_argument("--node-llama-cpp", type=Path, default=Path("/tmp/llamacpp"), help="folder with node_modules/node-llama-cpp")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps of the tiny run")
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    run_dir = args.run or train_tiny_run(args.work, args.steps)
    ref = tunelab_reference(run_dir, args.max_new_tokens)
    results, failed = {"run": str(run_dir), "max_new_tokens": args.max_new_tokens}, False
    for quant in FORMATS:
        gguf = export_gguf(run_dir, args.work / quant, quant)
        got = llamacpp_greedy(gguf, ref, args.node_llama_cpp, args.work, args.max_new_tokens, args.threads)
        lines, rows = report(quant, ref, got)
        print("\n".join(lines), flush=True)
        failed |= not rows or (quant == "f16" and any(r["equal"] < r["total"] for r in rows))
        results[quant] = {"gguf": str(gguf), "size_bytes": gguf.stat().st_size, "rows": rows,
                          **({"error": got["error"]} if "error" in got else {"llama_cpp": got["llama_cpp"]})}
    (args.work / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"results: {args.work / 'results.json'}")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
