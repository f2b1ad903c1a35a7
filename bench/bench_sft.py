"""SFT benchmark: the base model against the fine-tuned one, on the same held-out rows, on a CPU.

    nice -n 5 .venv/bin/python bench/bench_sft.py --part alpaca docqa --threads 1 --out runs/bench-sft
    .venv/bin/python bench/bench_sft.py --part docqa --out runs/bench-sft --rescore   # per language, no training

Parts (each a shipped config, trained in process by `train_sft`, overrides as given):
  alpaca  configs/sft-smollm2-alpaca.yaml: SmolLM2-135M-Instruct + LoRA on AlpacaEval
          (CC BY-NC 4.0); held-out answer loss / perplexity, ROUGE-L, chrF, token F1.
  docqa   configs/docqa-ko-gemma.yaml (or --docqa-config): Korean/English document QA on
          data/docqa, test documents unseen; refusal precision / recall, answer exact match.
For each part the base model (same template, same decoding, same test rows) is scored first,
then the run trains and its merged model is scored by the run itself (test_metrics.json).
Prints one table per part and writes OUT/bench_sft_<part>.json. Timings are wall-clock on the
machine it runs on, with the given torch threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path

import torch

CONFIGS = {"alpaca": "configs/sft-smollm2-alpaca.yaml", "docqa": "configs/docqa-ko-gemma.yaml"}
METRICS = ["loss", "perplexity", "exact_match", "token_f1", "rouge_l", "chrf", "answer_exact_match",
           "refusal_precision", "refusal_recall"]


def score_base(cfg) -> dict:
    """The base model, untouched, scored as the run scores its fine-tuned model."""
    from tunelab.assets.resolve import resolve_model
    from tunelab.model.backbone import load_backbone, load_tokenizer
    from tunelab.sft.data import encode_split, load_sft_splits
    from tunelab.sft.evaluate import generate_and_score, token_loss
    from tunelab.sft.run import build_sft_template

    folder = resolve_model(cfg.model.name)
    splits = load_sft_splits(cfg.data, cfg.sft)
    tok = load_tokenizer(folder)
    template = build_sft_template(cfg.sft, tok)
    model = load_backbone(folder, lm_head=True).eval()
    examples = encode_split(splits.test, template, tok, max_length=cfg.data.max_length,
                            train_on_prompt=cfg.sft.train_on_prompt, bad_rows=cfg.data.bad_rows, counts=Counter())
    out = token_loss(model, examples, tok.pad_token_id, cfg.eval.batch_size)
    items = splits.test[: cfg.sft.generation.max_rows] if cfg.sft.generation.max_rows else splits.test
    started = time.perf_counter()
    gen = generate_and_score(model, tok, template, items, cfg.sft.generation.model_dump(), cfg.eval.batch_size)
    out.update(gen["scores"], generation_seconds=round(time.perf_counter() - started, 2))
    out["examples"] = [{"prompt": p[-300:], "reference": r, "generated": g}
                       for p, r, g in list(zip(gen["prompts"], gen["references"], gen["predictions"]))[:3]]
    return out


def tuned_by_lang(run_dir: Path, cfg) -> dict | None:
    """The same per-language scores for the fine-tuned run, from its test_predictions.jsonl."""
    from tunelab.sft.data import load_sft_splits
    from tunelab.sft.templates import load_template

    splits = load_sft_splits(cfg.data, cfg.sft)
    items = splits.test[: cfg.sft.generation.max_rows] if cfg.sft.generation.max_rows else splits.test
    rows = [json.loads(line) for line in (run_dir / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    if [r["source"] for r in rows] != [it.where for it in items]:
        raise SystemExit(f"{run_dir}/test_predictions.jsonl: its rows are not the test rows of this config "
                         "(was the run made with other data or overrides?)")
    from tunelab.sft.evaluate import by_lang

    return by_lang([r["generated"] for r in rows], [r["reference"] for r in rows], [it.row.get("lang") for it in items],
                   load_template(run_dir / "model"))


def fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) and v > 1.5 else f"{100 * v:.1f} %" if isinstance(v, float) else str(v)


def table(base: dict, tuned: dict) -> str:
    rows = ["| metric | base model | fine-tuned |", "|---|---|---|"]
    for k in METRICS:
        if k in base or k in tuned:
            b, t = base.get(k), tuned.get(k)
            if k in ("loss", "perplexity") and b is not None and t is not None:
                rows.append(f"| {k} | {b:.4f} | {t:.4f} |")
            else:
                rows.append(f"| {k} | {fmt(b)} | {fmt(t)} |")
    rows.append(f"| test rows (generated) | {base.get('n')} | {tuned.get('n')} |")
    return "\n".join(rows)


def run_part(part: str, config: str, out: Path, threads: int, extra: list[str]) -> dict:
    from tunelab.config import load_config
    from tunelab.sft.run import train_sft

    overrides = [f"output_dir={out / part}", f"train.num_threads={threads}", *extra]
    cfg = load_config(config, overrides)
    torch.set_num_threads(threads)
    print(f"== {part}: {config} {' '.join(overrides)}", flush=True)
    started = time.perf_counter()
    base = score_base(cfg)
    base_seconds = time.perf_counter() - started
    print(f"base model scored in {base_seconds:.0f} s: loss {base['loss']:.4f}", flush=True)
    summary = train_sft(cfg, force=True)
    tuned = dict(summary["test"], by_lang=tuned_by_lang(out / part, cfg))
    report = json.loads((out / part / "data_report.json").read_text())
    result = {"part": part, "config": config, "overrides": overrides, "model": cfg.model.name,
              "sizes": report["sizes"], "skipped": report["skipped_rows"], "truncated": report["truncated"],
              "train_seconds": summary["train_seconds"], "steps": summary["steps"],
              "train_tokens_per_second": summary["train_tokens_per_second"],
              "peak_memory_mb": summary["peak_memory_mb"], "threads": threads, "host": platform.node(),
              "torch": torch.__version__, "base": base, "fine_tuned": tuned}
    (out / f"bench_sft_{part}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"\n## {part}: {cfg.model.name}, {report['sizes']} rows, skipped {report['skipped_rows'] or 'none'}")
    print(table(base, tuned))
    for lang in sorted(base.get("by_lang") or {}):
        print(f"\n{part}, rows with lang = {lang}:")
        print(table(base["by_lang"][lang], tuned["by_lang"][lang]))
    print(f"training: {summary['steps']} steps in {summary['train_seconds']:.0f} s on CPU ({threads} thread(s)), "
          f"{summary['train_tokens_per_second']:.0f} tokens/s, peak RSS {summary['peak_memory_mb']:.0f} MB; "
          f"generation: base {base['generation_seconds']:.0f} s, fine-tuned {tuned.get('generation_seconds', 0):.0f} s", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", choices=sorted(CONFIGS), default=["alpaca", "docqa"])
    ap.add_argument("--docqa-config", default=CONFIGS["docqa"], help="e.g. configs/docqa-ko-qwen.yaml")
    ap.add_argument("--out", default="runs/bench-sft")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--rescore", action="store_true",
                    help="train nothing: print the fine-tuned run's per-language scores from OUT/PART/test_predictions.jsonl")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a dotted config override for every part (repeatable), e.g. --set train.max_steps=10")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for part in args.part:
        if args.rescore:
            from tunelab.config import load_config

            config = args.docqa_config if part == "docqa" else CONFIGS[part]
            cfg = load_config(config, [f"output_dir={out / part}", f"train.num_threads={args.threads}", *args.overrides])
            for lang, scores in (tuned_by_lang(out / part, cfg) or {}).items():
                print(f"\n{part} ({config}), fine-tuned, rows with lang = {lang}:")
                print(table({}, scores).replace("| n/a |", "| - |"))
            continue
        run_part(part, args.docqa_config if part == "docqa" else CONFIGS[part], out, args.threads, args.overrides)


if __name__ == "__main__":
    main()
