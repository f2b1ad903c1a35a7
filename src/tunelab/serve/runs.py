"""The runs one server holds: RUN folders loaded once, each named and given its batcher.

    served = load_runs(["runs/spam", "runs/docqa-ko"], device="cpu", dtype="fp32")
    served["spam"].task                     # "classification" (or "sft")

A run is named after its folder (`runs/spam` -> "spam", also when given as runs/spam/model);
that name is the `model` field of a request. The backends come from the task packages
through `loaders` (task -> load(run, device)), so this base package never imports a task: a
classification run is `tunelab predict`'s Classifier (`.predict(texts, batch_size)`), an SFT run
a `tunelab.sft.stream.Generator` (`.prepare`, `.decode`, built on `tunelab generate`'s code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.serve.batching import Batcher, Job, answer_now
from tunelab.serve.limits import Limits
from tunelab.train.runtime import model_dir_of, read_model_meta

DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class Served:
    name: str
    task: str  # "classification" | "sft"
    folder: Path  # the model folder
    model: object  # classify.predict.Classifier | sft.export.SftModel
    created: int  # the model folder's time, for /v1/models


def run_name(run: str | Path, folder: Path) -> str:
    """A run's name: its folder's, also when given as its model/ folder.

    >>> run_name("runs/spam/model", Path("runs/spam/model"))
    'spam'
    """
    path = Path(run).resolve()
    return path.parent.name if Path(folder).resolve() == path and path.name == "model" else path.name


def _torch_dtype(dtype: str, device: str | None):
    import torch

    if dtype not in DTYPES:
        raise TunelabError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    on = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "fp16" and not on.startswith("cuda"):
        raise TunelabError("--dtype fp16 needs a GPU; use fp32 or bf16 on a CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def load_run(run: str | Path, loaders: dict, device: str | None = None, dtype: str = "fp32") -> Served:
    """One RUN folder (or its model/ folder, or an exported one); a TunelabError names a bad one."""
    torch_dtype = _torch_dtype(dtype, device)
    folder = model_dir_of(run)
    task = read_model_meta(folder).get("task", "classification")
    if task not in loaders:
        raise TunelabError(f"{folder}: a '{task}' model; tunelab serve serves {' and '.join(loaders)} runs")
    backend = loaders[task](run, device)
    backend.model.to(torch_dtype)  # classification logits are still taken in fp32 (predict_logits)
    return Served(run_name(run, folder), task, folder, backend, int(folder.stat().st_mtime))


def load_runs(runs: list[str], loaders: dict, device: str | None = None, dtype: str = "fp32", log=print) -> dict[str, Served]:
    """`loaders`: task -> load(run, device), e.g. {"classification": load_classifier, "sft": load_generator}."""
    served: dict[str, Served] = {}
    for run in runs:
        one = load_run(run, loaders, device, dtype)
        if one.name in served:
            raise TunelabError(f"{run}: two runs are named '{one.name}' ({served[one.name].folder} and {one.folder}); "
                               "rename or copy one folder, the name is the request's `model`")
        served[one.name] = one
        log(f"loaded {run} as model '{one.name}' ({one.task})")
    return served


def batcher_for(run: Served, limits: Limits, on_batch=None) -> Batcher:
    """Concurrent requests batched together, up to `max_batch_size` after at most `max_wait_ms`:
    classification their texts, SFT their decoding (`tunelab.sft.batch_decode`)."""
    if run.task == "classification":
        clf = run.model

        def classify(jobs: list[Job]) -> list[list[dict]]:
            predictions = clf.predict([t for j in jobs for t in j.payload], limits.max_batch_size)
            starts = [sum(j.size for j in jobs[:i]) for i in range(len(jobs))]
            return [predictions[s:s + j.size] for s, j in zip(starts, jobs)]

        return Batcher(run.name, classify, max_batch_size=limits.max_batch_size, max_wait_s=limits.max_wait_ms / 1000,
                       max_queue=limits.max_queue, on_batch=on_batch)
    def generate(jobs: list[Job]) -> list:
        return run.model.decode_many([(j.payload, j.emit, j.cancelled) for j in jobs], on_done=lambda i, done: answer_now(jobs[i], done))

    return Batcher(run.name, generate, max_batch_size=limits.max_batch_size, max_wait_s=limits.max_wait_ms / 1000,
                   max_queue=limits.max_queue, on_batch=on_batch)
