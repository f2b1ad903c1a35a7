"""Resumable checkpoints: written atomically, stored without pickle.

No pickle, because a run folder is data, not code. `tunelab train --resume` may be pointed at a
folder copied from someone else, and unpickling a file (what `torch.load` does unless told
`weights_only`) runs whatever code the file names. So a checkpoint holds only safetensors (a JSON
header and raw tensor bytes) and JSON, and loading it never unpickles anything: a `*.pt` file
found there is never opened. Checkpoints in the format before this one (`optim.pt`, a pickle) are
refused with advice, never loaded.

    checkpoints/
        latest                     one line, the name of the newest step folder (replaced atomically)
        step-0000120/              resumable state after optimizer step 120
            trainable.safetensors  the trainable weights, by parameter name
            optimizer.safetensors  the optimizer's tensors, flattened: "state.<param index>.<key>"
                                   (state.3.exp_avg, state.3.step, ...), and any tensor found in the
                                   param groups ("param_groups.0.lr") or the scheduler ("scheduler.x")
            rng.safetensors        torch's CPU generator state ("torch", uint8) and each GPU's ("cuda.<i>");
                                   with several processes also rank r's own ("rank<r>.torch", "rank<r>.cuda")
            resume.json            {"format": FORMAT, "optimizer": its state_dict without the tensors
                                   (param_groups, non-tensor per-parameter values), "scheduler": its
                                   state_dict, "rng": {"python": ..., "numpy": ...}}
            state.json             the loop's counters (step, best so far, ...), returned on load
        best/                      the best weights so far: trainable.safetensors, info.json

In resume.json a value JSON cannot hold as it is becomes a one-key object: {"$tensor": KEY} (the
tensor stored in optimizer.safetensors under KEY), {"$tuple": [...]} or {"$int_keys": {...}} (a
dict keyed by integers, like the optimizer's state). Floats survive JSON exactly (shortest repr),
so a resumed run continues bit for bit.

Atomic: every folder is first written under a temporary name (`.tmp-step-0000120-PID`), fsynced
and renamed into place (`tunelab.data.io_atomic.staged_dir`); `latest` is replaced atomically
after that, and older step folders are renamed away before they are deleted. A kill -9 at any
moment leaves the previous checkpoint whole and no partial `step-*` folder; the temporary folders
it leaves are removed at the next start (`remove_stale_temporaries`, from `prepare_run_dir` and
`latest_checkpoint`). `latest_checkpoint` only returns a folder that holds every file above.

Several processes (`tunelab.train.distributed`): every process calls `save_checkpoint` and
`save_best` (a sharded FSDP parameter or optimizer state is gathered whole, a collective step),
and rank 0 alone writes. What is written is the whole state, as one process would write it, so a
checkpoint resumes on any number of processes and under either `train.distributed` mode; on
load each process takes its own shard (`distributed.shard_like`) and its own generator state
(that of rank 0 when the checkpoint has none for it, as after a run on fewer processes).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunelab.data.io_atomic import remove_dir, remove_stale_temporaries, staged_dir, write_text_atomic
from tunelab.errors import TunelabError
from tunelab.train import distributed as dist

FORMAT = 2  # resume.json's "format"; format 1 was optim.pt (pickle)
FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "resume.json", "state.json")
OLD_FORMAT_FILE = "optim.pt"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")
_TENSOR, _TUPLE, _INT_KEYS = "$tensor", "$tuple", "$int_keys"

def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that training changes (frozen weights come back from the base model), whole
    (sharded ones gathered: every process calls this)."""
    return {name: dist.full_tensor(p.detach()).to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise TunelabError(f"checkpoint does not match the model (missing {missing[:3]}, unexpected {unknown[:3]}); was the config changed since it was written?")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(dist.shard_like(t.to(params[name].device, params[name].dtype), params[name]))


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
        states = list(state["cuda"])[: torch.cuda.device_count()]
        for i, s in enumerate(states):
            torch.cuda.set_rng_state(s, i)
    if "cuda_own" in state and torch.cuda.is_available():  # this process's GPU, written by its own rank
        torch.cuda.set_rng_state(state["cuda_own"])


# --- the no-pickle encoding -------------------------------------------------------------------


class _Damaged(Exception):
    """A checkpoint file whose content is not what this module writes (message: what is wrong)."""


def _join(prefix: str, key) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _encode(value, key: str, tensors: dict[str, torch.Tensor]):
    """`value` as JSON, its tensors moved to `tensors` under their path (e.g. "state.3.exp_avg")."""
    if isinstance(value, torch.Tensor):
        if key in tensors:
            raise TypeError(f"two checkpoint values share the name {key!r}")
        tensors[key] = dist.full_tensor(value.detach()).to("cpu").contiguous()
        return {_TENSOR: key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, _join(key, i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, _join(key, i), tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if value and all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            return {_INT_KEYS: {str(k): _encode(v, _join(key, k), tensors) for k, v in value.items()}}
        if all(isinstance(k, str) for k in value) and not (len(value) == 1 and next(iter(value)) in (_TENSOR, _TUPLE, _INT_KEYS)):
            return {k: _encode(v, _join(key, k), tensors) for k, v in value.items()}
    raise TypeError(f"cannot store {type(value).__name__} at {key or 'the top'} of an optimizer or scheduler state without pickle")


def _decode(value, tensors: dict[str, torch.Tensor], used: set[str]):
    if isinstance(value, list):
        return [_decode(v, tensors, used) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == _TENSOR:
            if not isinstance(inner, str) or inner not in tensors:
                raise _Damaged(f"names a tensor {inner!r} that optimizer.safetensors does not hold")
            used.add(inner)
            return tensors[inner]
        if tag == _TUPLE:
            if not isinstance(inner, list):
                raise _Damaged(f"{_TUPLE} holds {type(inner).__name__}, expected a list")
            return tuple(_decode(v, tensors, used) for v in inner)
        if tag == _INT_KEYS:
            if not isinstance(inner, dict) or not all(re.fullmatch(r"-?\d+", k) for k in inner):
                raise _Damaged(f"{_INT_KEYS} holds something other than an object with integer keys")
            return {int(k): _decode(v, tensors, used) for k, v in inner.items()}
    return {k: _decode(v, tensors, used) for k, v in value.items()}


def _rng_encode() -> tuple[dict, dict[str, torch.Tensor]]:
    state = rng_state()
    version, internal, gauss_next = state["python"]
    name, key, pos, has_gauss, cached = state["numpy"]
    as_json = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {"bit_generator": str(name), "key": [int(k) for k in key], "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    tensors = {"torch": state["torch"].contiguous()}
    for i, s in enumerate(state.get("cuda", [])):
        tensors[f"cuda.{i}"] = s.to("cpu").contiguous()
    if dist.world_size() > 1:  # each process's own streams (dropout masks differ between processes)
        own = {"torch": state["torch"]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            own["cuda"] = torch.cuda.get_rng_state()
        for key, t in own.items():
            for r, part in enumerate(dist.gather_tensor(t)):
                if r:
                    tensors[f"rank{r}.{key}"] = part.to("cpu").contiguous()
    return as_json, tensors


def _rng_decode(as_json, tensors: dict[str, torch.Tensor]) -> dict:
    try:
        py, npy = as_json["python"], as_json["numpy"]
        state = {
            "python": (int(py["version"]), tuple(int(x) for x in py["internal"]), py["gauss_next"]),
            "numpy": (str(npy["bit_generator"]), np.asarray(npy["key"], dtype=np.uint32), int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"])),
            "torch": tensors["torch"],
        }
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise _Damaged(f"RNG state incomplete or malformed ({type(err).__name__}: {err})") from None
    cuda = sorted((int(k.split(".", 1)[1]), t) for k, t in tensors.items() if re.fullmatch(r"cuda\.\d+", k))
    if cuda:
        state["cuda"] = [t for _, t in cuda]
    rank = dist.rank()
    if f"rank{rank}.torch" in tensors:
        state["torch"] = tensors[f"rank{rank}.torch"]
    if f"rank{rank}.cuda" in tensors:
        state["cuda_own"] = tensors[f"rank{rank}.cuda"]
    if any(t.dtype != torch.uint8 for t in [state["torch"], *state.get("cuda", []), *([state["cuda_own"]] if "cuda_own" in state else [])]):
        raise _Damaged("an RNG state tensor is not uint8")
    return state


# --- reading, with errors that name the file --------------------------------------------------


def _advice(folder: Path) -> str:
    return (f"delete {folder} to resume from an earlier checkpoint if one is left (or from step 0), "
            "or start the run over with --force instead of --resume")


_BEST_ADVICE = "the best weights are lost: start the run over with --force"


def _read_json(path: Path, advice: str | None = None) -> dict:
    advice = advice or _advice(path.parent)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunelabError(f"{path}: missing from the checkpoint; {advice}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TunelabError(f"{path}: damaged or truncated checkpoint file ({err}); {advice}") from None
    if not isinstance(obj, dict):
        raise TunelabError(f"{path}: damaged checkpoint file (expected a JSON object, found {type(obj).__name__}); {advice}")
    return obj


def _read_tensors(path: Path, advice: str | None = None) -> dict[str, torch.Tensor]:
    advice = advice or _advice(path.parent)
    if not path.is_file():
        raise TunelabError(f"{path}: missing from the checkpoint; {advice}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError, ValueError)
        raise TunelabError(f"{path}: damaged or truncated checkpoint file ({err}); {advice}") from None


def _refuse_old_format(folder: Path) -> None:
    if (folder / OLD_FORMAT_FILE).exists() and not (folder / "resume.json").exists():
        raise TunelabError(
            f"{folder}: a checkpoint in tunelab's old format ({OLD_FORMAT_FILE}, a pickle file), which is not loaded: "
            "unpickling can run arbitrary code, and a run folder may come from anyone (the file was not opened). "
            f"Start the run over without --resume (pass --force to replace the folder), or delete {folder.parent} "
            "and pass --resume to train again from step 0 in this folder.")


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


# --- the API the loop uses --------------------------------------------------------------------


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, counters: dict, keep: int = 1) -> Path:
    """Write a resumable checkpoint for `step` and point `latest` at it; prune older ones.
    With several processes every one calls this and rank 0 writes (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    optimizer_json = _encode(optimizer.state_dict(), "", tensors)
    scheduler_json = _encode(scheduler.state_dict(), "scheduler", tensors)
    rng_json, rng_tensors = _rng_encode()
    resume = {"format": FORMAT, "optimizer": optimizer_json, "scheduler": scheduler_json, "rng": rng_json}
    weights = trainable_state(model)
    return dist.on_main(_write_checkpoint, root, f"step-{step:07d}", weights, tensors, rng_tensors, resume, counters, keep)


def _write_checkpoint(root: Path, name: str, weights, tensors, rng_tensors, resume: dict, counters: dict, keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with staged_dir(root / name, durable=True) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / "resume.json").write_text(json.dumps(resume, indent=1), encoding="utf-8")
        (tmp / "state.json").write_text(json.dumps(counters, indent=1), encoding="utf-8")
    write_text_atomic(root / "latest", name + "\n")
    old = sorted((p for p in _step_dirs(root) if p.name != name), key=_step_of)
    for p in old[: max(0, len(old) - (keep - 1))]:
        remove_dir(p)
    return root / name


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def _step_dirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()]


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint to resume from: the step folder `latest` names, or else the newest one,
    among those holding every file of the format; None when there is none. Removes the temporary
    folders interrupted writes left in `root` first. An old-format (pickle) checkpoint is refused
    with a TunelabError, never loaded."""
    if not root.is_dir():
        return None
    remove_stale_temporaries(root)
    folders = sorted(_step_dirs(root), key=_step_of, reverse=True)
    try:
        named = root / (root / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        named = None
    if named in folders:
        folders.remove(named)
        folders.insert(0, named)
    for folder in folders:
        _refuse_old_format(folder)
        if _is_complete(folder):
            return folder
        missing = [name for name in FILES if not (folder / name).is_file()]
        print(f"ignored the incomplete checkpoint {folder} (no {', '.join(missing)})")
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG states; return the loop counters.
    Every file is read and checked before anything is changed; no file is ever unpickled."""
    path = Path(path)
    _refuse_old_format(path)
    counters = _read_json(path / "state.json")
    if not isinstance(counters.get("step"), int):
        raise TunelabError(f"{path / 'state.json'}: damaged checkpoint file (no integer \"step\"); {_advice(path)}")
    resume = _read_json(path / "resume.json")
    if resume.get("format") != FORMAT:
        raise TunelabError(f"{path / 'resume.json'}: checkpoint format {resume.get('format')!r}, this tunelab reads format {FORMAT}; {_advice(path)}")
    weights = _read_tensors(path / "trainable.safetensors")
    tensors = _read_tensors(path / "optimizer.safetensors")
    rng_tensors = _read_tensors(path / "rng.safetensors")
    where = path / "resume.json"
    try:
        used: set[str] = set()
        if not isinstance(resume.get("optimizer"), dict) or not isinstance(resume.get("scheduler"), dict):
            raise _Damaged("no \"optimizer\" or \"scheduler\" object")
        optimizer_state = _decode(resume["optimizer"], tensors, used)
        scheduler_state = _decode(resume["scheduler"], tensors, used)
        if set(tensors) - used:
            where = path / "optimizer.safetensors"
            raise _Damaged(f"tensors that resume.json does not name: {sorted(set(tensors) - used)[:3]}")
        if not isinstance(optimizer_state.get("state"), dict) or not isinstance(optimizer_state.get("param_groups"), list):
            raise _Damaged("the optimizer state has no \"state\" or \"param_groups\"")
        if "torch" not in rng_tensors:
            where = path / "rng.safetensors"
            raise _Damaged("no \"torch\" generator state")
        rng = _rng_decode(resume.get("rng"), rng_tensors)
    except _Damaged as err:
        raise TunelabError(f"{where}: damaged checkpoint file ({err}); {_advice(path)}") from None
    load_trainable_state(model, weights)
    try:
        optimizer.load_state_dict(_sharded_like(optimizer_state, optimizer))
        scheduler.load_state_dict(scheduler_state)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise TunelabError(f"{path}: the optimizer or scheduler state does not fit this run ({err}); was the config changed since it was written?") from None
    try:
        set_rng_state(rng)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TunelabError(f"{path / 'resume.json'}: damaged RNG state ({err}); {_advice(path)}") from None
    return counters


def _sharded_like(optimizer_state: dict, optimizer) -> dict:
    """The whole optimizer state read from a checkpoint, each per-parameter tensor laid out as its
    parameter (this process's shard under FSDP; unchanged otherwise)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in optimizer_state["state"].items():
        if isinstance(index, int) and 0 <= index < len(params):
            p = params[index]
            for key, v in values.items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    values[key] = dist.shard_like(v, p)
    return optimizer_state


def save_best(root: Path, model, info: dict) -> None:
    """The best weights so far (every process calls this; rank 0 writes)."""
    dist.on_main(_write_best, root, trainable_state(model), info)


def _write_best(root: Path, weights, info: dict) -> None:
    with staged_dir(root / "best", durable=True) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        (tmp / "info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")


def load_best(root: Path, model) -> dict | None:
    best = root / "best"
    if not (best / "info.json").is_file():
        return None
    info = _read_json(best / "info.json", _BEST_ADVICE)
    load_trainable_state(model, _read_tensors(best / "trainable.safetensors", _BEST_ADVICE))
    return info
