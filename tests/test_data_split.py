"""Splits: stratified, seeded, and no duplicate group straddles two parts."""

import random

import numpy as np
import pytest

from tunelab.data import dedup
from tunelab.data.split import assign_groups, k_folds, leaked_groups, train_validation_test
from tunelab.errors import TunelabError


@pytest.fixture(scope="module")
def data():
    rng = random.Random(3)
    vocab = ["".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(rng.randint(1, 3))) for _ in range(2000)]
    texts, labels = [], []
    for i in range(1500):
        texts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 20))))
        labels.append(["neg", "pos", "neu"][i % 3] if i % 10 else "rare")
    for _ in range(400):  # near copies, some with several members
        i = rng.randrange(1500)
        texts.append(texts[i] + rng.choice(["!", " 요", "?", "."]))
        labels.append(labels[i])
    return texts, labels


def test_no_leakage_and_stratified(data):
    texts, labels = data
    groups = dedup.near_duplicates(texts, threshold=0.7).groups
    assert (np.bincount(groups) > 1).sum() > 300  # the planted copies were grouped
    parts = train_validation_test(labels, groups, validation=0.1, test=0.2, seed=1)
    assert leaked_groups(parts, groups) == 0
    n = len(texts)
    for name, frac in (("train", 0.7), ("validation", 0.1), ("test", 0.2)):
        sel = parts == name
        assert abs(sel.sum() / n - frac) < 0.01
        for label in ("neg", "pos", "neu", "rare"):
            share_all = np.mean(np.array(labels) == label)
            share_part = np.mean(np.array(labels)[sel] == label)
            assert abs(share_part - share_all) < 0.02


def test_seeded(data):
    texts, labels = data
    groups = dedup.exact_groups(texts)
    a = train_validation_test(labels, groups, seed=5)
    assert (a == train_validation_test(labels, groups, seed=5)).all()
    assert (a != train_validation_test(labels, groups, seed=6)).any()


def test_k_folds_keep_groups(data):
    texts, labels = data
    groups = dedup.near_duplicates(texts, threshold=0.7).groups
    folds = k_folds(labels, groups, 5, seed=0)
    assert leaked_groups(folds, groups) == 0
    sizes = np.bincount(folds)
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 0.02 * len(texts)


def test_big_group_stays_whole():
    groups = np.array([0] * 30 + list(range(30, 100)))
    part = assign_groups(None, groups, [0.7, 0.1, 0.2], seed=0)
    assert len(set(part[:30].tolist())) == 1
    assert leaked_groups(part, groups) == 0


def test_bad_fractions():
    with pytest.raises(TunelabError, match="nothing to train"):
        train_validation_test(None, np.arange(10), validation=0.5, test=0.5)
    with pytest.raises(TunelabError, match="--folds"):
        k_folds(None, np.arange(10), 1)
