"""Sweep files: the YAML schema, its checks, and the expansion into cells and runs.

    tunelab sweep configs/sweeps/seven-questions.yaml --dry-run

A sweep names a base run config, seeds, and cells. Cells come from named groups (one per question
asked), each the product  datasets x variants x grid  of dotted overrides:

    base: base/spam-smollm2.yaml          # relative to this file
    output_dir: runs/sweeps/demo          # relative to the working directory, like a run's
    seeds: [1, 2, 3]                      # applied to train.seed (see `seed_keys`)
    overrides: {train.epochs: 2}          # every cell
    datasets:                             # optional named data settings
      spam: {data.train: asset:sms-spam, data.balance: undersample}
    groups:
      trainable:
        question: Should all layers be trained?
        variants:
          head: {model.trainable: head}
          lora-r8: {model.trainable: lora, model.lora.r: 8}
      pooling:
        datasets: [spam]                  # a subset of the top-level datasets (or its own mapping)
        grid: {model.pooling: [last, first, mean]}
        exclude: [spam--pooling-last]     # globs on dataset--variant

Without `groups`, `grid`/`variants`/`question` may sit at the top level (one unnamed group).
Overrides are applied in this order: base file, top `overrides`, dataset, group `overrides`,
variant, grid values, seed, command-line overrides. Every key is checked against the run config
schema (with the line in the sweep file and the closest valid key), and every expanded run config
is validated before anything runs.

Seeds vary `train.seed` only by default: head initialisation, data order and dropout change while
the train/validation/test split stays the same, so every cell is scored on the same test set and
differences between cells are paired. Set `seed_keys: [train.seed, data.split.seed]` to draw a new
split per seed as well (the spread then includes the luck of the split).
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.config import RunConfig, explain_errors, read_yaml, validate_dict
from tunelab.errors import TunelabError

Overrides = dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GroupSpec(_Strict):
    question: Optional[str] = Field(None, description="The question this group answers (a heading in the report).")
    base: Optional[str] = Field(None, description="Base config for this group instead of the sweep's (relative to the sweep file).")
    seeds: Optional[list[int]] = Field(None, min_length=1, description="Seeds for this group instead of the sweep's.")
    overrides: Overrides = Field(default_factory=dict, description="Dotted overrides for every cell of the group.")
    datasets: Optional[Union[list[str], dict[str, Overrides]]] = Field(None, description="Names of top-level datasets, or the group's own mapping name -> overrides.")
    variants: Optional[dict[str, Overrides]] = Field(None, description="Named cells: name -> dotted overrides.")
    grid: Optional[dict[str, list[Any]]] = Field(None, description="Every combination of these values: dotted key -> list.")
    exclude: Optional[list[str]] = Field(None, description="Cells to leave out: globs on 'dataset--variant' (e.g. 'tweets--lora-r8').")


class SweepSpec(_Strict):
    base: str = Field(..., description="Base run config (relative to the sweep file).")
    output_dir: str = Field(..., description="Sweep folder: runs/, results.csv, results.md, report.html.")
    seeds: list[int] = Field([123], min_length=1, description="Seeds; each cell runs once per seed.")
    seed_keys: list[str] = Field(["train.seed"], min_length=1, description="Config keys the seed is written to.")
    keep: Literal["metrics", "model", "all"] = Field("metrics", description="What a finished run keeps: metrics only (checkpoints/ and model/ deleted), the exported model/, or everything.")
    overrides: Overrides = Field(default_factory=dict, description="Dotted overrides for every cell.")
    datasets: Optional[dict[str, Overrides]] = Field(None, description="Named data settings: name -> dotted overrides; each group runs on all of them unless it says otherwise.")
    groups: Optional[dict[str, GroupSpec]] = Field(None, description="Named groups of cells (one per question).")
    question: Optional[str] = None
    variants: Optional[dict[str, Overrides]] = None
    grid: Optional[dict[str, list[Any]]] = None


@dataclass
class Cell:
    """One point of the sweep: a base config plus overrides, run once per seed."""

    group: str
    dataset: str
    variant: str
    base: Path
    overrides: Overrides  # dotted key -> value, in the order applied (seed and CLI not included)
    seeds: list[int]
    question: Optional[str] = None
    lines: dict[str, int] = field(default_factory=dict)  # dotted key -> line in the sweep file

    @property
    def slug(self) -> str:
        return "--".join(p for p in (self.group, self.dataset, self.variant) if p)


@dataclass
class Run:
    """One (cell, seed): a resolved, validated config and the folder it runs in."""

    cell: Cell
    seed: int
    folder: Path
    config: dict  # the resolved config (every default filled in), output_dir = folder
    hash: str
    fingerprint: dict = field(default_factory=dict)  # extra inputs that define the run (e.g. fold data digest)
    alias_of: Optional[Run] = None  # the same config already runs under another cell

    @property
    def label(self) -> str:
        return f"{self.cell.slug} seed {self.seed}"

    @property
    def home(self) -> Run:
        return self.alias_of or self


# ---------------------------------------------------------------------------------------------
# Dotted keys and values


def flatten(overrides: dict, prefix: str = "") -> Overrides:
    """`{model: {lora: {r: 8}}, train.lr: 1e-4}` -> `{'model.lora.r': 8, 'train.lr': 0.0001}`.

    >>> flatten({"model": {"lora": {"r": 8}}, "train.lr": "1e-4"})
    {'model.lora.r': 8, 'train.lr': 0.0001}
    """
    out: Overrides = {}
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, full + "."))
        else:
            out[full] = _number(value)
    return out


def _number(value):
    # YAML 1.1 reads 1e-4 as a string; a sweep means the number (as config overrides do).
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def check_key(key: str) -> Optional[str]:
    """None if `key` names a run config field, else a message with the closest valid key."""
    cls: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = cls.model_fields
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.5)
            where = ".".join(parts[:i] + close)
            hint = f"; did you mean '{where}'?" if close else f"; valid keys here: {', '.join(fields)}"
            return f"unknown config key '{key}'{hint}"
        ann = fields[part].annotation
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        if i < len(parts) - 1 and not is_section:
            return f"'{'.'.join(parts[:i + 1])}' is a value, not a section, in '{key}'"
        cls = ann if is_section else None
    return None


def set_dotted(raw: dict, key: str, value) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TunelabError(f"'{key}': '{part}' is not a section in the base config")
    node[parts[-1]] = value


def slugify(text: str) -> str:
    """A folder-safe name.

    >>> slugify("lora r=8 / all")
    'lora-r-8-all'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def config_hash(config: dict, fingerprint: Optional[dict] = None) -> str:
    """Hash of a resolved config (its output_dir left out) plus any extra inputs."""
    body = {k: v for k, v in config.items() if k != "output_dir"}
    text = json.dumps({"config": body, "inputs": fingerprint or {}}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Reading the sweep file


def _key_lines(text: str) -> dict[tuple, int]:
    """Line (1-based) of every mapping key in a YAML document, by its path of keys."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (str(k.value),)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines.setdefault(path + (i,), v.start_mark.line + 1)
                walk(v, path + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def _line(lines: dict[tuple, int], path: tuple) -> Optional[int]:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def read_spec(path: str | Path) -> tuple[SweepSpec, dict]:
    """Parse and check a sweep file; returns the spec and the line of every key."""
    path = Path(path)
    raw = read_yaml(path)
    lines = _key_lines(path.read_text(encoding="utf-8"))
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        where = lambda loc: f"{path}:{_line(lines, loc) or 1}: "  # noqa: E731
        raise TunelabError("invalid sweep file:\n  " + "\n  ".join(explain_errors(err, SweepSpec, "sweep ", where))) from None
    if spec.groups and (spec.grid or spec.variants or spec.question):
        raise TunelabError(f"{path}:{_line(lines, ('groups',))}: with 'groups', put grid/variants/question inside a group")
    return spec, lines


# ---------------------------------------------------------------------------------------------
# Expansion


def _grid_names(grid: dict[str, list]) -> dict[str, str]:
    """Short names for grid keys in cell names: the last part of the key, unless two collide."""
    last = [k.split(".")[-1] for k in grid]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(grid, last)}


@dataclass
class _Checker:
    """Checks dotted keys against the run config, collecting every error with its sweep-file line."""

    path: Path
    lines: dict
    errors: list[str] = field(default_factory=list)

    def line(self, where: tuple) -> Optional[int]:
        """Line of `where` in the sweep file (or of its closest enclosing key)."""
        return _line(self.lines, where)

    def error(self, where: tuple, msg: str) -> None:
        """Record `msg` at the sweep-file line of `where`."""
        self.errors.append(f"{self.path}:{self.line(where)}: {msg}")

    def checked(self, overrides: dict, where: tuple) -> Overrides:
        """The overrides at `where` flattened; records every key the run config does not have."""
        flat = flatten(overrides)
        for key in flat:
            msg = check_key(key)
            if msg:
                line = self.line(where + (key,)) or self.line(where + (key.split(".")[0],)) or self.line(where)
                self.errors.append(f"{self.path}:{line}: {'.'.join(where)}: {msg}")
        return flat

    def key_lines(self, where: tuple, overrides: dict) -> dict[str, int]:
        """Sweep-file line of each flattened key at `where` (else of `where` itself, else 1)."""
        return {k: self.line(where + (k,)) or self.line(where) or 1 for k in flatten(overrides)}


def expand(spec: SweepSpec, path: Path, lines: dict) -> list[Cell]:
    """The cells of a sweep, in file order; checks every dotted key (with its line)."""
    chk = _Checker(path, lines)
    top, top_datasets = _check_top(spec, chk)
    cells: list[Cell] = []
    for gname, group in _groups(spec).items():
        cells += _expand_group(spec, gname, group, top, top_datasets, chk)
    _check_unique_slugs(cells, chk)
    if chk.errors:
        raise TunelabError("invalid sweep file:\n  " + "\n  ".join(dict.fromkeys(chk.errors)))
    return cells


def _check_top(spec: SweepSpec, chk: _Checker) -> tuple[Overrides, dict[str, Overrides]]:
    """Check the sweep-wide overrides, datasets and seed keys; returns the overrides and datasets flattened."""
    top = chk.checked(spec.overrides, ("overrides",))
    top_datasets = {name: chk.checked(o, ("datasets", name)) for name, o in (spec.datasets or {}).items()}
    for key in spec.seed_keys:
        if (msg := check_key(key)):
            chk.error(("seed_keys",), f"seed_keys: {msg}")
    return top, top_datasets


def _groups(spec: SweepSpec) -> dict[str, GroupSpec]:
    """The named groups, or the top-level grid/variants/question as one unnamed group."""
    return spec.groups or {"": GroupSpec(question=spec.question, variants=spec.variants, grid=spec.grid)}


def _expand_group(spec: SweepSpec, gname: str, group: GroupSpec, top: Overrides, top_datasets: dict[str, Overrides],
                  chk: _Checker) -> list[Cell]:  # fmt: skip
    """The cells of one group (datasets x variants x grid, less the excluded ones); checks its keys."""
    gpath = ("groups", gname) if spec.groups else ()
    base = _group_base(spec, group, gpath, chk)
    datasets = _group_datasets(group, gpath, top_datasets, chk)
    gover = chk.checked(group.overrides, gpath + ("overrides",))
    variants = {v: chk.checked(o, gpath + ("variants", v)) for v, o in (group.variants or {}).items()} or {"": {}}
    combos, names = _group_grid(group, gpath, chk)
    cells: list[Cell] = []
    excluded: set[str] = set()
    every = itertools.product((datasets or {"": {}}).items(), variants.items(), combos)
    for (dname, dover), (vname, vover), combo in every:
        variant, short = _cell_name(dname, vname, combo, names)
        hits = [p for p in group.exclude or [] if fnmatch.fnmatchcase(short, p)]
        if hits:
            excluded.update(hits)
            continue
        cells.append(Cell(
            group=slugify(gname) if gname else "",
            dataset=slugify(dname) if dname else "",
            variant=variant,
            base=base,
            overrides={**top, **dover, **gover, **vover, **combo},
            seeds=list(group.seeds or spec.seeds),
            question=group.question,
            lines=_cell_lines(spec, group, gpath, dname, vname, combo, chk),
        ))
    for pattern in set(group.exclude or []) - excluded:
        chk.error(gpath + ("exclude",),
                  f"exclude '{pattern}' matches no cell of group '{gname}' (cells are named dataset--variant)")
    return cells


def _group_base(spec: SweepSpec, group: GroupSpec, gpath: tuple, chk: _Checker) -> Path:
    """The group's base config (its own or the sweep's, relative to the sweep file); records it if missing."""
    base = chk.path.parent / (group.base or spec.base)
    if not base.is_file():
        line = chk.line(gpath + ("base",)) or chk.line(("base",))
        chk.errors.append(f"{chk.path}:{line}: base config not found: {base}")
    return base


def _group_datasets(group: GroupSpec, gpath: tuple, top_datasets: dict[str, Overrides],
                    chk: _Checker) -> dict[str, Overrides]:  # fmt: skip
    """The group's datasets: top-level ones by name, its own mapping (checked), or all the top-level ones."""
    if isinstance(group.datasets, list):
        unknown = [d for d in group.datasets if d not in top_datasets]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(top_datasets), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (defined: {', '.join(top_datasets) or 'none'})"
            chk.error(gpath + ("datasets",), f"unknown dataset '{unknown[0]}'{hint}")
        return {d: top_datasets[d] for d in group.datasets if d in top_datasets}
    if isinstance(group.datasets, dict):
        return {d: chk.checked(o, gpath + ("datasets", d)) for d, o in group.datasets.items()}
    return top_datasets


