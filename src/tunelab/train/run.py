"""A classification run from config to run folder.

    tunelab train configs/spam-smollm2.yaml [--resume] [--force] [train.lr=1e-4 ...]

Steps: data (read, check, balance, split) -> tokenizer and encoding -> backbone + head + trainable
policy -> the loop (validation, best checkpoint, early stopping, resumable checkpoints) -> the best
weights evaluated on the test split -> `model/` exported -> `summary.json` (written last: a run
folder with it is finished).

Run folder: config.yaml (resolved), data_report.json, metrics.jsonl, checkpoints/, model/,
test_metrics.json, test_report.txt, summary.json.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import shutil
import time
from pathlib import Path

import torch

from tunelab.config import RunConfig, to_yaml
from tunelab.errors import TunelabError
from tunelab.data.io_atomic import write_text_atomic


def make_accelerator(train_cfg):
    """accelerate's Accelerator with the precision rule: `auto` is bf16 on a GPU that has it, else
    fp32. bf16 on a CPU is allowed when asked for (autocast): on CPUs with native bf16 (AVX512-BF16,
    AMX) a run is about 1.6x faster than in fp32; elsewhere it is emulated and slower, which is refused."""
    from accelerate import Accelerator

    use_cpu = train_cfg.device == "cpu" or not torch.cuda.is_available()
    if train_cfg.device == "cuda" and not torch.cuda.is_available():
        raise TunelabError("train.device is cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    precision = train_cfg.precision
    if precision == "auto":
        precision = "bf16" if (not use_cpu and torch.cuda.is_bf16_supported()) else "fp32"
    if use_cpu and precision == "fp16":
        raise TunelabError("train.precision=fp16 needs a GPU; on the CPU use fp32 or bf16")
    if use_cpu and precision == "bf16" and not cpu_has_native_bf16():
        raise TunelabError("train.precision=bf16 on this CPU would be emulated and slower than fp32 "
                           "(it has neither AVX512-BF16 nor AMX); use train.precision=fp32")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    try:
        return Accelerator(cpu=use_cpu, mixed_precision=mixed), precision
    except ValueError as err:
        # accelerate keeps one state per process and refuses a second run in the same process (a
        # notebook, an in-process sweep) that asks for another precision. With a single process
        # nothing else shares that state, so it is safe to start it afresh.
        if "already been initialized" not in str(err) or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(cpu=use_cpu, mixed_precision=mixed), precision


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def prepare_run_dir(cfg: RunConfig, resume: bool, force: bool) -> Path:
    """Create the run folder, refusing to overwrite a finished or unfinished run by accident."""
    run_dir = Path(cfg.output_dir)
    config_text = to_yaml(cfg)
    if run_dir.exists() and any(run_dir.iterdir()):
        stored = run_dir / "config.yaml"
        if resume:
            if stored.is_file() and stored.read_text(encoding="utf-8") != config_text:
                raise TunelabError(f"{stored} differs from the config given now; resume needs the same config (or use --force to start over)")
        elif force:
            shutil.rmtree(run_dir)
        elif (run_dir / "summary.json").is_file():
            raise TunelabError(f"{run_dir} already holds a finished run; choose another output_dir or pass --force to replace it")
        else:
            raise TunelabError(f"{run_dir} holds an unfinished run; pass --resume to continue it or --force to start over")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", config_text)
    return run_dir


def build_classifier(model_cfg, num_labels: int, folder: Path, seed: int):
    """Backbone from `folder` + head + trainable policy. Returns (model, tokenizer, info)."""
    from tunelab.model.backbone import load_backbone, load_tokenizer
    from tunelab.model.classifier import TextClassifier
    from tunelab.model.trainable import apply_trainable

    tokenizer = load_tokenizer(folder)
    backbone = load_backbone(folder)
    torch.manual_seed(seed)  # the head's initialisation
    model = TextClassifier(backbone, num_labels, model_cfg.pooling, model_cfg.causal_mask, model_cfg.head_dropout)
    info = apply_trainable(model, model_cfg.trainable, model_cfg.last_blocks, model_cfg.lora)
    return model, tokenizer, info


def run_facts(cfg, result, n_train_tokens: int, n_train: int, started: float, device, precision: str) -> dict:
    """The summary fields every task shares: steps, times, throughput, memory and where it ran.
    Tokens per second counts the real (non-pad) tokens of the epochs actually trained."""
    from tunelab.train.loop import plan_steps

    epochs_done = result.steps / plan_steps(n_train, cfg.train, cfg.data.padding).steps_per_epoch
    return {
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "best_step": (result.best or {}).get("step"),
        "train_seconds": round(result.train_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "train_tokens_per_second": round(n_train_tokens * epochs_done / max(result.train_seconds, 1e-9), 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": str(device),
        "precision": precision,
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sample_rows(items: list, limit: int | None, seed: int) -> list:
    """All of `items`, or a seeded random sample of `limit` of them (in their original order).

    >>> sample_rows(list(range(10)), 3, seed=0) == sample_rows(list(range(10)), 3, seed=0)
    True
    >>> len(sample_rows(list(range(10)), 3, seed=0)), sample_rows([1, 2], 5, seed=0)
    (3, [1, 2])
    """
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def train_classifier(cfg: RunConfig, resume: bool = False, force: bool = False, log=print) -> dict:
    from tunelab.assets.resolve import resolve_model
    from tunelab.data.classification import load_splits
    from tunelab.data.collate import ClassificationCollator, encode_texts
    from tunelab.eval.classification import evaluate_items, format_report
    from tunelab.model.export import export_classifier
    from tunelab.train.loop import fit
    from tunelab.train.objectives import ClassificationObjective, balanced_class_weights

    started = time.perf_counter()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run_dir = prepare_run_dir(cfg, resume, force)
    accelerator, precision = make_accelerator(cfg.train)
    device = accelerator.device

    folder = resolve_model(cfg.model.name)  # cheap: a missing model fails before the data is read
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
    write_text_atomic(run_dir / "data_report.json", json.dumps(splits.report, indent=1, ensure_ascii=False))

    log(f"data: {len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test, labels {splits.labels}")
    log(f"model: {cfg.model.name} ({'encoder' if model.encoder else 'decoder'}), pooling {cfg.model.pooling}, "
        f"trainable {info['policy']}: {info['trainable_params']:,} of {info['total_params']:,} parameters; device {device}, {precision}")

    collate = ClassificationCollator(tokenizer.pad_token_id, cfg.data.padding, max_length)
    # Scoring always pads to the longest in a length-sorted batch: predictions do not depend on
    # padding (last real token, positions from the mask), so fixed-length padding would only cost time.
    eval_collate = ClassificationCollator(tokenizer.pad_token_id, "longest", max_length)
    weights = balanced_class_weights([y for _, y in encoded["train"]], len(splits.labels)) if cfg.data.balance == "class_weights" else None
    objective = ClassificationObjective(weights)

    def validate(m):
        scores = evaluate_items(m, encoded["validation"], eval_collate, cfg.eval.batch_size, device, splits.labels, weights)
        return {k: scores[k] for k in ("loss", "accuracy", "macro_f1")}

    group = cfg.data.group_by_length if cfg.data.group_by_length != "auto" else device.type == "cpu"
    if cfg.data.group_by_length == "auto":
        log(f"data.group_by_length auto -> {group} ({device.type})")
    torch.manual_seed(cfg.train.seed)
    result = fit(model, encoded["train"], collate, objective, validate if encoded["validation"] else None, cfg.train, cfg.data.padding, run_dir, accelerator, resume=resume,
                 lengths=[len(ids) for ids, _ in encoded["train"]] if group else None, log=log)
    model = accelerator.unwrap_model(model)

    test = evaluate_items(model, encoded["test"], eval_collate, cfg.eval.batch_size, device, splits.labels) if encoded["test"] else None
    train_scored = sample_rows(encoded["train"], cfg.eval.train_rows, cfg.train.seed)
    train_scores = evaluate_items(model, train_scored, eval_collate, cfg.eval.batch_size, device, splits.labels)
    meta = export_classifier(model, tokenizer, splits.labels, run_dir / "model", extra={"max_length": max_length, "base_model": cfg.model.name, "trainable": info})
    if test is not None:
        write_text_atomic(run_dir / "test_metrics.json", json.dumps(test, indent=1, ensure_ascii=False))
        write_text_atomic(run_dir / "test_report.txt", format_report(test) + "\n")

    summary = {
        "task": "classification",
        "model": cfg.model.name,
        "labels": splits.labels,
        "trainable_params": info["trainable_params"],
        "total_params": info["total_params"],
        **run_facts(cfg, result, sum(len(ids) for ids, _ in encoded["train"]), len(encoded["train"]), started, device, precision),
        "train": {**{k: train_scores[k] for k in ("loss", "accuracy", "macro_f1")}, "rows_scored": len(train_scored)},
        "validation": {k: result.best[k] for k in ("loss", "accuracy", "macro_f1")} if result.best else None,
        "test": {k: test[k] for k in ("loss", "accuracy", "macro_f1")} if test else None,
        "hf_compatible": meta["hf_compatible"],
    }
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False))
    if test is not None:
        log("\n" + format_report(test))
    loader = "transformers AutoModelForSequenceClassification or tunelab.load" if meta["hf_compatible"] else "tunelab.load (pooling/mask choices that stock transformers classes do not represent)"
    log(f"\nrun folder: {run_dir}  (model/ loads with {loader})")
    log(f"train {result.train_seconds:.0f} s, {result.steps} steps, peak memory {summary['peak_memory_mb']:.0f} MB")
    return summary
