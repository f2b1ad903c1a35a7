"""A classification run from config to run folder.

    tunelab train configs/spam-smollm2.yaml [--resume] [--force] [train.lr=1e-4 ...]

Steps: data (read, check, balance, split) -> tokenizer and encoding -> backbone + head + trainable
policy -> the loop (validation, best checkpoint, early stopping, resumable checkpoints; micro-batches
packed into padding-free rows when data.packing resolves on, see classify/packing.py) -> the best
weights evaluated on the test split -> `model/` exported -> `summary.json` (written last: a run
folder with it is finished).

Run folder: config.yaml (resolved), data_report.json, metrics.jsonl, checkpoints/, model/,
test_metrics.json, test_report.txt, test_predictions.jsonl (per test row: text, label, prediction,
class probabilities), summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.config import RunConfig
from tunelab.data.io_atomic import write_text_atomic
from tunelab.errors import TunelabError
from tunelab.estimate import log_estimate
from tunelab.train import distributed as dist
from tunelab.train.runtime import group_by_length, run_facts, sample_rows, start_run


def build_classifier(model_cfg, num_labels: int, folder: Path, seed: int, backbone=None):
    """Backbone from `folder` (or `backbone`, e.g. one on the meta device) + head + trainable
    policy. Returns (model, tokenizer, info)."""
    from tunelab.classify.model import TextClassifier, apply_trainable
    from tunelab.model.backbone import load_backbone, load_tokenizer

    tokenizer = load_tokenizer(folder)
    backbone = load_backbone(folder) if backbone is None else backbone
    torch.manual_seed(seed)  # the head's initialisation
    model = TextClassifier(backbone, num_labels, model_cfg.pooling, model_cfg.causal_mask, model_cfg.head_dropout)
    info = apply_trainable(model, model_cfg.trainable, model_cfg.last_blocks, model_cfg.lora)
    return model, tokenizer, info


def meta_classifier(cfg: RunConfig, folder: Path):
    """The run's classifier on the meta device with its trainable policy (a 2-label head: the data
    is not read), and what `tunelab.estimate` needs to know of this recipe: classification has no
    gradient checkpointing and no LM head."""
    from tunelab.model.backbone import meta_backbone

    model, _, _ = build_classifier(cfg.model, 2, folder, cfg.train.seed, backbone=meta_backbone(folder))
    return model, {"checkpointing": None, "logit_rows": None}


def train_classifier(cfg: RunConfig, resume: bool = False, force: bool = False, log=print) -> dict:
    from tunelab.assets.resolve import resolve_model
    from tunelab.classify.collate import ClassificationCollator, PackingCollator, encode_texts
    from tunelab.classify.data import load_splits
    from tunelab.classify.evaluate import evaluate_items, format_report, prediction_lines
    from tunelab.classify.export import export_classifier
    from tunelab.classify.frozen_cache import frozen_cache, why_not
    from tunelab.classify.objective import ClassificationObjective, balanced_class_weights
    from tunelab.classify.packing import resolve_packing, restore_attention, use_varlen, varlen_blocker
    from tunelab.train.compiling import eager, setup_compile, uncompile_blocks
    from tunelab.train.cuda_graphs import resolve_cuda_graphs
    from tunelab.train.fastpath import classification_auto
    from tunelab.train.loop import fit, plan_steps

    run_dir, accelerator, precision, started = start_run(cfg, resume, force)
    device = accelerator.device
    log = dist.main_only(log)  # with several processes, rank 0 speaks and writes (train/distributed.py)

    folder = dist.on_main(resolve_model, cfg.model.name)  # cheap: a missing model fails before the data is read
    splits = load_splits(cfg.data)
    model, tokenizer, info = build_classifier(cfg.model, len(splits.labels), folder, cfg.train.seed)
    max_length = cfg.data.max_length
    encoded = {}
    for name, examples in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        enc = encode_texts(tokenizer, [e.text for e in examples], splits.label_ids(examples), max_length)
        empty = next((e for e, ids in zip(examples, enc.ids) if not ids), None)
        if empty is not None:
            raise TunelabError(f"{empty.source}: the text becomes no tokens with this model's tokenizer")
        encoded[name] = list(zip(enc.ids, enc.labels))
        splits.report.setdefault("truncated", {})[name] = enc.truncated
    lengths = sorted(len(ids) for ids, _ in encoded["train"])
    splits.report["train_tokens"] = {"median": lengths[len(lengths) // 2], "max": lengths[-1]}
    dist.on_main(write_text_atomic, run_dir / "data_report.json", json.dumps(splits.report, indent=1, ensure_ascii=False))

    log(f"data: {len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test, labels {splits.labels}")
    log(f"model: {cfg.model.name} ({'encoder' if model.encoder else 'decoder'}), pooling {cfg.model.pooling}, "
        f"trainable {info['policy']}: {info['trainable_params']:,} of {info['total_params']:,} parameters; device {device}, {precision}")
    log_estimate(cfg, model, device, precision, log)

    # data.packing: one padding-free row per micro-batch (same loss), where the model's family can
    # keep attention inside each example; otherwise padded as data.padding says.
    # auto (tunelab.train.fastpath): on CUDA, packed rows for long texts or long runs, compiled with them for long runs.
    train_lengths = [len(ids) for ids, _ in encoded["train"]]
    cache_applies = why_not(model, cfg.train.cache_frozen, info["policy"], False, dist.world_size()) is None
    blocker = "the frozen-prefix cache applies" if cache_applies else varlen_blocker(model, device)
    auto = classification_auto(device.type, blocker, plan_steps(len(train_lengths), cfg.train, lengths=train_lengths).total_steps,
                               sum(train_lengths) / len(train_lengths), info["policy"], graphs_asked=cfg.train.cuda_graphs == "on")
    packed = resolve_packing(cfg.data.packing, device, model.packing_plan, log, auto)
    if packed:
        use_varlen(model, device, log)  # CUDA: no mask at all, the example boundaries instead
    if packed and cfg.data.padding != "longest":
        log(f"data.padding {cfg.data.padding} does not apply: packed micro-batches have no padding")
    graphs, graphs_why = resolve_cuda_graphs(cfg.train.cuda_graphs, device.type, "classification", packed, dist.world_size(),
                                             cfg.train.gradient_checkpointing, precision)
    if cfg.train.cuda_graphs != "auto":
        log(graphs_why)
    collate = PackingCollator(tokenizer.pad_token_id, fixed_shapes=graphs) if packed else \
        ClassificationCollator(tokenizer.pad_token_id, cfg.data.padding, max_length)
    # Scoring always pads to the longest in a length-sorted batch: predictions do not depend on
    # padding (last real token, positions from the mask), so fixed-length padding would only cost time.
    eval_collate = ClassificationCollator(tokenizer.pad_token_id, "longest", max_length)
    # train.cache_frozen: the frozen lower blocks run once per text, every later pass from their output.
    cache = frozen_cache(model, [ids for items in encoded.values() for ids, _ in items], cfg.train.cache_frozen, info["policy"], packed, dist.world_size(),
                         tokenizer.pad_token_id, cfg.eval.batch_size, device, accelerator.autocast, run_dir, log=log)
    if cache is not None:
        collate, eval_collate = cache.collator(collate), cache.collator(eval_collate)
    weights = balanced_class_weights([y for _, y in encoded["train"]], len(splits.labels)) if cfg.data.balance == "class_weights" else None
    objective = ClassificationObjective(weights)

    group = group_by_length(cfg, device, log)
    torch.manual_seed(cfg.train.seed)
    # padding none (unpacked): one sequence per micro-batch, accumulated up to the configured batch size.
    plan = plan_steps(len(encoded["train"]), cfg.train, micro_batch=1 if cfg.data.padding == "none" and not packed else None,
                      lengths=train_lengths)  # for train.max_tokens_per_micro_batch
    compiled = setup_compile(cfg.train, model, device, log, auto if packed else None)

    def validate(m):
        with eager(compiled):  # no gradients, other shapes: compiled blocks would recompile
            scores = evaluate_items(m, encoded["validation"], eval_collate, cfg.eval.batch_size, device, splits.labels, weights)
        return {k: scores[k] for k in ("loss", "accuracy", "macro_f1")}

    result = fit(model, encoded["train"], collate, objective, validate if encoded["validation"] else None, cfg.train, plan, run_dir, accelerator, resume=resume,
                 lengths=train_lengths if group else None, log=log, cuda_graphs=graphs)
    model = result.model  # plain and whole on every process, the best weights
    if compiled:
        uncompile_blocks(model)
    restore_attention(model)  # scoring and the export use the model's own attention

    test = evaluate_items(model, encoded["test"], eval_collate, cfg.eval.batch_size, device, splits.labels,
                          with_probabilities=True) if encoded["test"] else None
    test_probabilities = test.pop("probabilities") if test else None
    train_scored = sample_rows(encoded["train"], cfg.eval.train_rows, cfg.train.seed)
    train_scores = evaluate_items(model, train_scored, eval_collate, cfg.eval.batch_size, device, splits.labels)
    cached = cache.close() if cache is not None else None
    meta = dist.on_main(export_classifier, model, tokenizer, splits.labels, run_dir / "model", extra={"max_length": max_length, "base_model": cfg.model.name, "trainable": info})
    if test is not None:
        dist.on_main(write_text_atomic, run_dir / "test_metrics.json", json.dumps(test, indent=1, ensure_ascii=False))
        dist.on_main(write_text_atomic, run_dir / "test_report.txt", format_report(test) + "\n")
        dist.on_main(write_text_atomic, run_dir / "test_predictions.jsonl", prediction_lines(
            [e.text for e in splits.test], [y for _, y in encoded["test"]], test_probabilities, splits.labels))

    summary = {
        "task": "classification",
        "model": cfg.model.name,
        "labels": splits.labels,
        "trainable_params": info["trainable_params"],
        "total_params": info["total_params"],
        **run_facts(cfg, result, sum(len(ids) for ids, _ in encoded["train"]), started, device, precision),
        "train": {**{k: train_scores[k] for k in ("loss", "accuracy", "macro_f1")}, "rows_scored": len(train_scored)},
        "validation": {k: result.best[k] for k in ("loss", "accuracy", "macro_f1")} if result.best else None,
        "test": {k: test[k] for k in ("loss", "accuracy", "macro_f1")} if test else None,
        "hf_compatible": meta["hf_compatible"],
        "packing": packed,
        "cuda_graphs": graphs,
        "frozen_cache": cached,
    }
    dist.on_main(write_text_atomic, run_dir / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False))
    if test is not None:
        log("\n" + format_report(test))
    loader = "transformers AutoModelForSequenceClassification or tunelab.load" if meta["hf_compatible"] else "tunelab.load (pooling/mask choices that stock transformers classes do not represent)"
    log(f"\nrun folder: {run_dir}  (model/ loads with {loader})")
    log(f"train {result.train_seconds:.0f} s, {result.steps} steps, peak memory {summary['peak_memory_mb']:.0f} MB")
    return summary