def _group_grid(group: GroupSpec, gpath: tuple, chk: _Checker) -> tuple[list[Overrides], dict[str, str]]:
    """Every combination of the group's grid values (as numbers where they are) and short key names; checks the grid."""
    grid = {k: v for k, v in (group.grid or {}).items()}
    for key, values in grid.items():
        if (msg := check_key(key)):
            chk.error(gpath + ("grid", key), f"grid: {msg}")
        if not values:
            chk.error(gpath + ("grid", key), f"grid '{key}' has no values")
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    return [{k: _number(v) for k, v in combo.items()} for combo in combos], _grid_names(grid)


def _cell_name(dname: str, vname: str, combo: Overrides, names: dict[str, str]) -> tuple[str, str]:
    """A cell's variant name (variant and grid values, or 'base') and the 'dataset--variant' name excludes match."""
    gridname = "_".join(f"{names[k]}-{v}" for k, v in combo.items())
    variant = slugify("_".join(p for p in (vname, gridname) if p)) if (vname or gridname) else "base"
    short = "--".join(p for p in (slugify(dname) if dname else "", variant) if p)
    return variant, short


def _cell_lines(spec: SweepSpec, group: GroupSpec, gpath: tuple, dname: str, vname: str, combo: Overrides,
                chk: _Checker) -> dict[str, int]:  # fmt: skip
    """Sweep-file line of every override a cell gets, so a config error can point back at the sweep file."""
    klines = {**chk.key_lines(("overrides",), spec.overrides), **chk.key_lines(gpath + ("overrides",), group.overrides)}
    if dname:
        own = isinstance(group.datasets, dict)
        where = (gpath if own else ()) + ("datasets", dname)
        klines.update(chk.key_lines(where, (group.datasets if own else spec.datasets)[dname]))
    if vname:
        klines.update(chk.key_lines(gpath + ("variants", vname), group.variants[vname]))
    klines.update({k: chk.line(gpath + ("grid", k)) or 1 for k in combo})
    return klines


