"""Compare two runs of the same sweep cell by cell (e.g. the H100 run against the 2-core CPU run).

    .venv/bin/python bench/compare_sweeps.py docs/seven-questions/results.csv \
        docs/seven-questions/cpu/results.csv --names GPU CPU

Prints a markdown table: per cell, mean ± std of test accuracy over seeds in each run, the
difference of the means, how many seeds gave the very same test accuracy, and the mean training
seconds in each run. Then, per question and dataset, whether both runs rank the same variant first.
Cells present in only one file are listed, not compared.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict


def read(path: str) -> dict[str, dict]:
    """cell -> {group, dataset, variant, test: {seed: acc}, seconds: [..]} from a sweep results.csv."""
    cells: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            cell = cells.setdefault(row["cell"], {"group": row["group"], "dataset": row["dataset"], "variant": row["variant"], "test": {}, "seconds": []})
            if row["test_accuracy"]:
                cell["test"][row["seed"]] = float(row["test_accuracy"])
            if row["train_seconds"]:
                cell["seconds"].append(float(row["train_seconds"]))
    return cells


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * 100:.2f} ± {sd * 100:.2f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--names", nargs=2, default=["first", "second"])
    args = p.parse_args(argv)
    first, second = read(args.first), read(args.second)
    n1, n2 = args.names
    both = [c for c in first if c in second]
    print(f"| question | dataset | variant | {n1} test % | {n2} test % | difference pp | same per seed | {n1} train s | {n2} train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    diffs = []
    for c in both:
        x, y = first[c], second[c]
        seeds = sorted(set(x["test"]) & set(y["test"]))
        same = sum(x["test"][s] == y["test"][s] for s in seeds)
        d = (statistics.mean(y["test"].values()) - statistics.mean(x["test"].values())) * 100 if x["test"] and y["test"] else float("nan")
        diffs.append(abs(d))
        print(f"| {x['group']} | {x['dataset']} | {x['variant']} | {mean_std(list(x['test'].values()))} | {mean_std(list(y['test'].values()))} | "
              f"{d:+.2f} | {same}/{len(seeds)} | {statistics.mean(x['seconds']):.0f} | {statistics.mean(y['seconds']):.0f} |")
    if diffs:
        print(f"\n{len(both)} cells in both; |difference of means|: median {statistics.median(diffs):.2f} pp, max {max(diffs):.2f} pp")
    only = sorted(set(first) ^ set(second))
    if only:
        print(f"in one file only: {', '.join(only)}")

    groups: dict[tuple, list[str]] = defaultdict(list)
    for c in both:
        groups[(first[c]["group"], first[c]["dataset"])].append(c)
    print()
    for (group, dataset), cs in groups.items():
        best = [max(cs, key=lambda c, run=run: statistics.mean(run[c]["test"].values())) for run in (first, second)]
        verdict = "same" if best[0] == best[1] else "differs"
        print(f"- {group} / {dataset}: best by mean test accuracy {n1} {first[best[0]]['variant']}, {n2} {second[best[1]]['variant']} ({verdict})")


if __name__ == "__main__":
    main()
