"""An SFT (instruction fine-tuning) run from config to run folder.

    tunelab train configs/docqa-ko-gemma.yaml [--resume] [--force] [train.lr=1e-4 ...]

Steps: rows read, checked and split (sft/data.py) -> template built and saved -> rows -> messages
-> (ids, labels), truncation counted -> causal LM in fp32 + LoRA (default) or all weights -> the
same loop as classification with the SFT objective (validation loss and perplexity, best
checkpoint, early stopping, resumable checkpoints) -> best weights: `adapter/` (PEFT) and
`model/` (merged, full precision, the template as its chat template) -> test loss and generated
answers scored -> `summary.json` (written last: a run folder with it is finished).

Run folder: config.yaml, sft_template.json, data_report.json, metrics.jsonl, checkpoints/,
adapter/ (LoRA runs), model/, test_metrics.json, test_predictions.jsonl, examples.md,
summary.json.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter

import torch

from tunelab.config import RunConfig
from tunelab.data.io_atomic import write_text_atomic
from tunelab.train.runtime import group_by_length, run_facts, start_run


def build_sft_template(sft_cfg, tokenizer):
    """The template named by the config's sft section (plain arguments to build_template)."""
    from tunelab.sft.templates import build_template

    return build_template(sft_cfg.template, tokenizer, prompt=sft_cfg.prompt, response=sft_cfg.response,
                          system=sft_cfg.system, stop=sft_cfg.stop, user_template=sft_cfg.user_template)


def build_sft_model(model_cfg, folder, seed: int):
    """Causal LM + trainable policy (lora: PEFT adapters; all: every weight). (model, info)."""
    from tunelab.model.backbone import load_backbone
    from tunelab.model.lora import count_parameters, inject_lora

    model = load_backbone(folder, lm_head=True)
    torch.manual_seed(seed)  # LoRA's A matrices
    if model_cfg.trainable == "lora":
        lora = model_cfg.lora
        model = inject_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, task_type="CAUSAL_LM")
    else:
        for p in model.parameters():
            p.requires_grad = True
    trainable, total = count_parameters(model)
    return model, {"policy": model_cfg.trainable, "trainable_params": trainable, "total_params": total}


