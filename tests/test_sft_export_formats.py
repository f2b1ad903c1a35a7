"""`tunelab export` formats: bf16 folders, the exported chat template's stop token, GGUF round trips
through tunelab's own GGUF import, the Ollama Modelfile, the model card, file modes, bad flags.

Tiny random-init decoders (2 layers, hidden 32) of each family tunelab ships, with the byte-level
ChatML tokenizer (Llama, Qwen2) or the Gemma-style SentencePiece tokenizer (Gemma 3) of helpers.py.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from tests.helpers import one_thread, read_json, tiny_config, tiny_model, tiny_sentencepiece_tokenizer, tiny_tokenizer, write_config

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.sft.export import export_run, hf_chat_template, save_merged
from tunelab.sft.templates import build_template
from tunelab.sft.tokenize import encode, encode_prompt, tokenize_messages

GENERATION = {"max_new_tokens": 8, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 1, "max_rows": 2}
QUESTION = [{"role": "user", "content": "The capital of France is Paris. 보험금 청구는?"}]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("export-formats")


@pytest.fixture(scope="module")
def sft_run(root):
    """A real tiny LoRA SFT run (docqa template, max_length 160): config, data report, summary."""
    from tunelab.config import load_config
    from tunelab.sft.run import train_sft

    tok = tiny_tokenizer()
    base = root / "tiny-chatml"
    tiny_model(tok, seed=0).save_pretrained(str(base))
    tok.save_pretrained(str(base))
    rows = [{"question": "How long is the refund period?", "context": f"The refund period is {k} days.", "answer": f"{k} days"}
            for k in range(2, 26)]
    data = root / "docqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = {"task": "sft", "output_dir": str(root / "run"),
           "data": {"train": str(data), "max_length": 160, "split": {"validation": 0.15, "test": 0.2}},
           "model": {"name": str(base), "trainable": "lora"}, "sft": {"template": "docqa", "generation": GENERATION},
           "train": {"max_steps": 3, "batch_size": 4, "lr": 2e-2, "eval_every": 3, "seed": 7}}
    train_sft(load_config(write_config(root / "run.yaml", cfg)), force=True, log=lambda *_: None)
    return root / "run"


def _weights_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def test_bf16_folder_is_half_the_size_loads_with_transformers_and_keeps_the_run_max_length(sft_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fp32, bf16 = export_run(sft_run, tmp_path / "fp32"), export_run(sft_run, tmp_path / "bf16", dtype="bf16")
    assert 0.45 < _weights_bytes(bf16) / _weights_bytes(fp32) < 0.56
    full, half = (AutoModelForCausalLM.from_pretrained(str(f)) for f in (fp32, bf16))
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    ids = torch.tensor([encode_prompt(QUESTION, build_template("chat", tiny_tokenizer()), tiny_tokenizer())])
    with torch.no_grad():
        assert torch.allclose(full(ids).logits, half(ids).logits.float(), atol=0.05)
    assert AutoTokenizer.from_pretrained(str(bf16)).model_max_length == 160  # the run's data.max_length
    assert read_json(bf16 / "adapter" / "tokenizer_config.json")["model_max_length"] == 160
    assert read_json(bf16 / "tunelab.json")["export_dtype"] == "bf16"


def test_model_card_names_base_data_licences_and_the_run_metrics(sft_run, tmp_path):
    card = (export_run(sft_run, tmp_path / "out") / "README.md").read_text(encoding="utf-8")
    summary = read_json(sft_run / "summary.json")
    assert "tiny-chatml" in card and "template `docqa`" in card and "docqa.jsonl" in card and "max length: 160" in card
    assert card.count("unknown, check") >= 2  # a local base model and local data: no licence is claimed
    assert f"| validation | loss | {summary['validation']['loss']:.4g} |" in card
    assert "rows read: 24" in card


def test_model_card_takes_licences_of_shipped_assets():
    from tunelab.sft.model_card import asset_licence

    assert asset_licence("asset:gemma3-270m") == "Gemma Terms of Use"
    assert asset_licence("asset:sms-spam") == "CC BY 4.0"
    assert asset_licence("/home/me/models/llama") == "unknown, check"


PLAIN = ("{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}assistant:\n{% endif %}")  # no end-of-turn token: tunelab trains EOS


@pytest.mark.parametrize("kind", ["alpaca", "docqa-en", "chatml", "chatml-eos-differs", "plain-chat"])
def test_exported_template_renders_the_trained_stop_token_after_every_answer(kind):
    """The HF chat template gives the training ids of a two-turn conversation, stop tokens included."""
    tok = tiny_tokenizer(eos="<|endoftext|>" if kind in ("chatml-eos-differs", "alpaca") else "<|im_end|>")
    if kind == "plain-chat":
        tok = copy.deepcopy(tok)
        tok.chat_template = PLAIN
    template = build_template(kind if kind in ("alpaca", "docqa-en") else "chat", tok)
    turns = 1 if kind == "docqa-en" else 2
    fields = {"question": "How long?", "context": "The refund period is 30 days."}
    msgs = [m for i in range(turns) for m in ({"role": "user", "content": f"Question {i}?", "fields": fields},
                                               {"role": "assistant", "content": f"Paris {i}"})]
    hf_msgs = [{k: v for k, v in {**m, **m.get("fields", {})}.items() if k != "fields"} for m in msgs]
    trained = tokenize_messages(msgs, template, tok)["input_ids"]
    exported = list(tok.apply_chat_template(hf_msgs, chat_template=hf_chat_template(template, tok), tokenize=True, return_dict=False))
    assert exported[:len(trained)] == trained
    stop = tok.convert_tokens_to_ids("<|im_end|>" if kind.startswith("chatml") else tok.eos_token)
    for i in range(turns):  # each answer is followed by the stop token, the last one included
        answer = encode(tok, f"Paris {i}" + ("\n" if kind == "plain-chat" else ""))
        after = [exported[k + len(answer)] for k in range(len(exported) - len(answer)) if exported[k:k + len(answer)] == answer]
        assert after == [stop], (i, tok.convert_ids_to_tokens(exported))


def _model_folder(root, arch: str):
    """A tunelab SFT model folder (save_merged) of a tiny random-init `arch` with the chat template."""
    from transformers import AutoModelForCausalLM

    tok = tiny_sentencepiece_tokenizer() if arch == "gemma3" else tiny_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tok))).eval()
    folder = root / f"{arch}-sft"
    save_merged(model, tok, build_template("chat", tok), folder, meta={"base_model": f"tiny-{arch}", "max_length": 96},
                generation=GENERATION)
    return folder


def _reimport(gguf_path, out):
    """The GGUF read back by tunelab's own import (what `model: FILE.gguf` does), then loaded."""
    from tunelab.assets.build import convert_gguf
    from tunelab.model.backbone import load_backbone, load_tokenizer

    convert_gguf(gguf_path, out)
    return load_backbone(out, lm_head=True).eval(), load_tokenizer(out)


