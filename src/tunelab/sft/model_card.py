"""The model card (`README.md`) of an exported folder: what the model is, what made it, how it scored.

    text = model_card(run_folder, meta, name="assistant", files={"model.safetensors": "weights"})

Written by `tunelab export` into every folder it produces (HF folder or GGUF), for SFT and
classification runs alike. Everything comes from what the run left behind: `tunelab.json` (base
model, task, template, max length), `config.yaml` (the data files), `data_report.json` (rows and
split sizes) and `summary.json` (scores). Licences are known only for tunelab's offline assets
(`asset:NAME`, from the catalogue); anything else says "unknown, check", because a wrong licence
line is worse than none. Exporting an exported folder (no run folder beside it) gives a card with
the model facts only.
"""

from __future__ import annotations

import json
from pathlib import Path

UNKNOWN = "unknown, check"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def asset_licence(spec: str | None) -> str:
    """The catalogue licence of `asset:NAME` (or a folder named after an asset), else UNKNOWN.

    >>> asset_licence("asset:smollm2-135m-instruct"), asset_licence("/data/my-model")
    ('Apache-2.0', 'unknown, check')
    """
    from tunelab.assets.catalog import CATALOG

    if not spec:
        return UNKNOWN
    name = spec[len("asset:"):] if spec.startswith("asset:") else Path(spec).name
    asset = CATALOG.get(name)
    return asset.licence if asset is not None else UNKNOWN


def _data_files(run_folder: Path | None) -> list[str]:
    if run_folder is None or not (run_folder / "config.yaml").is_file():
        return []
    import yaml

    try:
        data = (yaml.safe_load((run_folder / "config.yaml").read_text(encoding="utf-8")) or {}).get("data") or {}
    except (OSError, yaml.YAMLError):
        return []
    return [str(data[k]) for k in ("train", "validation", "test") if data.get(k)]


def _data_lines(run_folder: Path | None) -> list[str]:
    files = _data_files(run_folder)
    report = _read_json(run_folder / "data_report.json") if run_folder else {}
    if not files:
        return [f"- data: {UNKNOWN} (no run folder beside this model)"]
    lines = [f"- data: {', '.join(f'`{f}`' for f in files)}; licence: {', '.join(sorted({asset_licence(f) for f in files}))}"]
    if report:
        sizes = report.get("sizes") or {}
        skipped = sum((report.get("skipped_rows") or {}).values()) if isinstance(report.get("skipped_rows"), dict) else 0
        lines.append(f"- rows read: {report.get('rows_read', '?')}, skipped: {skipped}; split: "
                     + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    return lines


def _metric_rows(summary: dict) -> list[str]:
    """Scalar scores of each split in summary.json, one table row each."""
    rows = []
    for split in ("train", "validation", "test"):
        scores = summary.get(split)
        if isinstance(scores, dict):
            for key, value in scores.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append(f"| {split} | {key} | {value:.4g} |" if isinstance(value, float) else f"| {split} | {key} | {value} |")
    return rows


def model_card(run_folder: Path | None, meta: dict, *, name: str, files: dict[str, str], usage: str) -> str:
    """README.md text. `files`: name -> what it is; `usage`: a short code block for the folder."""
    task = meta.get("task", "classification")
    base = meta.get("base_model")
    summary = _read_json(run_folder / "summary.json") if run_folder else {}
    what = (f"instruction fine-tuning (SFT), template `{meta.get('template', '?')}`" if task == "sft"
            else f"text classification, labels {', '.join(f'`{x}`' for x in meta.get('labels', []))}")
    trainable = (meta.get("trainable") or {}).get("policy")
    lines = [
        f"# {name}", "",
        f"Fine-tuned with tunelab from `{base or UNKNOWN}`: {what}.", "",
        f"- base model: `{base or UNKNOWN}`; licence: {asset_licence(base)}",
        f"- task: {task}" + (f"; trained weights: {trainable}" + (" (LoRA merged into the base)" if trainable == "lora" else "")
                             if trainable else ""),
        f"- max length: {meta.get('max_length', UNKNOWN)} tokens",
        *_data_lines(run_folder),
    ]
    if summary:
        facts = [f"{k} {summary[k]}" for k in ("steps", "device", "precision") if k in summary]
        lines.append(f"- training: {', '.join(facts)}")
    lines += ["", "## Metrics (from the run's summary.json)", ""]
    rows = _metric_rows(summary)
    lines += ["| split | metric | value |", "|---|---|---|", *rows] if rows else [f"{UNKNOWN}: no summary.json beside this model"]
    lines += ["", "## Files", "", *[f"- `{f}`: {what}" for f, what in files.items()], "", "## Use", "", usage.strip(), ""]
    return "\n".join(lines)
