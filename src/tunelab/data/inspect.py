"""Look at a data set before training on it: a dict of facts, a printed table, an HTML page.

    tunelab data inspect data/tickets.csv --tokenizer models/smollm2 --max-length 256 --html report.html

Facts: rows and columns, label distribution, text length in characters and tokens (percentiles,
rows over a max length), exact and near duplicates, empty and garbled rows, label conflicts (same
text, different labels), letters by script (Hangul / Latin / other), rows with personal data, and
what `clean` would normalise. Nothing is changed; the text is looked at as it is in the file.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelab.data import dedup, normalize, pii
from tunelab.data.clean import _PLACEHOLDER, _label_key, guess_text_columns, row_text

EXAMPLES = 10  # lines listed per finding


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    q = np.percentile(values, [50, 90, 95, 99])
    return {"min": int(values.min()), "mean": round(float(values.mean()), 1), "p50": float(q[0]),
            "p90": float(q[1]), "p95": float(q[2]), "p99": float(q[3]), "max": int(values.max())}  # fmt: skip


def token_lengths(texts: Sequence[str], tokenizer: Any, batch_size: int = 1000) -> np.ndarray:
    """(N,) token count of each text with special tokens, for a Hugging Face tokenizer."""
    out = []
    for lo in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[lo : lo + batch_size]), add_special_tokens=True)["input_ids"]
        out.extend(len(x) for x in ids)
    return np.array(out, dtype=np.int64)


def inspect_rows(rows: Sequence[dict], *, text_column: str | Sequence[str] | None = None, label_column: str | None = None,
                 tokenizer: Any = None, max_length: int | None = None, near_dup_threshold: float | None = 0.7,
                 source: str = "<rows>") -> dict:  # fmt: skip
    """Facts about `rows` as a JSON-ready dict (see the module docstring)."""
    n = len(rows)
    columns: dict[str, Counter] = {}
    for r in rows:
        for k, v in r.items():
            if not k.startswith("_"):
                empty = v is None or isinstance(v, str) and not v.strip()
                columns.setdefault(k, Counter())["empty" if empty else type(v).__name__] += 1
    if label_column is None and "label" in columns:
        label_column = "label"
    if isinstance(text_column, str):
        text_column = [c.strip() for c in text_column.split(",")]
    text_cols = list(text_column) if text_column else guess_text_columns(rows, label_column, source) if n else []
    lines = [r.get("_line", i + 1) for i, r in enumerate(rows)]
    texts = [row_text(r, text_cols) for r in rows]

    stats: dict[str, Any] = {"source": source, "rows": n, "text_columns": text_cols, "label_column": label_column}
    stats["columns"] = {k: {"filled": n - c.get("empty", 0), "types": dict(c)} for k, c in columns.items()}
    if label_column:
        labels = Counter(_label_key(r.get(label_column)) for r in rows)
        stats["labels"] = dict(labels.most_common())

    chars = np.array([len(t) for t in texts], dtype=np.int64)
    stats["chars"] = _percentiles(chars)
    if tokenizer is not None and n:
        toks = token_lengths(texts, tokenizer)
        stats["tokens"] = _percentiles(toks)
        if max_length:
            over = np.flatnonzero(toks > max_length)
            stats["tokens"].update(max_length=max_length, over_max=int(len(over)), over_max_lines=[lines[i] for i in over[:EXAMPLES]])
        stats["_token_lengths"] = toks  # for plots; dropped from JSON
    stats["_char_lengths"] = chars

    empty = [i for i, t in enumerate(texts) if not t.strip()]
    garbled = [i for i, t in enumerate(texts) if normalize.looks_garbled(t)]
    stats["empty"] = {"rows": len(empty), "lines": [lines[i] for i in empty[:EXAMPLES]]}
    stats["garbled"] = {"rows": len(garbled), "lines": [lines[i] for i in garbled[:EXAMPLES]]}

    steps: Counter = Counter()
    pii_rows: Counter = Counter()
    script = np.zeros(3, dtype=np.int64)
    dominant: Counter = Counter()
    for t in texts:
        steps.update(normalize.normalize_steps(t)[1])
        pii_rows.update({f.type for f in pii.find_pii(t)})
        letters_only = _PLACEHOLDER.sub(" ", t) if "[" in t else t  # '[PHONE]' is not Latin text
        script += normalize.script_counts(letters_only)
        dominant[normalize.dominant_script(letters_only)] += 1
    stats["would_normalize"] = dict(steps.most_common())
    stats["pii_rows"] = dict(pii_rows.most_common())
    letters = int(script.sum())
    stats["scripts"] = {
        "letter_share": {k: round(float(v) / letters, 4) if letters else 0.0 for k, v in zip(("hangul", "latin", "other"), script)},
        "rows_by_dominant": dict(dominant.most_common()),
    }

    # exact duplicates and label conflicts (texts that are not empty)
    by_key: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        if t.strip():
            by_key.setdefault(dedup.dedup_key(t), []).append(i)
    dup_groups = [m for m in by_key.values() if len(m) > 1]
    stats["exact_duplicates"] = {
        "rows": sum(len(m) - 1 for m in dup_groups),
        "groups": len(dup_groups),
        "examples": [[lines[i] for i in m[:5]] for m in dup_groups[:EXAMPLES]],
    }
    conflicts = []
    if label_column:
        for m in dup_groups:
            labels = Counter(_label_key(rows[i].get(label_column)) for i in m)
            if len(labels) > 1:
                conflicts.append({"lines": [lines[i] for i in m[:10]], "labels": dict(labels), "preview": texts[m[0]][:120]})
    stats["label_conflicts"] = {"groups": len(conflicts), "examples": conflicts[:EXAMPLES]}

    if near_dup_threshold is not None:
        keep = [m[0] for m in by_key.values()]  # one row per exact group
        if len(keep) > 1:
            nd = dedup.near_duplicates([texts[i] for i in keep], threshold=near_dup_threshold)
            clusters = Counter(nd.groups.tolist())
            multi = [g for g, c in clusters.items() if c > 1]
            members: dict[int, list[int]] = {}
            for j, g in enumerate(nd.groups.tolist()):
                if clusters[g] > 1 and len(members.setdefault(g, [])) < 5:
                    members[g].append(lines[keep[j]])
            stats["near_duplicates"] = {
                "threshold": near_dup_threshold,
                "rows": int(sum(clusters[g] - 1 for g in multi)),
                "groups": len(multi),
                "examples": [members[g] for g in multi[:EXAMPLES]],
            }
    return stats


def public_stats(stats: dict) -> dict:
    """`stats` without the raw arrays kept for plotting (JSON-ready)."""
    return {k: v for k, v in stats.items() if not k.startswith("_")}


# --- rendering -----------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _sections(stats: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, [(name, value)]) shared by the printed table and the HTML page."""
    out = [("Overview", [
        ("rows", _fmt(stats["rows"])),
        ("text column(s)", ", ".join(stats["text_columns"]) or "-"),
        ("label column", stats["label_column"] or "-"),
        ("columns", ", ".join(f"{k} ({_fmt(v['filled'])} filled)" for k, v in stats["columns"].items())),
    ])]  # fmt: skip
    if "labels" in stats:
        total = max(stats["rows"], 1)
        items = [(k[:60], f"{_fmt(v)}  ({100 * v / total:.1f} %)") for k, v in list(stats["labels"].items())[:30]]
        if len(stats["labels"]) > 30:
            items.append(("...", f"{len(stats['labels']) - 30:,} more labels"))
        out.append(("Labels", items))
    for key, title in (("chars", "Length in characters"), ("tokens", "Length in tokens")):
        if stats.get(key):
            s = stats[key]
            items = [(k, _fmt(s[k])) for k in ("min", "p50", "p90", "p95", "p99", "max", "mean")]
            if "max_length" in s:
                items.append((f"over {s['max_length']}", f"{_fmt(s['over_max'])}  lines {s['over_max_lines']}"))
            out.append((title, items))
    q = [
        ("empty rows", f"{_fmt(stats['empty']['rows'])}  lines {stats['empty']['lines']}"),
        ("garbled rows", f"{_fmt(stats['garbled']['rows'])}  lines {stats['garbled']['lines']}"),
        ("exact duplicates", f"{_fmt(stats['exact_duplicates']['rows'])} rows in {_fmt(stats['exact_duplicates']['groups'])} groups"),
    ]
    if "near_duplicates" in stats:
        nd = stats["near_duplicates"]
        q.append((f"near duplicates (>= {nd['threshold']})", f"{_fmt(nd['rows'])} rows in {_fmt(nd['groups'])} groups  e.g. {nd['examples'][:3]}"))
    q.append(("label conflicts", f"{_fmt(stats['label_conflicts']['groups'])} groups  e.g. {[c['lines'] for c in stats['label_conflicts']['examples'][:3]]}"))
    q.append(("personal data (rows)", ", ".join(f"{k} {_fmt(v)}" for k, v in stats["pii_rows"].items()) or "none found"))
    q.append(("clean would normalise", ", ".join(f"{k} {_fmt(v)}" for k, v in stats["would_normalize"].items()) or "nothing"))
    out.append(("Quality", q))
    sc = stats["scripts"]
    out.append(("Scripts", [
        ("letter share", ", ".join(f"{k} {100 * v:.1f} %" for k, v in sc["letter_share"].items())),
        ("rows by main script", ", ".join(f"{k} {_fmt(v)}" for k, v in sc["rows_by_dominant"].items())),
    ]))  # fmt: skip
    return out


