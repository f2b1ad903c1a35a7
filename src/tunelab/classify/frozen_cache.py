"""The frozen-prefix cache: compute the frozen lower blocks once per text, then train and score
only the top.

With `trainable: head` or `last_blocks: N` the trainable part starts at block k
(`TextClassifier.frozen_blocks`): the embeddings and blocks[:k] never change, and when none of them
is stochastic (no active dropout) they give each text the same hidden states at every pass. So one
pass stores, per distinct token sequence, the hidden states entering block k (length, H), unpadded,
in memory or, past `memory_budget()`, in a memory-mapped file under the run folder. Every later
batch (training epochs, validation, the final train/validation/test scoring) gets them re-padded
to its own width as `frozen_states` (B, T, H), zeros at padded positions, and the classifier runs
`model(input_ids, attention_mask, frozen_states=...)`: the backbone's own forward, with blocks[:k]
returning the cached states instead of computing them (`skip_frozen`). The embeddings, attention
masks, positions (rotary tables included) and pooling positions are still made by that forward
from the batch's ids and mask, exactly as without the cache, so no family-specific mask or rotary
code is repeated here; padded positions cannot change a real token's result since attention masks
them out and everything else is per token. Same metrics as the uncached run up to float
summation order (a cached state was computed in another batch shape).

    tunelab train configs/spam-smollm2.yaml                      # on where it applies (logged)
    tunelab train configs/spam-smollm2.yaml train.cache_frozen=false

Not used, with the reason logged in one line: LoRA or `all` (nothing frozen), active dropout in
the frozen part, packed rows, several processes, compiled blocks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tunelab.model.backbone import final_norm, transformer_blocks

CACHE_FILE = "frozen_states.bin"  # under the run folder, only while a run that spilled is going on
MEMORY_SHARE = 0.25  # the cache stays in RAM while it takes at most this share of physical memory

# Whether a block class returns a tuple (MPNet: (hidden, attentions...)) or the hidden tensor
# (Llama, GPT-2, BERT, ... in transformers 5): seen on the real blocks when the cache is built, so
# that a skipped block answers in the form its caller unpacks.
_TUPLE_OUTPUT: dict[type, bool] = {}


def memory_budget() -> int:
    """Bytes the cache may take in RAM before it spills to a memory-mapped file."""
    return int(MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def active_dropout(backbone: nn.Module, k: int) -> list[str]:
    """Names of the dropouts that are active in training below block k: nn.Dropout modules with
    p > 0 and float `*dropout*` attributes > 0 (attention dropout passed to SDPA or eager
    attention as a number: Llama/Qwen2/Gemma3 `attention_dropout`, BERT `dropout_prob`), in the
    embeddings and every other part of the backbone outside blocks[k:] and the final norm.

    >>> from torch import nn
    >>> m = nn.Module(); m.layers = nn.ModuleList([nn.Sequential(nn.Dropout(0.1)), nn.Sequential(nn.Dropout(0.2))])
    >>> active_dropout(m, 1), active_dropout(m, 2)
    (['layers.0.0 (p=0.1)'], ['layers.0.0 (p=0.1)', 'layers.1.0 (p=0.2)'])
    """
    top = {id(m) for block in list(transformer_blocks(backbone))[k:] for m in block.modules()}
    norm = final_norm(backbone)
    top |= {id(m) for m in norm.modules()} if norm is not None else set()
    found = []
    for name, module in backbone.named_modules():
        if id(module) in top:
            continue
        if isinstance(module, nn.Dropout) and module.p > 0:
            found.append(f"{name} (p={module.p:g})")
        for attr, value in vars(module).items():
            if "dropout" in attr and isinstance(value, float) and value > 0:
                found.append(f"{name}.{attr} (={value:g})")
    return found


def why_not(model, enabled: bool, policy: str, packed: bool, processes: int) -> str | None:
    """Why the cache does not apply to this run, in a few words, or None when it does."""
    k = model.frozen_blocks
    if not enabled:
        return "train.cache_frozen is false"
    if k == 0:
        return f"trainable {policy}: every block trains, none is frozen"
    if packed:
        return "data.packing is on: the cache feeds padded batches"
    if processes > 1:
        return f"{processes} processes: the cache is built for one"
    blocks = list(transformer_blocks(model.backbone))
    if any(getattr(b, "_compiled_call_impl", None) is not None for b in blocks):
        return "the transformer blocks are compiled"
    top = {id(p) for b in blocks[k:] for p in b.parameters()}
    norm = final_norm(model.backbone)
    top |= {id(p) for p in norm.parameters()} if norm is not None else set()
    trained = [n for n, p in model.backbone.named_parameters() if p.requires_grad and id(p) not in top]
    if trained:
        return f"parameters below block {k} train ({trained[0]}, ...)"
    dropout = active_dropout(model.backbone, k)
    if dropout:
        more = f" and {len(dropout) - 3} more" if len(dropout) > 3 else ""
        return f"dropout is active in the frozen blocks ({', '.join(dropout[:3])}{more}): their states differ at every pass"
    return None


@contextlib.contextmanager
def skip_frozen(backbone: nn.Module, k: int, states: torch.Tensor):
    """Within the block, the backbone's blocks[:k] do not compute: each returns `states` (B, T, H),
    the cached hidden states entering block k, so block k (or the final norm) receives them while
    the backbone's forward still makes the masks and positions from its inputs."""
    blocks = list(transformer_blocks(backbone))[:k]
    as_tuple = _TUPLE_OUTPUT.get(type(blocks[-1]))
    assert as_tuple is not None, "frozen_states fed to a model whose cache was not built (build_cache)"
    out = (states,) if as_tuple else states

    def skipped(*args, **kwargs):
        return out

    for block in blocks:
        block.forward = skipped  # an instance attribute: parameters, hooks and names stay as they are
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


