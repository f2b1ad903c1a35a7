"""One table from a config's `task` to its recipe, used by `train`, the sweep worker, `cv` and `estimate`.

    summary = recipe(cfg.task)(cfg, resume=False, force=False, log=print)
    rows = cv_rows(cfg)          # the pooled rows `cv` deals into folds, in the task's own form
    model, costs = meta_model(cfg, folder)   # shapes only, on the meta device (tunelab estimate)

Entries are "module:function" strings, imported on use: the base packages (`sweep`, `train`, `estimate`)
reach a task only through this table, never by importing `classify` or `sft` themselves, and
`tunelab --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Task:
    recipe: str   # (cfg, resume, force, log) -> summary dict; writes the run folder
    cv_rows: str  # cfg -> sweep.cv.CvRows: every usable row of data.train, as a run reads it
    cv_metric: str  # the test score `cv` reports mean ± std of (a key of summary["test"])
    meta_model: str  # (cfg, model folder) -> (model on the meta device, its costs): `tunelab estimate`


TASKS = {
    "classification": Task("tunelab.classify.run:train_classifier", "tunelab.classify.data:cv_rows", "accuracy", "tunelab.classify.run:meta_classifier"),
    "sft": Task("tunelab.sft.run:train_sft", "tunelab.sft.data:cv_rows", "loss", "tunelab.sft.run:meta_sft_model"),
}


def _load(ref: str):
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


def task_of(name: str) -> Task:
    """The table entry of `name` (the config has already checked it is one of TASKS)."""
    return TASKS[name]


def recipe(name: str):
    """The training function of task `name`."""
    return _load(TASKS[name].recipe)


def meta_model(cfg, folder):
    """The model of `cfg` on the meta device with its trainable policy, and the recipe's costs
    (keyword arguments of `tunelab.estimate.estimate_memory`)."""
    return _load(TASKS[cfg.task].meta_model)(cfg, folder)


def cv_rows(cfg):
    """The pooled rows of `cfg.data.train` that cross-validation deals into folds."""
    return _load(TASKS[cfg.task].cv_rows)(cfg)