def _check_unique_slugs(cells: list[Cell], chk: _Checker) -> None:
    """Record every cell name used twice (their run folders would collide)."""
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.slug in seen:
            chk.errors.append(f"{chk.path}: two cells are both named '{c.slug}'; rename a variant or dataset")
        seen[c.slug] = c


def cell_config(cell: Cell, seed: int, seed_keys: list[str], cli_overrides: Overrides, folder: Path, source: str) -> dict:
    """The validated, resolved config of one (cell, seed), as a plain dict."""
    raw = read_yaml(cell.base)
    for key, value in cell.overrides.items():
        set_dotted(raw, key, value)
    for key in seed_keys:
        set_dotted(raw, key, seed)
    for key, value in cli_overrides.items():
        set_dotted(raw, key, value)
    set_dotted(raw, "output_dir", str(folder))
    try:
        cfg: RunConfig = validate_dict(raw, source=f"for cell '{cell.slug}' seed {seed} ({source}, base {cell.base})")
    except TunelabError as err:
        # Point at the sweep line of the override that the message names, when there is one.
        named = [f"{k} (line {line})" for k, line in cell.lines.items() if f"'{k}'" in str(err)]
        raise TunelabError(f"{err}" + (f"\n  set in the sweep file at: {', '.join(named)}" if named else "")) from None
    return cfg.model_dump(mode="json")


