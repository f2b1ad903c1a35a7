"""Pack installed tunelab assets into parts small enough to carry to the GPU machine.

    .venv/bin/python bench/device_assets.py --out .device-carry/stage \
        --models smollm2-135m-instruct gemma3-270m mpnet-base minilm-l6 \
        --datasets sms-spam tweet-sentiment bbc-news [--wheels .device-carry/whl]

The device machine has no model weights and takes at most 64 MiB per call, so real-weight runs
there (bench/device_sweep.sh) need the asset folders sent in pieces. This writes one gzip'd tar
of a TUNELAB_HOME tree (models/, datasets/, optional whl/) split into `part-NNN` files of
--part-mib each. Model weights are stored in bf16 to halve the transfer: the GPU runs train in
bf16 autocast anyway, and tunelab loads the file into fp32 master weights. On the device:

    cat parts/part-* | tar -xz -C /tmp   # gives /tmp/tunelab-home; export TUNELAB_HOME=/tmp/tunelab-home
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunelab.assets.store import asset_dir

SKIP = {"GEMMA_TERMS.html", "README.md"}  # large texts the runs never read


def copy_model_bf16(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for f in src.rglob("*"):
        if f.is_dir() or f.name in SKIP:
            continue
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix == ".safetensors":
            tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(f).items()}
            save_file(tensors, target, metadata={"format": "pt"})
        else:
            shutil.copy2(f, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--models", nargs="*", default=[])
    ap.add_argument("--datasets", nargs="*", default=[])
    ap.add_argument("--wheels", type=Path, default=None, help="folder of wheels to include as whl/")
    ap.add_argument("--part-mib", type=int, default=60)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "tunelab-home"
        for name in args.models:
            copy_model_bf16(asset_dir(name), home / "models" / name)
            print(f"model {name}: packed (bf16)")
        for name in args.datasets:
            shutil.copytree(asset_dir(name), home / "datasets" / name)
            print(f"dataset {name}: packed")
        if args.wheels:
            shutil.copytree(args.wheels, home / "whl")
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", tmp, "-cf", "-", "tunelab-home"], stdout=subprocess.PIPE)
        gz = subprocess.Popen(["gzip", "-1"], stdin=tar.stdout, stdout=subprocess.PIPE)
        subprocess.run(["split", "-b", f"{args.part_mib}M", "-d", "-a", "3", "-", str(args.out / "part-")],
                       stdin=gz.stdout, check=True)
        if tar.wait() or gz.wait():
            raise SystemExit("tar/gzip failed")
    parts = sorted(args.out.iterdir())
    total = sum(p.stat().st_size for p in parts)
    print(f"{len(parts)} parts, {total / 2**20:.0f} MiB in {args.out}")


if __name__ == "__main__":
    main()
