"""`tunelab validate FILE [key=value ...] [--kind run|sweep|synth]`: check a config without loading
any model (a model already on this machine has its config.json read, for what it settles:
`model.pooling: pooler` on a decoder).

    tunelab validate configs/spam-smollm2.yaml                 # run config: prints the resolved config
    tunelab validate configs/sweeps/seven-questions.yaml       # sweep file: cells, runs, every run config
    tunelab validate configs/synth/docqa-ko.yaml               # synth config: its sections and prompts

The kind is told from the top-level keys: each kind's schema has keys the others lack (a run
config `data`, `model`, `train`...; a sweep `base`, `groups`, `variants`, `grid`, `seeds`...; a
synth config `lang`, `questions`, `answers`, `teacher`...), and the kind with the most of them
wins. `--kind` names it instead. Each kind is checked by its own loader, the one `train`, `sweep`
and `data synth` use, so a file that passes here passes there.
"""

HELP = "check a run config, sweep file or synth config (and overrides) without loading a model"

KINDS = ("run", "sweep", "synth")


def configure(p):
    p.add_argument("config", help="YAML file: a run config, a sweep file or a synth config (told apart by its keys)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 (for a sweep: applied to every run)")
    p.add_argument("--kind", choices=("auto",) + KINDS, default="auto",
                   help="what the file is (default auto: from its top-level keys)")


def _schema_keys() -> dict[str, set[str]]:
    """Top-level keys of each kind's schema."""
    from tunelab.config import RunConfig
    from tunelab.sweep.spec import SweepSpec
    from tunelab.synth.prompts import SynthConfig

    return {"run": set(RunConfig.model_fields), "sweep": set(SweepSpec.model_fields), "synth": set(SynthConfig.model_fields)}


def detect_kind(raw: dict, source: str = "<config>") -> str:
    """The kind of a config from its top-level keys: the kind with most keys no other kind has.

    >>> detect_kind({"base": "b.yaml", "output_dir": "runs/s", "grid": {"train.lr": [1e-4]}})
    'sweep'
    """
    from tunelab.errors import TunelabError

    schemas = _schema_keys()
    keys = {str(k) for k in raw}
    scores = {}
    for kind, own in schemas.items():
        others = set().union(*(v for k, v in schemas.items() if k != kind))
        scores[kind] = len(keys & (own - others))
    best = max(scores.values())
    winners = [k for k, v in scores.items() if v == best]
    if best == 0 or len(winners) > 1:
        shown = ", ".join(sorted(keys)) or "none, the file is empty"
        raise TunelabError(
            f"{source}: cannot tell the kind of config from its top-level keys ({shown}); a run config has "
            "data and model, a sweep file base and groups/variants/grid, a synth config lang, questions and "
            "answers; name it with --kind run|sweep|synth"
        )
    return winners[0]


def _validate_run(path: str, overrides: list[str]) -> None:
    from tunelab.config import load_config, to_yaml

    cfg = load_config(path, overrides)
    _check_against_model(path, cfg)
    print(to_yaml(cfg), end="")
    print(f"# {path}: valid")


def _check_against_model(path: str, cfg) -> None:
    """What the config asks of the model that the model's config.json already answers, when the
    model is on this machine (a local folder or an installed asset; nothing is loaded or downloaded)."""
    import json

    from tunelab.classify.model import model_section_problem
    from tunelab.errors import TunelabError

    if cfg.task != "classification":
        return
    folder = _local_model_folder(str(cfg.model.name))
    if folder is None:
        return
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, ValueError):
        return  # train reports a broken model folder itself, with its own message
    if problem := model_section_problem(cfg.model, model_type):
        raise TunelabError(f"{path}: {problem} (model {cfg.model.name})")


def _local_model_folder(spec: str):
    """The folder of a model that is here already (a folder with config.json, an installed
    asset), or None (a hub id, a GGUF file to convert, an asset not installed)."""
    from pathlib import Path

    from tunelab.assets.resolve import ASSET_PREFIX
    from tunelab.assets.store import asset_dir, is_installed
    from tunelab.errors import TunelabError

    if spec.startswith(ASSET_PREFIX):
        name = spec[len(ASSET_PREFIX):]
        try:
            return asset_dir(name) if is_installed(name) else None
        except TunelabError:  # an unknown asset name: train says which exist
            return None
    path = Path(spec).expanduser()
    return path if (path / "config.json").is_file() else None


def _validate_sweep(path: str, overrides: list[str]) -> None:
    from tunelab.sweep.spec import load_sweep

    spec, cells, runs = load_sweep(path, overrides)
    distinct = len({id(r.home) for r in runs})
    groups = list(dict.fromkeys(c.group for c in cells))
    bases = list(dict.fromkeys(str(c.base) for c in cells))
    base = f", base {bases[0]}" if len(bases) == 1 else ""
    print(f"{path}: sweep file: {len(cells)} cells in {len(groups)} group{'s' * (len(groups) != 1)}, "
          f"{len(runs)} runs ({distinct} distinct configs){base}, output {spec.output_dir}; every run config valid")
    width = max((len(c.slug) for c in cells), default=0)
    for c in cells:
        own = f"  base {c.base}" if len(bases) > 1 else ""
        print(f"  {c.slug:<{width}}  seeds {', '.join(map(str, c.seeds))}{own}")


def _validate_synth(path: str, overrides: list[str]) -> None:
    from tunelab.synth.prompts import load_synth_config

    cfg = load_synth_config(path, overrides)
    t, q, a = cfg.teacher, cfg.questions, cfg.answers
    teacher = f"{t.kind} ({t.model or 'default model'})"
    print(f"{path}: synth config: lang {cfg.lang}, prompt_version {cfg.prompt_version}, teacher {teacher}, "
          f"chunks of {cfg.chunking.min_chars}-{cfg.chunking.max_chars} chars, {q.per_chunk} questions per chunk, "
          f"few-shot examples {len(q.examples)} questions / {len(a.examples)} answers, "
          f"unanswerable share {cfg.unanswerable.share}; valid")


def run(args) -> int:
    from tunelab.config import read_yaml

    kind = args.kind
    if kind == "auto":
        kind = detect_kind(read_yaml(args.config), args.config)
    {"run": _validate_run, "sweep": _validate_sweep, "synth": _validate_synth}[kind](args.config, args.overrides)
    return 0