def plan(spec: SweepSpec, cells: list[Cell], output_dir: Path, cli_overrides: list[str] | None = None, source: str = "") -> list[Run]:
    """Every (cell, seed) as a Run with its validated config; identical configs share one run."""
    from tunelab.config import parse_override

    cli: Overrides = {}
    for text in cli_overrides or []:
        key, value = parse_override(text)
        dotted = ".".join(key)
        if (msg := check_key(dotted)):
            raise TunelabError(f"command-line override '{text}': {msg}")
        cli[dotted] = value
    runs: list[Run] = []
    by_hash: dict[str, Run] = {}
    errors = []
    for cell in cells:
        for seed in cell.seeds:
            folder = output_dir / "runs" / cell.slug / f"seed-{seed}"
            try:
                config = cell_config(cell, seed, spec.seed_keys, cli, folder, source)
            except TunelabError as err:
                errors.append(str(err))
                continue
            h = config_hash(config)
            run = Run(cell, seed, folder, config, h, alias_of=by_hash.get(h))
            by_hash.setdefault(h, run)
            runs.append(run)
    if errors:
        more = f"\n(and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise TunelabError("\n".join(errors[:3]) + more)
    return runs


def load_sweep(path: str | Path, cli_overrides: list[str] | None = None, output_dir: str | None = None) -> tuple[SweepSpec, list[Cell], list[Run]]:
    """Read, check and expand a sweep file; every run config is validated here, before any run."""
    path = Path(path)
    spec, lines = read_spec(path)
    cells = expand(spec, path, lines)
    runs = plan(spec, cells, Path(output_dir or spec.output_dir), cli_overrides, source=str(path))
    return spec, cells, runs
