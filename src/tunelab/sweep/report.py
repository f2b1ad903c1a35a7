"""Sweep reports: results.csv (one row per run), results.md (per cell: mean +- std over seeds),
report.html (self-contained: tables plus PNG plots embedded as base64) and plots/*.png.

Plots: test accuracy against training time (one point per cell, error bars = std over seeds),
a bar chart per group with error bars, and validation-accuracy learning curves overlaid per group
(mean over seeds at each evaluation step).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

from tunelab.sweep.aggregate import GENERATION_METRICS, RUN_SCALARS, SPLIT_METRICS, lang_metrics

RUN_COLUMNS = ["group", "dataset", "variant", "cell", "seed", *SPLIT_METRICS, *GENERATION_METRICS, *RUN_SCALARS, "task",
               "folder", "shared_with"]


def write_csv(rows: list[dict], path: Path) -> None:
    columns = RUN_COLUMNS[:-2] + lang_metrics(rows) + RUN_COLUMNS[-2:]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------
# Formatting


def pct(stat: dict) -> str:
    """`{'mean': 0.9741, 'std': 0.0052}` -> '97.41 ± 0.52' (percent); std None -> '97.41'."""
    if stat["mean"] is None:
        return "–"
    text = f"{100 * stat['mean']:.2f}"
    return text + (f" ± {100 * stat['std']:.2f}" if stat["std"] is not None else "")


def num(stat: dict, digits: int = 0) -> str:
    if stat["mean"] is None:
        return "–"
    text = f"{stat['mean']:,.{digits}f}"
    return text + (f" ± {stat['std']:,.{digits}f}" if stat["std"] is not None and stat["std"] > 0 else "")


def ci(entry: dict) -> str:
    interval = entry["test_accuracy_ci95"]
    return f"[{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]" if interval else "–"


HEADERS = ["dataset", "cell", "seeds", "train acc %", "val acc %", "test acc %", "test acc 95 % CI", "train macro-F1 %", "val macro-F1 %",
           "test macro-F1 %", "trainable params", "train time s", "peak memory MB", "train tokens/s"]


def table_row(e: dict) -> list[str]:
    return [e["dataset"] or "–", e["variant"] + (f" (= {e['shared_with']})" if e["shared_with"] else ""), str(e["n"]),
            pct(e["train_accuracy"]), pct(e["validation_accuracy"]), pct(e["test_accuracy"]), ci(e),
            pct(e["train_macro_f1"]), pct(e["validation_macro_f1"]), pct(e["test_macro_f1"]),
            num(e["trainable_params"]), num(e["train_seconds"]), num(e["peak_memory_mb"]), num(e["train_tokens_per_second"])]


def loss(stat: dict) -> str:
    return num(stat, 4) if stat["mean"] is not None else "–"


SFT_HEADERS = ["dataset", "cell", "seeds", "val loss", "test loss", "test exact match %", "test token F1 %",
               "refusal precision %", "refusal recall %"]
LANG_HEADERS = {"token_f1": "token F1 %", "refusal_precision": "refusal precision %", "refusal_recall": "refusal recall %"}
COST_HEADERS = ["trainable params", "train time s", "peak memory MB"]


def sft_table(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Instruction-tuning cells: losses and the generated answers' scores, overall and per language."""
    per_lang = lang_metrics(entries)
    headers = SFT_HEADERS + [f"{k.split('_')[1]} {LANG_HEADERS[k.split('_', 2)[2]]}" for k in per_lang] + COST_HEADERS
    rows = [[e["dataset"] or "–", e["variant"] + (f" (= {e['shared_with']})" if e["shared_with"] else ""), str(e["n"]),
             loss(e["validation_loss"]), loss(e["test_loss"]), pct(e["test_exact_match"]), pct(e["test_token_f1"]),
             pct(e["test_refusal_precision"]), pct(e["test_refusal_recall"]), *(pct(e[k]) for k in per_lang),
             num(e["trainable_params"]), num(e["train_seconds"]), num(e["peak_memory_mb"])] for e in entries]
    return headers, rows


