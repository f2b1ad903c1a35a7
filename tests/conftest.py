"""Shared fixtures: a tiny Llama saved once per session and a synthetic spam CSV per test
(see helpers.py for how they are made)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import make_model_dir, synthetic_rows


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_llama(model_root) -> Path:
    return make_model_dir(model_root, "llama")


@pytest.fixture
def spam_csv(tmp_path) -> Path:
    import csv

    path = tmp_path / "messages.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(synthetic_rows(240))
    return path