class _Captured(Exception):
    """Raised by the hook on block k-1 once its output is kept: the top is not needed then."""


class FrozenCache:
    """Hidden states at the input of block `k`, one unpadded (length, H) slice per distinct token
    sequence, in one (total tokens, H) tensor in RAM or memory-mapped from `path`."""

    def __init__(self, k: int, index: dict[tuple, tuple[int, int]], store: torch.Tensor, path: Path | None):
        self.k, self.index, self.store, self.path = k, index, store, path

    @property
    def nbytes(self) -> int:
        return self.store.numel() * self.store.element_size()

    def states(self, seqs: list[list[int]], width: int) -> torch.Tensor:
        """(B, width, H) for right-padded `seqs`: each row's cached states, zeros after its end."""
        out = torch.zeros(len(seqs), width, self.store.shape[1], dtype=self.store.dtype)  # (B, T, H)
        for row, ids in enumerate(seqs):
            start, length = self.index[tuple(ids)]
            out[row, :length] = self.store[start : start + length]
        return out

    def collator(self, base: Callable[[list], dict]) -> FrozenCollator:
        return FrozenCollator(base, self)

    def close(self) -> dict:
        """Drop the states (a spilled cache's file is deleted: it is no part of the finished run);
        return what the cache was, for summary.json."""
        facts = {"from_block": self.k, "texts": len(self.index), "mb": round(self.nbytes / 2**20, 1), "memory_mapped": self.path is not None}
        self.store = torch.zeros(0, 0)
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        return facts


class FrozenCollator:
    """`base`'s padded batch of (ids, label) items plus `frozen_states` (B, T, H) from the cache."""

    def __init__(self, base: Callable[[list], dict], cache: FrozenCache):
        self.base, self.cache = base, cache

    def __call__(self, items: list) -> dict:
        batch = self.base(items)
        batch["frozen_states"] = self.cache.states([ids for ids, *_ in items], batch["input_ids"].shape[1])
        return batch


