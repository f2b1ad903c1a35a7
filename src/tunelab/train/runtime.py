"""Plumbing every recipe shares: the accelerator and its precision rule, the run folder, the
facts every summary reports (steps, time, throughput, memory, host) and seeded row samples.

Recipes (`tunelab.classify.run`, `tunelab.sft.run`) call these in the same order: threads,
`prepare_run_dir`, `make_accelerator`, ..., `run_facts` for summary.json.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import shutil
import time
from pathlib import Path

import torch

from tunelab.config import RunConfig, to_yaml
from tunelab.data.io_atomic import write_text_atomic
from tunelab.errors import TunelabError
from tunelab.train import distributed as dist


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


def _config_of_this_run(run_dir: Path) -> bool:
    """Whether run_dir/config.yaml is the resolved config a run wrote there (its output_dir is this
    folder): a run killed before its first other file is still a run that --force may replace."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and Path(str(data.get("output_dir", ""))).resolve() == run_dir.resolve()


def _written_by_a_run(run_dir: Path) -> bool:
    """Whether run_dir/config.yaml is, byte for byte, the resolved config a run of this folder
    wrote (`_config_of_this_run`, and in to_yaml's exact form): never a config a person wrote."""
    from tunelab.config import load_config

    if not _config_of_this_run(run_dir):
        return False
    text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    try:
        return to_yaml(load_config(run_dir / "config.yaml")) == text
    except Exception:  # not a valid run config: a person's file
        return False


# What a run folder holds before the loop's first checkpoint: such a folder is a run that stopped
# before training (bad data, a refused option) and is started again without --force.
NEVER_TRAINED = frozenset({"config.yaml", "data_report.json", "sft_template.json"})


def prepare_run_dir(cfg: RunConfig, resume: bool, force: bool) -> Path:
    """Create the run folder, refusing to overwrite a finished or unfinished run by accident (a
    folder holding only what a run writes before training, NEVER_TRAINED, is started again).
    On resume, first delete the temporary folders a killed write left (of checkpoint or model
    size: `.tmp-step-*`, `.tmp-best-*`, `.trash-model-*`, ...) in the run folder and checkpoints/,
    one log line each; see `tunelab.data.io_atomic.remove_stale_temporaries`."""
    from tunelab.data.io_atomic import remove_stale_temporaries
    from tunelab.data.outputs import is_run_folder

    run_dir = Path(cfg.output_dir)
    config_text = to_yaml(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise TunelabError(f"output_dir {run_dir} is an existing file; expected a folder for the run")
    inputs = [p for p in (cfg.data.train, cfg.data.validation, cfg.data.test, cfg.model.name) if p and not str(p).startswith("asset:")]
    for given in inputs:
        if Path(given).exists() and Path(given).resolve().is_relative_to(run_dir.resolve()):
            raise TunelabError(f"output_dir {run_dir} holds the input {given}: a run folder is replaced on --force, so keep inputs outside it")
    if run_dir.exists() and not resume and {p.name for p in run_dir.iterdir()} <= NEVER_TRAINED and _written_by_a_run(run_dir):
        shutil.rmtree(run_dir)  # a run that stopped before its first step (bad data, a refused option): start it again
    if run_dir.exists() and any(run_dir.iterdir()):
        if force and not resume and not (is_run_folder(run_dir) or _config_of_this_run(run_dir)):
            raise TunelabError(f"output_dir {run_dir} is not empty and not a run folder; --force replaces only a run tunelab wrote, so choose another output_dir")
        if force and not resume and any(is_run_folder(child) for child in run_dir.iterdir() if child.is_dir()):
            raise TunelabError(f"output_dir {run_dir} holds other run folders; --force would delete them, so choose a folder of its own")
        stored = run_dir / "config.yaml"
        if resume:
            if stored.is_file() and stored.read_text(encoding="utf-8") != config_text:
                raise TunelabError(f"{stored} differs from the config given now; resume needs the same config (or use --force to start over)")
            for folder in (run_dir, run_dir / "checkpoints"):
                remove_stale_temporaries(folder)
        elif force:
            shutil.rmtree(run_dir)
        elif (run_dir / "summary.json").is_file():
            raise TunelabError(f"{run_dir} already holds a finished run; choose another output_dir or pass --force to replace it")
        else:
            raise TunelabError(f"{run_dir} holds an unfinished run; pass --resume to continue it or --force to start over")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", config_text)
    return run_dir


def run_facts(cfg, result, n_train_tokens: int, started: float, device, precision: str) -> dict:
    """The summary fields every task shares: steps, times, throughput, memory and where it ran.
    Tokens per second counts the real (non-pad) tokens of the epochs actually trained, over the
    time of the training steps (`step_seconds`: validation passes and checkpoint writes, which
    `train_seconds` includes, are left out, so the figure is the training speed)."""
    epochs_done = result.steps / result.plan.steps_per_epoch
    return {
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "best_step": (result.best or {}).get("step"),
        "train_seconds": round(result.train_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "step_seconds": round(result.step_seconds, 2),
        # the first step holds one-time costs (torch.compile, cuDNN/cuBLAS selection): the rest is the steady speed
        "first_step_seconds": round(result.first_step_seconds, 2) if result.first_step_seconds is not None else None,
        "train_tokens_per_second": round(n_train_tokens * epochs_done / max(result.step_seconds, 1e-9), 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": str(device),
        "precision": precision,
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "processes": dist.world_size(),
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


def start_run(cfg, resume: bool, force: bool):
    """The first stage of every recipe: CPU threads, the accelerator (which joins the process
    group when a launcher started several processes), the run folder (made by rank 0; the others
    wait for it, and stop if it was refused). Returns (run_dir, accelerator, precision, started)
    with `started` a perf_counter time."""
    started = time.perf_counter()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    dist.check_launch()
    accelerator, precision = make_accelerator(cfg.train)
    dist.check_devices(accelerator.device)
    run_dir = dist.on_main(prepare_run_dir, cfg, resume, force)
    return run_dir, accelerator, precision, started


def group_by_length(cfg, device, log=print) -> bool:
    """data.group_by_length with `auto` resolved: on for a CPU (padding costs time there), off on
    a GPU (where the random order matters more than the padding)."""
    if cfg.data.group_by_length != "auto":
        return cfg.data.group_by_length
    log(f"data.group_by_length auto -> {device.type == 'cpu'} ({device.type})")
    return device.type == "cpu"


MODEL_META = "tunelab.json"  # in every model folder tunelab writes: the task and how to use the weights


def model_dir_of(run: str | Path) -> Path:
    """The one run-folder resolver: RUN/model, or RUN itself when it holds tunelab.json (a model
    or exported folder), for every task."""
    run = Path(run)
    for candidate in (run / "model", run):
        if (candidate / MODEL_META).is_file():
            return candidate
    if not run.exists():
        raise TunelabError(f"run folder not found: {run}")
    raise TunelabError(f"{run}: no trained model here (expected {run}/model/{MODEL_META}); did the run finish?")


def read_model_meta(folder: str | Path) -> dict:
    """The tunelab.json of a model folder, or a TunelabError naming it when it is missing, empty
    or not a JSON object (a copy cut short, a hand edit)."""
    import json

    path = Path(folder) / MODEL_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunelabError(f"{folder}: not a tunelab model folder (no {MODEL_META})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TunelabError(f"{path}: damaged ({err}); export or train the model again") from None
    if not isinstance(meta, dict):
        raise TunelabError(f"{path}: damaged (expected a JSON object); export or train the model again")
    return meta