def train_sft(cfg: RunConfig, resume: bool = False, force: bool = False, log=print) -> dict:
    from tunelab.assets.resolve import resolve_model
    from tunelab.model.backbone import load_tokenizer
    from tunelab.sft.collate import collate
    from tunelab.sft.data import encode_split, load_sft_splits
    from tunelab.sft.evaluate import examples_markdown, format_scores, generate_and_score, token_loss
    from tunelab.sft.export import merge_lora, save_adapter, save_merged
    from tunelab.sft.objective import SftObjective
    from tunelab.sft.templates import TEMPLATE_FILE, save_template
    from tunelab.train.loop import fit, plan_steps

    assert cfg.task == "sft" and cfg.sft is not None
    run_dir, accelerator, precision, started = start_run(cfg, resume, force)
    device = accelerator.device
    sft, max_length = cfg.sft, cfg.data.max_length

    folder = resolve_model(cfg.model.name)  # cheap: a missing model fails before the data is read
    splits = load_sft_splits(cfg.data, sft)
    tokenizer = load_tokenizer(folder)
    template = build_sft_template(sft, tokenizer)
    save_template(template, run_dir / TEMPLATE_FILE)

    encoded, report = {}, splits.report
    for name in ("train", "validation", "test"):
        counts: Counter = Counter()
        encoded[name] = encode_split(getattr(splits, name), template, tokenizer, max_length=max_length,
                                     train_on_prompt=sft.train_on_prompt, bad_rows=cfg.data.bad_rows, counts=counts)
        report.setdefault("truncated", {})[name] = counts["truncated"]
        report.setdefault("too_long_skipped", {})[name] = counts["too_long"]
    if not encoded["train"]:
        from tunelab.errors import TunelabError

        raise TunelabError(f"{report['train_file']}: no training rows fit data.max_length={max_length}")
    lengths = sorted(len(e["input_ids"]) for e in encoded["train"])
    targets = sorted(sum(t != -100 for t in e["labels"][1:]) for e in encoded["train"])
    report["train_tokens"] = {"median": lengths[len(lengths) // 2], "max": lengths[-1], "total": sum(lengths),
                              "target_median": targets[len(targets) // 2], "target_total": sum(targets)}
    write_text_atomic(run_dir / "data_report.json", json.dumps(report, indent=1, ensure_ascii=False))

    model, info = build_sft_model(cfg.model, folder, cfg.train.seed)
    log(f"data: {len(encoded['train'])} train / {len(encoded['validation'])} validation / {len(encoded['test'])} test rows, "
        f"template {sft.template}, truncated {report['truncated']}, skipped {report['skipped_rows'] or 'none'}, "
        f"too long (skipped) {report['too_long_skipped']}")
    log(f"model: {cfg.model.name}, trainable {info['policy']}: "
        f"{info['trainable_params']:,} of {info['total_params']:,} parameters; device {device}, {precision}")

    pad_id = tokenizer.pad_token_id
    batch_of = functools.partial(collate, pad_id=pad_id, multiple_of=max_length if cfg.data.padding == "max_length" else None)

    def validate(m):
        scores = token_loss(m, encoded["validation"], pad_id, cfg.eval.batch_size, device)
        return {"loss": scores["loss"], "perplexity": scores["perplexity"]}

    group = group_by_length(cfg, device, log)
    torch.manual_seed(cfg.train.seed)
    plan = plan_steps(len(encoded["train"]), cfg.train, micro_batch=1 if cfg.data.padding == "none" else None)
    result = fit(model, encoded["train"], batch_of, SftObjective(), validate if encoded["validation"] else None, cfg.train,
                 plan, run_dir, accelerator, resume=resume,
                 lengths=[len(e["input_ids"]) for e in encoded["train"]] if group else None, log=log)
    model = accelerator.unwrap_model(model)
    model.eval()

    generation = sft.generation.model_dump()
    if info["policy"] == "lora":
        save_adapter(model, tokenizer, template, run_dir / "adapter")
    model = merge_lora(model)  # the exported weights are what gets evaluated
    meta = {"base_model": cfg.model.name, "base_folder": str(folder), "max_length": max_length,
            "trainable": info, "format": sft.format, "train_on_prompt": sft.train_on_prompt}
    save_merged(model, tokenizer, template, run_dir / "model", meta=meta, generation=generation)

    train_loss = token_loss(model, encoded["train"], pad_id, cfg.eval.batch_size, device)
    test = None
    if encoded["test"]:
        test = token_loss(model, encoded["test"], pad_id, cfg.eval.batch_size, device)
        items = splits.test[: sft.generation.max_rows] if sft.generation.max_rows else splits.test
        log(f"generating answers for {len(items)} test rows (max_new_tokens {generation['max_new_tokens']})")
        gen_started = time.perf_counter()
        gen = generate_and_score(model, tokenizer, template, items, generation, cfg.eval.batch_size)
        test.update(gen["scores"], generation_seconds=round(time.perf_counter() - gen_started, 2))
        write_text_atomic(run_dir / "test_metrics.json", json.dumps(test, indent=1, ensure_ascii=False))
        write_text_atomic(run_dir / "test_predictions.jsonl", "".join(
            json.dumps({"source": it.where, "prompt": p, "reference": r, "generated": g}, ensure_ascii=False) + "\n"
            for it, p, r, g in zip(items, gen["prompts"], gen["references"], gen["predictions"])))
        write_text_atomic(run_dir / "examples.md", examples_markdown({**gen, "scores": test}, n=sft.examples,
                                                                       title=f"Test examples ({cfg.model.name}, {sft.template})"))

    summary = {
        "task": "sft",
        "model": cfg.model.name,
        "template": sft.template,
        "trainable": info["policy"],
        "trainable_params": info["trainable_params"],
        "total_params": info["total_params"],
        **run_facts(cfg, result, report["train_tokens"]["total"], started, device, precision),
        "train": {"loss": train_loss["loss"], "perplexity": train_loss["perplexity"]},
        "validation": {k: result.best[k] for k in ("loss", "perplexity")} if result.best else None,
        "test": test,
    }
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False))
    if test is not None:
        log("\n" + format_scores(test))
    log(f"\nrun folder: {run_dir}  (model/ loads with transformers AutoModelForCausalLM"
        f"{'; adapter/ with PEFT' if info['policy'] == 'lora' else ''}; try `tunelab generate {run_dir} --prompt ...`)")
    log(f"train {result.train_seconds:.0f} s, {result.steps} steps, peak memory {summary['peak_memory_mb']:.0f} MB")
    return summary
