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

The GPU fast path, each part a config switch with the same loss as without it: `data.packing`
(padding-free packed micro-batches, `use_packing`), `train.max_tokens_per_micro_batch` (micro-
batches cut by tokens, in the loop), `train.gradient_checkpointing`, `train.compile` (the
transformer blocks compiled, CUDA only) and `train.cuda_graphs` (each packed micro-batch one
replayed CUDA graph, `tunelab.train.cuda_graphs`). The loss never builds full logits (sft/objective.py).
Validation runs with the model's usual attention and its compiled blocks eager (`plain_model`),
and packing and compiling are undone after training, so evaluation, generation and the exported
model are the plain model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections import Counter

import torch

from tunelab.config import RunConfig
from tunelab.data.io_atomic import write_text_atomic
from tunelab.errors import TunelabError
from tunelab.estimate import log_estimate
from tunelab.train import distributed as dist
from tunelab.train.runtime import group_by_length, run_facts, start_run


def build_sft_template(sft_cfg, tokenizer):
    """The template named by the config's sft section (plain arguments to build_template)."""
    from tunelab.sft.templates import build_template

    return build_template(sft_cfg.template, tokenizer, prompt=sft_cfg.prompt, response=sft_cfg.response,
                          system=sft_cfg.system, stop=sft_cfg.stop, user_template=sft_cfg.user_template)


def build_sft_model(model_cfg, folder, seed: int, model=None):
    """Causal LM from `folder` (or `model`, e.g. one on the meta device) + trainable policy (lora:
    PEFT adapters; all: every weight). (model, info)."""
    from tunelab.model.backbone import load_backbone
    from tunelab.model.lora import count_parameters, inject_lora

    model = load_backbone(folder, lm_head=True) if model is None else model
    torch.manual_seed(seed)  # LoRA's A matrices
    if model_cfg.trainable == "lora":
        lora = model_cfg.lora
        model = inject_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, task_type="CAUSAL_LM")
    else:
        for p in model.parameters():
            p.requires_grad = True
    trainable, total = count_parameters(model)
    return model, {"policy": model_cfg.trainable, "trainable_params": trainable, "total_params": total}


def meta_sft_model(cfg: RunConfig, folder):
    """The run's causal LM on the meta device with its trainable policy, and what
    `tunelab.estimate` needs to know of this recipe (gradient checkpointing as configured; the
    loss holds the LM head's fp32 logits for CE_CHUNK target rows at a time)."""
    from tunelab.model.backbone import meta_backbone
    from tunelab.sft.objective import CE_CHUNK

    model, _ = build_sft_model(cfg.model, folder, cfg.train.seed, model=meta_backbone(folder, lm_head=True))
    return model, {"checkpointing": cfg.train.gradient_checkpointing, "logit_rows": CE_CHUNK}


