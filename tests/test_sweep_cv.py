"""k-fold cross-validation: stratified folds without overlap, fold splits, a tiny end-to-end run,
resume, and a change of the data detected."""

import argparse
import csv
from collections import Counter

import numpy as np
import pytest
from tests.helpers import base_config, read_json, synthetic_rows, write_config

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.sweep.cv import CvRows, cross_validate, fold_splits, group_codes, make_folds

SILENT = dict(log=lambda *_: None)


def _rows(n_a=31, n_b=14, n_c=5) -> CvRows:
    labels = ["a"] * n_a + ["b"] * n_b + ["c"] * n_c
    return CvRows([{"text": f"text {i}", "label": y} for i, y in enumerate(labels)], labels, list(range(len(labels))), {})


def test_folds_are_stratified_disjoint_and_complete():
    rows = _rows()
    folds = make_folds(rows, 5, seed=3)
    ids = [i for f in folds for i in f]
    assert sorted(ids) == list(range(len(rows.records)))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for label, total in Counter(rows.labels).items():
        per_fold = [sum(rows.labels[i] == label for i in f) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == total
    assert make_folds(rows, 5, seed=3) == folds
    assert make_folds(rows, 5, seed=4) != folds


def test_folds_are_the_folds_of_data_split():
    """`tunelab cv` and `tunelab data split --folds` deal the same rows into the same folds."""
    from tunelab.data.split import k_folds

    rows = _rows()
    part = k_folds(rows.labels, group_codes(rows.groups), 5, seed=3)
    assert [sorted(f) for f in make_folds(rows, 5, seed=3)] == [sorted(np.flatnonzero(part == i).tolist()) for i in range(5)]


def test_groups_stay_in_one_fold():
    rows = _rows()
    rows.groups = [i // 4 for i in range(len(rows.records))]  # runs of four rows share a group
    folds = make_folds(rows, 3, seed=0)
    for i, fold in enumerate(folds):
        train, val, test = fold_splits(rows, folds, i, 0.2, seed=0)
        sides = [{rows.groups[j] for j in s} for s in (train, val, test)]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])


def test_fold_splits_hold_out_each_fold_once():
    rows = _rows()
    folds = make_folds(rows, 5, seed=0)
    tested = []
    for i in range(5):
        train, val, test = fold_splits(rows, folds, i, 0.1, seed=0)
        sets = [set(s) for s in (train, val, test)]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        assert len(train) + len(val) + len(test) == len(rows.records) and len(val) >= 3
        tested += test
    assert sorted(tested) == list(range(len(rows.records)))


def test_too_few_examples_per_class():
    with pytest.raises(TunelabError, match="class 'c' has only 5 example.*6 folds"):
        make_folds(_rows(), 6, seed=0)


def test_tiny_cv_end_to_end_resume_and_change(tmp_path, spam_csv, tiny_llama, capsys):
    from tunelab.commands import cv as command

    cfg_path = write_config(tmp_path / "c.yaml", base_config(spam_csv, tiny_llama, tmp_path / "run", max_steps=3, eval_every=3))
    out = tmp_path / "cv"
    result = cross_validate(load_config(cfg_path), 3, out, isolate=False, source=str(cfg_path), **SILENT)
    assert result["finished_folds"] == 3 and len(result["outcome"].ran) == 3
    saved = read_json(out / "cv_results.json")
    assert [f["fold"] for f in saved["per_fold"]] == [0, 1, 2]
    assert saved["pooled_test"]["examples"] == 240  # every example tested exactly once
    accs = [f["test_accuracy"] for f in saved["per_fold"]]
    assert saved["mean_std"]["test_accuracy"]["mean"] == pytest.approx(sum(accs) / 3)
    for i in range(3):
        report = read_json(out / "runs" / f"fold-{i}" / "data_report.json")
        assert report["sizes"]["test"] == 80 and report["sizes"]["validation"] == 16  # 10 % of the 160 other rows
    assert len((out / "results.csv").read_text().splitlines()) == 4

    # Again: nothing reruns (the command prints the table).
    parser = argparse.ArgumentParser()
    command.configure(parser)
    assert command.run(parser.parse_args([str(cfg_path), "--folds", "3", "--output-dir", str(out)])) == 0
    printed = capsys.readouterr().out
    assert "3 done, 0 to resume, 0 new" in printed and "mean ± std over 3 folds" in printed

    # Different data under the same file name: detected, not mixed.
    with open(spam_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(synthetic_rows(240, seed=1))
    with pytest.raises(TunelabError, match="its input data changed"):
        cross_validate(load_config(cfg_path), 3, out, isolate=False, **SILENT)