def _greedy(model, ids, n: int = 12) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_gguf_f16_round_trip_gives_the_same_greedy_tokens(root, tmp_path, arch):
    from tunelab.sft.export import load_sft

    lm = load_sft(_model_folder(root, arch), device="cpu")
    out = export_run(lm.folder, tmp_path / "gguf", gguf="f16")
    gguf_file = out / f"{arch}-sft-f16.gguf"
    back, tok = _reimport(gguf_file, tmp_path / "back")
    text = "The capital of France is Paris. 보험금 청구는 ☃"
    assert tok(text)["input_ids"] == lm.tokenizer(text)["input_ids"]  # the tokenizer survives, BOS included
    assert tok.chat_template == hf_chat_template(lm.template, lm.tokenizer)
    prompt = encode_prompt(QUESTION, lm.template, lm.tokenizer)
    assert _greedy(back, prompt) == _greedy(lm.model, prompt)
    original = lm.model.state_dict()  # every weight back in its place (Llama q/k rows, Gemma norms), to f16 rounding
    for name, value in back.state_dict().items():
        assert torch.allclose(value, original[name], atol=1e-4), name
    assert read_json(out / "tunelab.json")["export_format"] == "gguf"
    with pytest.raises(TunelabError, match="GGUF export"):  # not mistaken for an HF folder
        load_sft(out)


def test_gguf_q8_0_loads_back_with_close_weights_and_is_smaller(root, tmp_path):
    from tunelab.model.backbone import load_backbone

    folder = _model_folder(root, "llama")
    f16 = export_run(folder, tmp_path / "f16", gguf="f16") / "llama-sft-f16.gguf"
    q8 = export_run(folder, tmp_path / "q8", gguf="q8_0") / "llama-sft-q8_0.gguf"
    assert q8.stat().st_size < f16.stat().st_size
    back, _ = _reimport(q8, tmp_path / "back")
    original = load_backbone(folder, lm_head=True).state_dict()
    for name, value in back.state_dict().items():
        assert torch.allclose(value, original[name], atol=2e-3), name


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def _split(name: str) -> dict:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    return {"type": "Split", "pattern": {"Regex": GGUF_PRE_TOKENIZER_SPLITS[name]}, "behavior": "Isolated"}


@pytest.mark.parametrize("steps,name", [
    ([BYTE_LEVEL], "gpt-2"),  # not "gpt2" (the tokenizer model): llama.cpp refused that, "unknown pre-tokenizer type"
    ([{"type": "Digits", "individual_digits": True}, BYTE_LEVEL], "smollm"),
    ([_split("llama-bpe"), {**BYTE_LEVEL, "use_regex": False}], "llama-bpe"),
    ([_split("qwen2"), {**BYTE_LEVEL, "use_regex": False}], "qwen2"),
])
def test_gguf_pre_tokenizer_is_spelled_as_llama_cpp_spells_it(steps, name):
    """tokenizer.ggml.pre names from llama.cpp's llama-vocab.cpp; any other name and llama.cpp
    does not load the file (bench/llamacpp_check.py runs real llama.cpp on an export)."""
    from tunelab.sft.gguf_export import _pre_tokenizer

    assert _pre_tokenizer({"pre_tokenizer": {"type": "Sequence", "pretokenizers": steps}}) == name