def use_packing(setting: str, model, device, log=print, graphs_blocker: str | None = None) -> tuple[bool, str]:
    """`data.packing` resolved. `auto` packs where the packed micro-batches can be replayed as CUDA
    graphs on the varlen kernel (`graphs_blocker`: why they cannot, None when they can; the rule
    and its measurements in `tunelab.train.fastpath.sft_auto`), and pads elsewhere. `on` packs.
    When packing, the model moves to `device`, tries the attention kernels `packed_attention`
    lists, best first (auto: the varlen kernel only), and `packing_isolates` must confirm that
    packed examples stay apart; a model that mixes them trains on padded batches instead (logged),
    never on mixed ones.

    Returns (packing, the attention implementation the model had before) so the caller can undo it.
    """
    from tunelab.model import varlen
    from tunelab.sft.objective import packed_attention, packing_isolates
    from tunelab.train.fastpath import sft_auto

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = base.config._attn_implementation
    if setting == "off":
        log(f"data.packing off -> off ({device.type}): padded micro-batches")
        return False, before
    kernels = packed_attention(base.config, device.type)
    if setting == "auto":
        choice = sft_auto(device.type, graphs_blocker, varlen.NAME in kernels)
        if not choice.packing:
            log(f"data.packing auto -> off ({device.type}): {choice.why}")
            return False, before
        kernels = [varlen.NAME]
    model.to(device)
    for attn in kernels:
        try:
            base.set_attn_implementation(attn)
        except (ValueError, ImportError) as err:
            log(f"data.packing: attention {attn} not available ({err})")
            continue
        if packing_isolates(model):
            if attn == "flex_attention":
                # flex's kernel and block mask are compiled functions guarded on the mask function they
                # were traced with (packed rows, padded validation, the probe), times grad mode and the
                # first static then dynamic shapes: more variants than dynamo's default of 8, past
                # which it would run flex eagerly (dense scores: slow, O(T^2) memory).
                import torch._dynamo

                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            log(f"data.packing {setting} -> on ({device.type}): one padding-free row per micro-batch, attention {attn}")
            return True, before
    base.set_attn_implementation(before)
    import transformers

    log(f"data.packing {setting} -> off: {base.config.model_type} does not keep packed examples apart "
        f"(transformers {transformers.__version__}); padded micro-batches instead")
    return False, before


@contextlib.contextmanager
def plain_model(model, attn: str, compiled: bool):
    """Within: the model with attention `attn` and its compiled blocks run eagerly. Validation
    (padded rows, no gradients) then neither recompiles the blocks (measured on an H200: 20 s for
    a first validation under compile) nor adds mask variants to flex_attention's compiled kernel."""
    from tunelab.train.compiling import eager

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = base.config._attn_implementation
    if attn != current:
        base.set_attn_implementation(attn)
    try:
        with eager(compiled):
            yield model
    finally:
        if attn != current:
            base.set_attn_implementation(current)


