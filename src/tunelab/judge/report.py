"""The judge's report: report.md, report.html and (with human scores) confusion.png.

    write_report(summary, rows, out_dir)          # pointwise: scores, agreement, confusion plot
    write_report(summary, pairs, out_dir)         # pairwise: win/tie/loss and order disagreement

The HTML page is self-contained (the plot is embedded as a PNG data URI), so it can be mailed or
attached to a ticket. The plot is drawn with matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from tunelab.data.io_atomic import write_bytes_atomic, write_text_atomic
from tunelab.judge.agreement import METRICS, confusion

SMALL = 30  # fewer paired rows than this: the bootstrap intervals say little
NAMES = {"pearson": "Pearson r", "spearman": "Spearman ρ", "kendall": "Kendall τ-b", "kappa": "Cohen's κ (quadratic)", "exact": "exact agreement"}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def summary_lines(s: dict) -> list[tuple[str, str]]:
    """(label, value) rows for the header table (also printed by the command)."""
    rows = [("judge", s["judge"]), ("rubric", f"{s['rubric']} ({s['rubric_version']}, scale {s['scale'][0]}-{s['scale'][1]})")]
    if s["mode"] == "pointwise":
        rows += [("rows", str(s["rows"])), ("scored", str(s["scored"])), ("parsed on the retry", str(s["retried"])),
                 ("unparseable", f"{s['unparseable']} ({s['unparseable'] / max(1, s['rows']):.1%})"),
                 ("mean score", _fmt(s["mean_score"]))]
    else:
        rows += [("pairs", str(s["pairs"])), ("judged", str(s["judged"])), ("unparseable", str(s["unparseable"])),
                 (f"{s['names'][0]} vs {s['names'][1]}", f"{s['win']} win / {s['tie']} tie / {s['loss']} loss"),
                 ("win rate (ties half)", _fmt(s["win_rate"])), ("orders disagree", _fmt(s["order_disagreement_rate"])),
                 ("first position picked", _fmt(s["first_position_rate"]))]
    rows += [("requests sent", f"{s['requests_sent']} ({s['from_cache']} from cache)"), ("seconds", str(s["seconds"]))]
    return rows


def agreement_rows(agr: dict) -> list[tuple[str, str, str]]:
    return [(NAMES[m], _fmt(agr[m]["value"]), f"[{_fmt(agr[m]['low'])}, {_fmt(agr[m]['high'])}]") for m in METRICS]


def confusion_png(rows: list[dict], scale: tuple[int, int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confusion([r["score"] for r in rows], [r.get("human") for r in rows], scale)
    labels = list(range(scale[0], scale[1] + 1))
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(labels), 1.0 + 0.7 * len(labels)), dpi=100)
    ax.imshow(counts, cmap="Blues")
    top = max(max(r) for r in counts) or 1
    for h, line in enumerate(counts):
        for j, c in enumerate(line):
            ax.text(j, h, str(c), ha="center", va="center", color="white" if c > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("judge score")
    ax.set_ylabel("human score")
    ax.set_title("judge vs human")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _markdown(s: dict, rows: list[dict]) -> str:
    out = [f"# Judge report ({s['mode']})", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary_lines(s)]
    if s.get("human"):
        h = s["human"]
        out += ["", f"## Agreement with {h['source']} ({h['agreement']['n']} rows scored by both, "
                f"{h['agreement']['n_boot']} bootstrap resamples)", "", "| statistic | value | 95 % interval |", "|---|---|---|"]
        out += [f"| {a} | {b} | {c} |" for a, b, c in agreement_rows(h["agreement"])]
        if h["agreement"]["n"] < SMALL:
            out += ["", f"Only {h['agreement']['n']} rows: the intervals are rough; grade at least {SMALL} rows before trusting them."]
        out += ["", "![judge vs human](confusion.png)"]
    if s.get("self_consistency"):
        c = s["self_consistency"]
        out += ["", f"## Self-consistency ({c['runs']} runs at temperature {c['temperature']})", "",
                f"exact agreement between runs {_fmt(c['exact'])}, quadratic κ {_fmt(c['kappa'])}, "
                f"rows scored identically every time {_fmt(c['identical'])}"]
    if s["mode"] == "pointwise":
        hist = ", ".join(f"{k}: {v}" for k, v in s["histogram"].items())
        out += ["", f"Scores: {hist}", "", "## Lowest-scored rows", ""]
        low = sorted((r for r in rows if r["score"] is not None), key=lambda r: r["score"])[:10]
        out += [f"- {r['source']} score {r['score']}: {r['reason']}" for r in low]
        bad = [r for r in rows if r["score"] is None]
        if bad:
            out += ["", "## Unparseable", ""] + [f"- {r['source']}: {(r.get('retry_reply') or r['reply'])[:120]!r}" for r in bad[:10]]
    return "\n".join(out) + "\n"


def _html(s: dict, png: bytes | None) -> str:
    esc = html.escape
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary_lines(s))
    parts = [f"<!doctype html><meta charset='utf-8'><title>tunelab judge</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}"
             f"table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style>"
             f"<h1>Judge report ({esc(s['mode'])})</h1><table>{table}</table>"]
    if s.get("human"):
        h = s["human"]
        rows = "".join(f"<tr><th>{esc(a)}</th><td>{b}</td><td>{c}</td></tr>" for a, b, c in agreement_rows(h["agreement"]))
        parts.append(f"<h2>Agreement with {esc(str(h['source']))} ({h['agreement']['n']} rows)</h2>"
                     f"<table><tr><th>statistic</th><th>value</th><th>95 % interval</th></tr>{rows}</table>")
    if png:
        parts.append(f"<h2>Judge against human scores</h2><img alt='confusion plot' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    return "".join(parts) + "\n"


def write_report(summary: dict, rows: list[dict], out_dir: str | Path) -> list[Path]:
    """Write the report files; returns their paths."""
    out_dir = Path(out_dir)
    png = confusion_png(rows, tuple(summary["scale"])) if summary.get("human") else None
    written = [write_text_atomic(out_dir / "report.md", _markdown(summary, rows)), write_text_atomic(out_dir / "report.html", _html(summary, png))]
    if png:
        written.append(write_bytes_atomic(out_dir / "confusion.png", [png]))
    return written