def test_gguf_file_of_a_gpt2_style_tokenizer_says_gpt_2(root, tmp_path):
    import gguf

    out = export_run(_model_folder(root, "llama"), tmp_path / "gguf", gguf="f16")  # (Qwen2's own tokenizer class sets its split)
    fields = gguf.GGUFReader(out / "llama-sft-f16.gguf").fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2" and fields["tokenizer.ggml.pre"].contents() == "gpt-2"


def test_modelfile_has_the_template_and_every_stop(sft_run, root, tmp_path):
    chat = (export_run(_model_folder(root, "qwen2"), tmp_path / "chat", gguf="f16") / "Modelfile").read_text(encoding="utf-8")
    assert chat.startswith("FROM ./qwen2-sft-f16.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in chat and "PARAMETER temperature 0" in chat and "PARAMETER num_predict 8" in chat
    assert "{{ .Content }}<|im_end|>\n<|im_start|>assistant\n{{ else if" in chat  # header after a user turn
    assert "{{ if $answered }}<|im_end|>\n<|im_start|>user\n{{ end }}" in chat  # a past answer ends with the stop token
    docqa = (export_run(sft_run, tmp_path / "docqa", gguf="q8_0") / "Modelfile").read_text(encoding="utf-8")
    for stop in ("<|im_end|>", "\n[Question]", "\n[Context]", "\n[Answer]", "\n[질문]"):
        assert (f'PARAMETER stop "{stop}"' if "\n" not in stop else f'PARAMETER stop """{stop}"""') in docqa
    assert "[Context]\n{{ $sys }}\n[Answer]\n" in docqa  # the document is the system message


def test_exported_files_follow_the_umask(sft_run, tmp_path):
    before = os.umask(0o027)
    try:
        folders = [export_run(sft_run, tmp_path / "hf", dtype="bf16"), export_run(sft_run, tmp_path / "gguf", gguf="f16")]
    finally:
        os.umask(before)
    for folder in folders:
        for p in [folder, *folder.rglob("*")]:
            assert p.stat().st_mode & 0o777 == (0o750 if p.is_dir() else 0o640), p
    assert (sft_run / "model" / "model.safetensors").stat().st_mode & 0o040  # the run's own weights too


def _classification_folder(root):
    from transformers import AutoModel

    from tunelab.classify.export import export_classifier
    from tunelab.classify.model import TextClassifier

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = TextClassifier(AutoModel.from_config(tiny_config("llama", len(tok))), 2, "last", True)
    folder = root / "classifier"
    export_classifier(model, tok, ["ham", "spam"], folder, extra={"max_length": 48})
    return folder


def test_classification_export_in_bf16_predicts_as_before(root, tmp_path):
    from tunelab.classify.export import load_exported

    folder = _classification_folder(root)
    out = export_run(folder, tmp_path / "bf16", dtype="bf16")
    assert (out / "README.md").is_file() and read_json(out / "tokenizer_config.json")["model_max_length"] == 48
    (full, tok, _), (half, _, _) = load_exported(folder), load_exported(out)
    ids = torch.tensor([tok("win free cash now")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(full(ids, torch.ones_like(ids)), half(ids, torch.ones_like(ids)), atol=0.05)


def test_bad_flags_name_what_is_supported_and_keep_the_old_export(root, sft_run, tmp_path, capsys):
    classifier = _classification_folder(root)
    assert main(["export", str(classifier), str(tmp_path / "x"), "--gguf", "f16"]) == 2
    err = capsys.readouterr().err
    assert "GGUF export is for SFT runs of Llama, Qwen2, Gemma 3" in err and "--dtype fp32|bf16" in err
    with pytest.raises(TunelabError, match="choose one"):
        export_run(sft_run, tmp_path / "y", dtype="bf16", gguf="q8_0")
    # an unsupported family fails inside the staged folder: the earlier export stays whole
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    gpt2 = root / "gpt2-sft"
    save_merged(AutoModelForCausalLM.from_config(tiny_config("gpt2", len(tok))), tok, build_template("chat", tok), gpt2,
                meta={"max_length": 32}, generation=GENERATION)
    out = export_run(gpt2, tmp_path / "old")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(TunelabError, match="model_type 'gpt2' is not supported; GGUF export covers Llama, Qwen2, Gemma 3"):
        export_run(gpt2, out, force=True, gguf="f16")
    assert sorted(p.name for p in out.iterdir()) == before and not list(tmp_path.glob(".tmp-*"))


def test_cli_takes_dir_positionally_or_as_out(sft_run, tmp_path, capsys):
    assert main(["export", str(sft_run), str(tmp_path / "a"), "--gguf", "q8_0"]) == 0
    assert "run-q8_0.gguf loads in llama.cpp" in capsys.readouterr().out
    assert main(["export", str(sft_run), "--out", str(tmp_path / "b"), "--dtype", "bf16"]) == 0
    assert "(bf16)" in capsys.readouterr().out
    assert main(["export", str(sft_run)]) == 2