def enable_gradient_checkpointing(model, lora: bool) -> None:
    """Recompute each block's activations in the backward pass (non-reentrant checkpointing, which
    needs no input that requires grad; LoRA still gets `enable_input_require_grads`, harmless and
    what PEFT's own recipes do). transformers 5.2x renamed the switch (the old name warns)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        base.enable_input_require_grads()


def encode_splits(cfg: RunConfig, splits, template, tokenizer) -> tuple[dict, dict]:
    """The three splits as token ids and labels, and the data report with what was truncated or
    skipped and the training tokens (all and target)."""
    from tunelab.sft.data import encode_split

    encoded, report = {}, splits.report
    for name in ("train", "validation", "test"):
        counts: Counter = Counter()
        encoded[name] = encode_split(getattr(splits, name), template, tokenizer, max_length=cfg.data.max_length,
                                     train_on_prompt=cfg.sft.train_on_prompt, bad_rows=cfg.data.bad_rows, counts=counts)
        report.setdefault("truncated", {})[name] = counts["truncated"]
        report.setdefault("too_long_skipped", {})[name] = counts["too_long"]
    if not encoded["train"]:
        raise TunelabError(f"{report['train_file']}: no training rows fit data.max_length={cfg.data.max_length}")
    lengths = sorted(len(e["input_ids"]) for e in encoded["train"])
    targets = sorted(sum(t != -100 for t in e["labels"][1:]) for e in encoded["train"])
    report["train_tokens"] = {"median": lengths[len(lengths) // 2], "max": lengths[-1], "total": sum(lengths),
                              "target_median": targets[len(targets) // 2], "target_total": sum(targets)}
    return encoded, report


def score_test(cfg: RunConfig, model, tokenizer, template, items, examples, run_dir, log) -> dict:
    """Token loss on the test split, then answers generated for its first rows and scored;
    writes test_metrics.json, test_predictions.jsonl and examples.md."""
    from tunelab.sft.evaluate import examples_markdown, generate_and_score, token_loss

    sft, device = cfg.sft, next(model.parameters()).device
    generation = sft.generation.model_dump()
    test = token_loss(model, examples, tokenizer.pad_token_id, cfg.eval.batch_size, device)
    items = items[: sft.generation.max_rows] if sft.generation.max_rows else items
    log(f"generating answers for {len(items)} test rows (max_new_tokens {generation['max_new_tokens']})")
    started = time.perf_counter()
    gen = generate_and_score(model, tokenizer, template, items, generation, cfg.eval.batch_size)
    test.update(gen["scores"], generation_seconds=round(time.perf_counter() - started, 2))
    dist.on_main(write_text_atomic, run_dir / "test_metrics.json", json.dumps(test, indent=1, ensure_ascii=False))
    dist.on_main(write_text_atomic, run_dir / "test_predictions.jsonl", "".join(
        json.dumps({"source": it.where, "prompt": p, "reference": r, "generated": g}, ensure_ascii=False) + "\n"
        for it, p, r, g in zip(items, gen["prompts"], gen["references"], gen["predictions"])))
    dist.on_main(write_text_atomic, run_dir / "examples.md", examples_markdown({**gen, "scores": test}, n=sft.examples,
                                                                   title=f"Test examples ({cfg.model.name}, {sft.template})"))
    return test


def train_sft(cfg: RunConfig, resume: bool = False, force: bool = False, log=print) -> dict:
    from tunelab.assets.resolve import resolve_model
    from tunelab.model.backbone import load_tokenizer
    from tunelab.sft.collate import collate, pack
    from tunelab.sft.data import load_sft_splits
    from tunelab.sft.evaluate import format_scores, token_loss
    from tunelab.sft.export import merge_lora, save_adapter, save_merged
    from tunelab.sft.objective import CE_CHUNK, SftObjective, head_is_plain
    from tunelab.sft.templates import TEMPLATE_FILE, save_template
    from tunelab.train.compiling import setup_compile, uncompile_blocks
    from tunelab.train.cuda_graphs import resolve_cuda_graphs
    from tunelab.train.loop import fit, plan_steps

    assert cfg.task == "sft" and cfg.sft is not None
    run_dir, accelerator, precision, started = start_run(cfg, resume, force)
    device = accelerator.device
    sft, max_length = cfg.sft, cfg.data.max_length
    log = dist.main_only(log)  # with several processes, rank 0 speaks and writes (train/distributed.py)

    folder = dist.on_main(resolve_model, cfg.model.name)  # cheap: a missing model fails before the data is read
    splits = load_sft_splits(cfg.data, sft)
    tokenizer = load_tokenizer(folder)
    template = build_sft_template(sft, tokenizer)
    dist.on_main(save_template, template, run_dir / TEMPLATE_FILE)

    encoded, report = encode_splits(cfg, splits, template, tokenizer)
    dist.on_main(write_text_atomic, run_dir / "data_report.json", json.dumps(report, indent=1, ensure_ascii=False))

    model, info = build_sft_model(cfg.model, folder, cfg.train.seed)
    log(f"data: {len(encoded['train'])} train / {len(encoded['validation'])} validation / {len(encoded['test'])} test rows, "
        f"template {sft.template}, truncated {report['truncated']}, skipped {report['skipped_rows'] or 'none'}, "
        f"too long (skipped) {report['too_long_skipped']}")
    log(f"model: {cfg.model.name}, trainable {info['policy']}: "
        f"{info['trainable_params']:,} of {info['total_params']:,} parameters; device {device}, {precision}")

    pad_id = tokenizer.pad_token_id
    processes, checkpointing = dist.world_size(), cfg.train.gradient_checkpointing
    graphs_possible, graphs_why = resolve_cuda_graphs(cfg.train.cuda_graphs, device.type, "sft", True, processes, checkpointing, precision)
    packing, attn_before = use_packing(cfg.data.packing, model, device, log, graphs_blocker=None if graphs_possible else graphs_why)
    batch_of = pack if packing else functools.partial(collate, pad_id=pad_id, multiple_of=max_length if cfg.data.padding == "max_length" else None)
    if packing and cfg.data.padding != "longest":
        log(f"data.padding {cfg.data.padding} does not apply: packed micro-batches have no padding")
    log(f"loss: LM head on the target positions only, in chunks of {CE_CHUNK}" if head_is_plain(model)
        else "loss: the model's own logits of the target positions (its head post-processes logits)")
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model, lora=info["policy"] == "lora")
        log("train.gradient_checkpointing: on (activations recomputed in the backward pass)")
    log_estimate(cfg, model, device, precision, log, checkpointing=cfg.train.gradient_checkpointing, logit_rows=CE_CHUNK)

    def validate(m):
        with plain_model(model, attn_before, compiled):
            scores = token_loss(m, encoded["validation"], pad_id, cfg.eval.batch_size, device)
        return {"loss": scores["loss"], "perplexity": scores["perplexity"]}

    group = group_by_length(cfg, device, log)
    torch.manual_seed(cfg.train.seed)
    train_lengths = [len(e["input_ids"]) for e in encoded["train"]]
    plan = plan_steps(len(encoded["train"]), cfg.train, micro_batch=1 if cfg.data.padding == "none" and not packing else None,
                      lengths=train_lengths)
    compiled = setup_compile(cfg.train, model, device, log)
    graphs, why = resolve_cuda_graphs(cfg.train.cuda_graphs, device.type, "sft", packing, processes, checkpointing, precision)
    if graphs:
        batch_of = functools.partial(pack, fixed_shapes=True)
    if cfg.train.cuda_graphs != "auto" or device.type == "cuda":
        log(why)
    result = fit(model, encoded["train"], batch_of, SftObjective(), validate if encoded["validation"] else None, cfg.train,
                 plan, run_dir, accelerator, resume=resume, lengths=train_lengths if group else None, log=log, cuda_graphs=graphs)
    model = result.model  # plain and whole on every process, the best weights
    model.eval()
    if compiled:
        uncompile_blocks(model)
    if packing:  # evaluation, generation and the export use the model's usual attention
        (model.get_base_model() if hasattr(model, "get_base_model") else model).set_attn_implementation(attn_before)

    generation = sft.generation.model_dump()
    if info["policy"] == "lora":
        dist.on_main(save_adapter, model, tokenizer, template, run_dir / "adapter")
    model = merge_lora(model)  # the exported weights are what gets evaluated
    meta = {"base_model": cfg.model.name, "base_folder": str(folder), "max_length": max_length,
            "trainable": info, "format": sft.format, "train_on_prompt": sft.train_on_prompt}
    dist.on_main(save_merged, model, tokenizer, template, run_dir / "model", meta=meta, generation=generation)

    train_loss = token_loss(model, encoded["train"], pad_id, cfg.eval.batch_size, device)
    test = score_test(cfg, model, tokenizer, template, splits.test, encoded["test"], run_dir, log) if encoded["test"] else None

    summary = {
        "task": "sft",
        "model": cfg.model.name,
        "template": sft.template,
        "trainable": info["policy"],
        "trainable_params": info["trainable_params"],
        "total_params": info["total_params"],
        "packing": packing,
        "cuda_graphs": graphs,
        **run_facts(cfg, result, report["train_tokens"]["total"], started, device, precision),
        "train": {"loss": train_loss["loss"], "perplexity": train_loss["perplexity"]},
        "validation": {k: result.best[k] for k in ("loss", "perplexity")} if result.best else None,
        "test": test,
    }
    dist.on_main(write_text_atomic, run_dir / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False))
    if test is not None:
        log("\n" + format_scores(test))
    log(f"\nrun folder: {run_dir}  (model/ loads with transformers AutoModelForCausalLM"
        f"{'; adapter/ with PEFT' if info['policy'] == 'lora' else ''}; try `tunelab generate {run_dir} --prompt ...`)")
    log(f"train {result.train_seconds:.0f} s, {result.steps} steps, peak memory {summary['peak_memory_mb']:.0f} MB")
    return summary
