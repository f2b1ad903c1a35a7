"""Resumable checkpoints, written atomically.

A checkpoint is a folder `checkpoints/step-NNNNNNN/` holding the trainable weights (safetensors),
the optimizer and scheduler states, every RNG state and the loop's counters (`state.json`). It is
first written under a temporary name and renamed when complete, and `checkpoints/latest` (a one
line file, itself replaced atomically) points at it: a kill -9 at any moment leaves either the
previous checkpoint or the new one, never a half-written one. The best weights so far live in
`checkpoints/best/` under the same rule.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunelab.data.io_atomic import staged_dir, write_text_atomic
from tunelab.errors import TunelabError


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that training changes (frozen weights come back from the base model)."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise TunelabError(f"checkpoint does not match the model (missing {missing[:3]}, unexpected {unknown[:3]}); was the config changed since it was written?")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].device, params[name].dtype))


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, counters: dict, keep: int = 1) -> Path:
    """Write a resumable checkpoint for `step` and point `latest` at it; prune older ones."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    with staged_dir(root / name, durable=True) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps(counters, indent=1))
    write_text_atomic(root / "latest", name + "\n")
    old = sorted(p for p in root.glob("step-*") if p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return root / name


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG states; return the loop counters."""
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
    blob = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "state.json").read_text())


def save_best(root: Path, model, info: dict) -> None:
    with staged_dir(root / "best", durable=True) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        (tmp / "info.json").write_text(json.dumps(info, indent=1))


def load_best(root: Path, model) -> dict | None:
    best = root / "best"
    if not (best / "info.json").is_file():
        return None
    load_trainable_state(model, load_file(str(best / "trainable.safetensors")))
    return json.loads((best / "info.json").read_text())