def group_table(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The headers and rows of one group's table: classification columns, or SFT's when every cell is SFT."""
    if all(e.get("task") == "sft" for e in entries):
        return sft_table(entries)
    return HEADERS, [table_row(e) for e in entries]


def by_group(cells: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in cells:
        out.setdefault(e["group"], []).append(e)
    return out


def markdown(cells: list[dict], title: str, notes: list[str]) -> str:
    lines = [f"# {title}", "", *notes, ""]
    for group, entries in by_group(cells).items():
        q = entries[0]["question"]
        lines += [f"## {group or 'cells'}" + (f": {q}" if q else ""), ""]
        headers, rows = group_table(entries)
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg backend: no display needed)


def _datasets(entries: list[dict]) -> list[str]:
    return list(dict.fromkeys(e["dataset"] for e in entries))


def plot_accuracy_vs_time(cells: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    datasets = _datasets(cells)
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(by_group(cells))}
    for ax, ds in zip(axes[0], datasets):
        # A cell sharing its runs with another is the same point: drawn once.
        for e in (e for e in cells if e["dataset"] == ds and e["test_accuracy"]["mean"] is not None and not e["shared_with"]):
            x, y = e["train_seconds"]["mean"], 100 * e["test_accuracy"]["mean"]
            spread = 100 * (e["test_accuracy"]["std"] or 0)
            yerr = [[min(spread, y)], [min(spread, 100 - y)]]  # mean ± std, kept inside 0-100 %
            ax.errorbar(x, y, xerr=e["train_seconds"]["std"] or 0, yerr=yerr, fmt="o", color=colors[e["group"]], capsize=3,
                        label=e["group"] or None)
            ax.annotate(e["variant"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("training time (s, log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"test accuracy vs training time{' — ' + ds if ds else ''}")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        if uniq:
            ax.legend(uniq.values(), uniq.keys(), fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(entries: list[dict], title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    datasets = _datasets(entries)
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(5.0, 1.1 * len(entries) / len(datasets) + 2.5) * len(datasets), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        es = [e for e in entries if e["dataset"] == ds]
        xs = range(len(es))
        lows = []
        for offset, key, label in ((-0.2, "test_accuracy", "test accuracy"), (0.2, "test_macro_f1", "test macro-F1")):
            means = [100 * (e[key]["mean"] or 0) for e in es]
            stds = [100 * (e[key]["std"] or 0) for e in es]
            ax.bar([x + offset for x in xs], means, width=0.4, yerr=stds, capsize=3, label=label)
            lows += [m - s for m, s in zip(means, stds) if m > 0]
        ax.set_xticks(list(xs), [e["variant"] for e in es], rotation=30, ha="right", fontsize=8)
        if lows:
            ax.set_ylim(max(0.0, math.floor(min(lows) - 5)), 100.5)
        ax.set_ylabel("%  (mean ± std over seeds)")
        ax.set_title(f"{title}{' — ' + ds if ds else ''}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def validation_curve(folder: str) -> dict[int, float]:
    path = Path(folder) / "metrics.jsonl"
    curve = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("split") == "validation" and "accuracy" in row:
                curve[row["step"]] = row["accuracy"]
    return curve


def plot_curves(entries: list[dict], rows: list[dict], title: str, path: Path) -> bool:
    import matplotlib.pyplot as plt

    datasets = _datasets(entries)
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    drawn = False
    for ax, ds in zip(axes[0], datasets):
        for e in (e for e in entries if e["dataset"] == ds):
            curves = [validation_curve(r["folder"]) for r in rows if r["cell"] == e["cell"]]
            steps = sorted({s for c in curves for s in c})
            if not steps:
                continue
            mean = [100 * sum(c[s] for c in curves if s in c) / sum(s in c for c in curves) for s in steps]
            ax.plot(steps, mean, marker=".", label=e["variant"])
            drawn = True
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation accuracy (%, mean over seeds)")
        ax.set_title(f"{title}{' — ' + ds if ds else ''}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def make_plots(cells: list[dict], rows: list[dict], folder: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    done = [e for e in cells if e["test_accuracy"]["mean"] is not None]
    if not done:
        return []
    plots = [("Test accuracy against training time", folder / "accuracy_vs_time.png")]
    plot_accuracy_vs_time(done, plots[0][1])
    for group, entries in by_group(done).items():
        name = group or "cells"
        q = entries[0]["question"]
        bars = folder / f"bars-{name}.png"
        plot_bars(entries, q or name, bars)
        plots.append((f"{name}: test accuracy and macro-F1" + (f" ({q})" if q else ""), bars))
        curves = folder / f"curves-{name}.png"
        if plot_curves(entries, rows, f"{name}: learning curves", curves):
            plots.append((f"{name}: validation accuracy during training", curves))
    return plots


# ---------------------------------------------------------------------------------------------
# HTML


def html_report(cells: list[dict], plots: list[tuple[str, Path]], title: str, notes: list[str]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:nth-child(-n+2),th{text-align:left}img{max-width:100%;border:1px solid #eee}</style>",
             f"</head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for group, entries in by_group(cells).items():
        q = entries[0]["question"]
        parts.append(f"<h2>{html.escape(group or 'cells')}{': ' + html.escape(q) if q else ''}</h2><table><tr>")
        headers, rows = group_table(entries)
        parts += [f"<th>{html.escape(h)}</th>" for h in headers]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    for caption, path in plots:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(caption)}</h3><img alt='{html.escape(path.name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(rows: list[dict], cells: list[dict], folder: Path, title: str, notes: list[str]) -> dict[str, Path]:
    """Write results.csv, results.md, report.html and plots/ into `folder`; return their paths."""
    from tunelab.data.io_atomic import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"csv": folder / "results.csv", "md": folder / "results.md", "html": folder / "report.html"}
    write_csv(rows, paths["csv"])
    write_text_atomic(paths["md"], markdown(cells, title, notes))
    plots = make_plots(cells, rows, folder / "plots")
    write_text_atomic(paths["html"], html_report(cells, plots, title, notes))
    return paths