def render_table(stats: dict) -> str:
    """The facts as a plain-text table for the terminal."""
    lines = [f"{stats['source']}"]
    for title, items in _sections(stats):
        lines.append(f"\n{title}")
        width = max((len(k) for k, _ in items), default=0)
        lines.extend(f"  {k:<{width}}  {v}" for k, v in items)
    return "\n".join(lines) + "\n"


def _hangul_font() -> str | None:
    from matplotlib import font_manager

    for f in font_manager.fontManager.ttflist:
        if any(w in f.name for w in ("Nanum", "Noto Sans CJK", "Noto Sans KR", "Malgun", "UnDotum", "Apple SD Gothic")):
            return f.name
    return None


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(stats: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    font = _hangul_font()
    plots = []
    if stats.get("labels"):
        names = list(stats["labels"])[:30]
        # without a Hangul font matplotlib draws boxes: number the labels, the table names them
        ticks = names if font or all(n.isascii() for n in names) else [f"#{i + 1}" for i in range(len(names))]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
        if font:
            plt.rcParams["font.family"] = font
        ax.barh(range(len(names)), [stats["labels"][k] for k in names], color="#4c72b0")
        ax.set_yticks(range(len(names)), [t[:30] for t in ticks])
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        plots.append(("Label distribution", _png(fig)))
        plt.close(fig)
    for key, title, limit in (("_char_lengths", "Text length (characters)", None),
                              ("_token_lengths", "Text length (tokens)", stats.get("tokens", {}).get("max_length"))):  # fmt: skip
        values = stats.get(key)
        if values is None or not len(values):
            continue
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.hist(values, bins=min(60, max(5, len(np.unique(values)))), color="#55a868")
        if limit:
            ax.axvline(limit, color="#c44e52", linestyle="--", label=f"max length {limit}")
            ax.legend()
        ax.set_xlabel(title.split("(")[1].rstrip(")"))
        ax.set_ylabel("rows")
        plots.append((title, _png(fig)))
        plt.close(fig)
    share = stats["scripts"]["letter_share"]
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.barh(list(share), [100 * v for v in share.values()], color=["#8172b2", "#4c72b0", "#937860"])
    ax.set_xlabel("% of letters")
    ax.set_xlim(0, 100)
    plots.append(("Scripts", _png(fig)))
    plt.close(fig)
    return plots


def render_html(stats: dict) -> str:
    """A self-contained HTML page (plots embedded as PNG) with the same facts as the table."""
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>tunelab data inspect: {e(str(stats['source']))}</title><style>",
        "body{font-family:system-ui,'Noto Sans KR','Malgun Gothic',sans-serif;max-width:960px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse;margin-bottom:1.5em}td{border-bottom:1px solid #ddd;padding:.25em .8em;vertical-align:top}",
        "td:first-child{color:#555;white-space:nowrap}img{max-width:100%}</style></head><body>",
        f"<h1>Data inspection</h1><p><code>{e(str(stats['source']))}</code></p>",
    ]
    for title, items in _sections(stats):
        parts.append(f"<h2>{e(title)}</h2><table>")
        if title == "Labels":  # number the labels as the plot may
            items = [(f"#{i + 1} {k}", v) for i, (k, v) in enumerate(items)]
        parts.extend(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in items)
        parts.append("</table>")
    if stats["label_conflicts"]["examples"]:
        parts.append("<h2>Label conflicts</h2><table>")
        for c in stats["label_conflicts"]["examples"]:
            parts.append(f"<tr><td>lines {e(str(c['lines']))}</td><td>{e(str(c['labels']))}<br>{e(c['preview'])}</td></tr>")
        parts.append("</table>")
    for title, png in _plots(stats):
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def inspect_file(path, *, text_column=None, label_column=None, tokenizer=None, max_length=None,
                 near_dup_threshold: float | None = 0.7, **read_kwargs) -> dict:  # fmt: skip
    """Read `path` with the tunelab readers and inspect it."""
    from tunelab.data.readers import read_rows

    rows = read_rows(path, **read_kwargs)
    return inspect_rows(rows, text_column=text_column, label_column=label_column, tokenizer=tokenizer,
                        max_length=max_length, near_dup_threshold=near_dup_threshold, source=str(path))  # fmt: skip