def frozen_cache(model, sequences: list[list[int]], enabled: bool, policy: str, packed: bool, processes: int, pad_id: int,
                 batch_size: int, device, autocast, run_dir: Path, log=print) -> FrozenCache | None:
    """The run's cache of `sequences` (every split's token ids) when it applies, else None with
    the reason logged in one line."""
    reason = why_not(model, enabled, policy, packed, processes)
    if reason is not None:
        log(f"frozen-prefix cache: not used ({reason})")
        return None
    return build_cache(model, sequences, pad_id, batch_size, device, autocast, run_dir, log=log)


def build_cache(model, sequences: list[list[int]], pad_id: int, batch_size: int, device, autocast, run_dir: Path,
                budget: int | None = None, log=print) -> FrozenCache:
    """One pass of the frozen prefix over every distinct sequence (no gradients, batches sorted by
    length, under the run's `autocast` so states match what training computes), keeping each
    sequence's states at the input of block `model.frozen_blocks`. In RAM up to `budget` bytes
    (default `memory_budget()`), else in `run_dir/frozen_states.bin`, memory-mapped."""
    from tunelab.progress import progress_bar
    from tunelab.train.batch import pad

    k = model.frozen_blocks
    blocks = transformer_blocks(model.backbone)
    unique = list(dict.fromkeys(tuple(ids) for ids in sequences))
    unique.sort(key=len)
    index, offset = {}, 0
    for ids in unique:
        index[ids] = (offset, len(ids))
        offset += len(ids)
    budget = memory_budget() if budget is None else budget
    store, path = None, None

    kept: list[torch.Tensor] = []

    def keep(module, args, output):
        _TUPLE_OUTPUT[type(module)] = isinstance(output, tuple)
        kept.append((output[0] if isinstance(output, tuple) else output).detach())
        raise _Captured

    model.to(device)
    was_training = model.training
    model.eval()  # the frozen part has no active dropout, so eval and train give the same states
    hook = blocks[k - 1].register_forward_hook(keep)
    bar = progress_bar(total=-(-len(unique) // batch_size), desc="frozen cache", unit="batch")
    try:
        with torch.no_grad(), autocast():
            for start in range(0, len(unique), batch_size):
                part = unique[start : start + batch_size]
                input_ids, mask = pad([list(ids) for ids in part], pad_id)
                with contextlib.suppress(_Captured):
                    model(input_ids.to(device), mask.to(device))
                hidden = kept.pop().to("cpu")  # (B, T, H)
                if store is None:  # the dtype the residual stream has under the run's autocast
                    store, path = _allocate(offset, hidden.shape[-1], hidden.dtype, budget, run_dir)
                for row, ids in enumerate(part):
                    first, length = index[ids]
                    store[first : first + length] = hidden[row, :length]
                bar.update(1)
    finally:
        bar.close()
        hook.remove()
        model.train(was_training)
    assert store is not None, "no sequences to cache"
    nbytes = store.numel() * store.element_size()
    where = f"memory-mapped in {path} (over the RAM budget of {_mb(budget)})" if path else "in RAM"
    log(f"frozen-prefix cache: states at the input of block {k} of {len(blocks)} for {len(unique)} texts ({offset:,} tokens), "
        f"{_mb(nbytes)} {where}; later passes skip blocks 0-{k - 1}")
    return FrozenCache(k, index, store, path)


def _allocate(tokens: int, width: int, dtype: torch.dtype, budget: int, run_dir: Path) -> tuple[torch.Tensor, Path | None]:
    """An empty (tokens, width) store: in RAM when it fits `budget` bytes, else backed by
    `run_dir/frozen_states.bin` (written through a shared memory map, read back by the page cache)."""
    if tokens * width * torch.empty((), dtype=dtype).element_size() <= budget:
        return torch.empty(tokens, width, dtype=dtype), None
    path = Path(run_dir) / CACHE_FILE
    path.unlink(missing_ok=True)  # a killed run's file; the states are computed again
    return torch.from_file(str(path), shared=True, size=tokens * width, dtype=dtype).view(tokens, width), path


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"
