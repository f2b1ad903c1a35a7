"""Save a fine-tuned causal LM as folders the ecosystem loads, and load them back for tunelab.

    save_adapter(peft_model, tokenizer, template, run_dir / "adapter")    # PEFT, LoRA runs only
    save_merged(model, tokenizer, template, run_dir / "model", meta=..., generation=...)
    lm = load_sft(run_dir)                         # model/ folder: model, tokenizer, template
    export_run(run_dir, out_dir, dtype="bf16")     # `tunelab export`: model/ (+ adapter/), fp32 or bf16
    export_run(run_dir, out_dir, gguf="q8_0")      # SFT: one GGUF + Ollama Modelfile (sft/gguf_export.py)

`model/` is a plain transformers folder in full precision, LoRA merged in:
`AutoModelForCausalLM.from_pretrained(model_dir)` loads it, and its tokenizer carries the run's
template as its chat template (`hf_chat_template`), so `tokenizer.apply_chat_template(messages,
add_generation_prompt=True)` gives the prompt tunelab trained on. `generation_config.json` holds
the run's decoding settings with every stop token (EOS and the template's end-of-turn token) as
`eos_token_id`, so a plain `model.generate` stops where tunelab stops. The template is also saved
as `sft_template.json`, with its full text, and `tunelab.json` says what produced the folder.

`adapter/` is PEFT's own folder: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
base), adapter_dir)`, with `base` as recorded in its adapter_config.json.
Folders are written under a temporary name and renamed when complete, with the umask's
permissions on every file (safetensors alone would leave the weights readable by their owner only).
Every exported folder carries a model card, README.md (sft/model_card.py).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.io_atomic import set_mode_from_umask, staged_dir
from tunelab.errors import TunelabError
from tunelab.sft.templates import TEMPLATE_FILE, Template, TextTemplate, load_template, save_template
from tunelab.sft.tokenize import special_prefix
from tunelab.train.runtime import MODEL_META, model_dir_of, read_model_meta

FORMAT_VERSION = 1


def _save_tokenizer(tokenizer, template, folder: Path) -> None:
    """Tokenizer files with the run's template as the chat template (the object is not changed)."""
    before = tokenizer.chat_template
    tokenizer.chat_template = hf_chat_template(template, tokenizer)
    try:
        tokenizer.save_pretrained(str(folder))
    finally:
        tokenizer.chat_template = before


def hf_generation_config(tokenizer, template, generation: dict):
    """The run's decoding settings as a transformers GenerationConfig (stop strings left out:
    generate() needs the tokenizer passed to use them; the end-of-turn token is a stop id)."""
    from tunelab.sft.generate import generation_config, stop_token_ids

    return generation_config(
        tokenizer, stop_token_ids(template, tokenizer), max_new_tokens=generation["max_new_tokens"],
        do_sample=generation["do_sample"], temperature=generation["temperature"], top_p=generation["top_p"],
    )


def save_adapter(model, tokenizer, template, out_dir: Path) -> Path:
    """The PEFT adapter of a LoRA model, with the tokenizer and the template beside it."""
    with staged_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        _save_tokenizer(tokenizer, template, tmp)
        save_template(template, tmp / TEMPLATE_FILE)
        set_mode_from_umask(tmp)
    return Path(out_dir)


def save_merged(model, tokenizer, template, out_dir: Path, *, meta: dict, generation: dict) -> Path:
    """A full-precision transformers folder of `model` (a plain causal LM: merge LoRA first)."""
    assert not hasattr(model, "peft_config"), "merge the adapter before saving the full model"
    config = model.generation_config
    model.generation_config = hf_generation_config(tokenizer, template, generation)
    try:
        with staged_dir(out_dir) as tmp:
            model.save_pretrained(str(tmp))
            _save_tokenizer(tokenizer, template, tmp)
            save_template(template, tmp / TEMPLATE_FILE)
            info = {"format_version": FORMAT_VERSION, "task": "sft", "template": template.to_dict().get("name", "chat"),
                    "generation": generation, **meta}
            (tmp / MODEL_META).write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
            set_mode_from_umask(tmp)
    finally:
        model.generation_config = config
    return Path(out_dir)


def merge_lora(model):
    """The plain transformers model with LoRA folded into its weights (in place), or the model."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def read_meta(run: str | Path) -> dict:
    return read_model_meta(model_dir_of(run))


def is_sft_run(run: str | Path) -> bool:
    return read_meta(run).get("task") == "sft"


@dataclass
class SftModel:
    """A fine-tuned causal LM ready for generation: model (eval mode), tokenizer, template, meta."""

    model: object
    tokenizer: object
    template: object
    meta: dict
    folder: Path


def load_sft(run: str | Path, device: str | None = None) -> SftModel:
    """Load RUN/model (or an exported folder) in fp32 with its saved template."""
    import torch

    from tunelab.model.backbone import load_backbone, load_tokenizer

    folder = model_dir_of(run)
    meta = read_model_meta(folder)
    if meta.get("task") != "sft":
        raise TunelabError(f"{folder}: a {meta.get('task', 'classification')} model, not an SFT one; use `tunelab predict` for classifiers")
    if meta.get("export_format") == "gguf":
        raise TunelabError(f"{folder}: a GGUF export for llama.cpp and Ollama; use the run folder, "
                           f"or train from the file with model: {folder / meta.get('gguf', 'FILE.gguf')}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_backbone(folder, lm_head=True).to(device).eval()
    return SftModel(model, load_tokenizer(folder), load_template(folder), meta, folder)


DTYPES = ("fp32", "bf16")


def _check_flags(meta: dict, folder: Path, dtype: str, gguf: str | None) -> None:
    """Refuse export flags that do not fit the run, naming what is supported."""
    from tunelab.sft.gguf_export import FAMILY_NAMES, QUANTS

    if dtype not in DTYPES:
        raise TunelabError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if meta.get("export_format") == "gguf":
        raise TunelabError(f"{folder}: a GGUF export; export from the run folder instead")
    if gguf is None:
        return
    if gguf not in QUANTS:
        raise TunelabError(f"--gguf {gguf}: expected one of {', '.join(QUANTS)}")
    if meta.get("task") != "sft":
        raise TunelabError(f"--gguf: {folder} is a {meta.get('task', 'classification')} run; GGUF export is for SFT runs of "
                           f"{FAMILY_NAMES} decoders (llama.cpp has no classifier head); use --dtype fp32|bf16")
    if dtype != "fp32":
        raise TunelabError("--gguf and --dtype: choose one; a GGUF's precision is its --gguf type (f16 or q8_0)")


def export_run(run: str | Path, out_dir: str | Path, force: bool = False, *, dtype: str = "fp32",
               gguf: str | None = None, log=print) -> Path:
    """`tunelab export`: RUN/model as a folder at OUT, written atomically (a failure leaves any
    older OUT as it was), with a model card (README.md) and the umask's permissions on every file.

    Default: a copy of RUN/model (an HF folder; SFT: LoRA merged, the run's chat template) and
    RUN/adapter as OUT/adapter; `dtype="bf16"` stores the floating weights in bfloat16 (half the
    size). The tokenizer's model_max_length is the run's max length. `gguf="f16"|"q8_0"`: an SFT
    run as one GGUF file plus an Ollama Modelfile instead (see sft/gguf_export.py).
    """
    from tunelab.data.outputs import check_folder_to_replace
    from tunelab.sft.model_card import model_card

    src = model_dir_of(run)
    meta = read_model_meta(src)
    _check_flags(meta, src, dtype, gguf)
    run_folder = src.parent if src.name == "model" else None
    out_dir = check_folder_to_replace(out_dir, protect=[run_folder or src], force=force, marker=MODEL_META)
    name = (run_folder or src).name
    try:
        with staged_dir(out_dir) as tmp:
            if gguf is not None:
                files, usage = _write_gguf_folder(src, meta, tmp, gguf, name, log)
            else:
                files, usage = _write_hf_folder(src, meta, tmp, dtype)
            (tmp / "README.md").write_text(model_card(run_folder, meta, name=name, files=files, usage=usage), encoding="utf-8")
            set_mode_from_umask(tmp)  # safetensors writes 0600; the export is shared like any other output
    except shutil.Error as err:  # copytree gathers the OS errors of its files into one
        first = str(err.args[0][0][2]) if err.args and err.args[0] else str(err)
        full = "No space left" in first or "Disk quota" in first
        raise TunelabError(f"--out {out_dir}: {'the disk is full' if full else 'copying failed'} ({first}); "
                           f"nothing was replaced{', free some space and export again' if full else ''}") from None
    return out_dir


def _write_hf_folder(src: Path, meta: dict, tmp: Path, dtype: str) -> tuple[dict, str]:
    """RUN/model (+ RUN/adapter) copied into `tmp`, weights cast to `dtype`, max length set."""
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    adapter = src.parent / "adapter" if src.name == "model" else None
    if adapter is not None and (adapter / "adapter_config.json").is_file() and not (tmp / "adapter").exists():
        shutil.copytree(adapter, tmp / "adapter")
    if dtype == "bf16":
        _cast_weights(tmp)
    if meta.get("max_length"):
        _set_model_max_length(tmp, int(meta["max_length"]))
    info = {**meta, "export_dtype": dtype}
    (tmp / MODEL_META).write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
    files = {p.relative_to(tmp).as_posix(): "weights" if p.suffix == ".safetensors" else "config, tokenizer or tunelab sidecar"
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    if meta.get("task") == "sft":
        usage = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                 "model = AutoModelForCausalLM.from_pretrained(folder)\ntok = AutoTokenizer.from_pretrained(folder)\n"
                 "ids = tok.apply_chat_template([{\"role\": \"user\", \"content\": \"...\"}], add_generation_prompt=True, return_tensors=\"pt\")\n"
                 "print(tok.decode(model.generate(ids)[0, ids.shape[1]:], skip_special_tokens=True))\n```\n"
                 "or `tunelab generate FOLDER --prompt ...`, `tunelab serve FOLDER`.")
    else:
        usage = "```python\nimport tunelab\ntunelab.load(folder).predict([\"some text\"])\n```\nor `tunelab predict FOLDER --input texts.jsonl`."
    return files, usage


def _cast_weights(folder: Path) -> None:
    """Every safetensors file under `folder` with its floating tensors in bfloat16 (ints kept),
    and config.json's dtype saying so (transformers then loads bf16 by default)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, str(path), metadata=metadata)
    config_path = folder / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for section in (config, config.get("backbone")):  # the tunelab classifier form nests the backbone's
            if isinstance(section, dict):
                section.pop("torch_dtype", None)
                section["dtype"] = "bfloat16"
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _set_model_max_length(folder: Path, max_length: int) -> None:
    """tokenizer_config.json's model_max_length = the length the run trained on (the base's is
    often 1e30 or the model's full context), so pipelines truncate where training did."""
    for path in folder.rglob("tokenizer_config.json"):
        config = json.loads(path.read_text(encoding="utf-8"))
        config["model_max_length"] = max_length
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_gguf_folder(src: Path, meta: dict, tmp: Path, quant: str, name: str, log) -> tuple[dict, str]:
    """NAME-QUANT.gguf and an Ollama Modelfile from the merged fp32 model in `src`."""
    from tunelab.model.backbone import load_backbone, load_config_of, load_tokenizer
    from tunelab.sft.generate import decoding_settings
    from tunelab.sft.gguf_export import check_family, write_gguf
    from tunelab.sft.model_card import asset_licence
    from tunelab.sft.modelfile import modelfile

    check_family(load_config_of(src).model_type)  # an unsupported family fails before the weights are read
    model, tokenizer, template = load_backbone(src, lm_head=True).eval(), load_tokenizer(src), load_template(src)
    licence = asset_licence(meta.get("base_model"))
    gguf_name = f"{name}-{quant}.gguf"
    chat_template = hf_chat_template(template, tokenizer)
    write_gguf(model, tokenizer, template, tmp / gguf_name, chat_template=chat_template, quant=quant, name=name,
               licence=None if licence.startswith("unknown") else licence, log=log)
    generation = decoding_settings(meta.get("generation"))
    (tmp / "Modelfile").write_text(modelfile(gguf_name, template, tokenizer, generation, chat_template), encoding="utf-8")
    info = {**{k: v for k, v in meta.items() if k != "format_version"}, "export_format": "gguf", "gguf": gguf_name, "gguf_type": quant}
    (tmp / MODEL_META).write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
    files = {gguf_name: f"weights ({quant}), tokenizer and chat template, for llama.cpp and Ollama",
             "Modelfile": "Ollama: the run's prompt format (TEMPLATE) and stop strings", MODEL_META: "what produced this folder"}
    usage = (f"```bash\nllama-cli -m {gguf_name} -cnv        # llama.cpp, with the chat template inside the file\n"
             f"ollama create {name} -f Modelfile && ollama run {name}\n```\n"
             f"tunelab reads it back too: `model: {gguf_name}` in a config.")
    return files, usage


# Fields a text template may use; an HF chat message carries them as extra keys
# ({"role": "user", "question": ..., "context": ...}), since HF messages have no "fields".
FIELD_NAMES = ("instruction", "input", "question", "context", "lang", "prompt")


def _keep_whitespace(source: str) -> str:
    # HF compiles chat templates with trim_blocks and lstrip_blocks, which would eat the
    # newline after "{% endif %}" in ours; "{%+ ... +%}" turns both off for each tag.
    source = re.sub(r"\{%(?![+-])", "{%+", source)
    return re.sub(r"(?<![+-])%\}", "+%}", source)


def _set_fields(message: str) -> str:
    """Jinja that binds content/turn and each known field present on `message`."""
    sets = "".join(f"{{% if {message}['{f}'] is defined %}}{{% set {f} = {message}['{f}'] %}}{{% endif %}}"
                   for f in FIELD_NAMES)
    return f"{{% set turn = ns.turn %}}{sets}"


def _text_as_hf(t: TextTemplate, bos: bool) -> str:
    """A TextTemplate as an HF chat template: same text, EOS after each answer."""
    return (
        "{% set ns = namespace(turn=0) %}"
        f"{{% if messages[0]['role'] == 'system' %}}{{% set system = messages[0]['content'] %}}"
        f"{{% else %}}{{% set system = {json.dumps(t.system, ensure_ascii=False)} %}}{{% endif %}}"
        + ("{{ bos_token }}" if bos else "")
        + "{% for m in messages %}{% if m['role'] == 'user' %}"
        + _set_fields("m") + "{% set content = m['content'] %}" + t.prompt
        + "{% elif m['role'] == 'assistant' %}"
        + _set_fields("messages[loop.index0 - 1]") + "{% set content = m['content'] %}"
        + t.response + "{{ eos_token }}{% set ns.turn = ns.turn + 1 %}"
        + "{% endif %}{% endfor %}"
    )


def hf_chat_template(template: Template, tokenizer) -> str:
    """An HF chat template (Jinja) that renders as `template` does, for an exported model.

    `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` then gives the
    prompt text tunelab builds (for text templates the prompt already ends with the answer
    header, so add_generation_prompt changes nothing). For docqa, user messages carry
    `question` and `context` keys. The ids can still differ from tunelab's where a whole
    string tokenises differently from its segments (an answer starting mid-word).
    """
    if isinstance(template, TextTemplate):
        return _keep_whitespace(_text_as_hf(template, bos=bool(special_prefix(tokenizer))))
    head = ""
    if template.user_template is not None:
        u = template.user_template
        head += _keep_whitespace(
            "{% set ns = namespace(turn=0, msgs=[]) %}{% for m in messages %}"
            "{% if m['role'] == 'user' %}" + _set_fields("m") + "{% set content = m['content'] %}"
            f"{{% set system = {json.dumps(u.system, ensure_ascii=False)} %}}"
            "{% set rendered %}" + u.prompt + "{% endset %}"
            "{% set ns.msgs = ns.msgs + [{'role': 'user', 'content': rendered.rstrip('\\n')}] %}"
            "{% else %}{% set ns.msgs = ns.msgs + [m] %}{% endif %}{% endfor %}"
            "{% set messages = ns.msgs %}"
        )
    if template.system is not None:
        system = json.dumps(template.system, ensure_ascii=False)
        head += ("{%+ if messages[0]['role'] != 'system' +%}{%+ set messages = "
                 f"[{{'role': 'system', 'content': {system}}}] + messages +%}}{{%+ endif +%}}")
    if not template.stop_strings(tokenizer):  # no end-of-turn token after an answer: tunelab trained EOS there
        return head + _eos_after_answers(template.chat_template)
    return head + template.chat_template


def _eos_after_answers(source: str) -> str:
    """A chat template that renders as `source` with EOS after each answer's turn, where
    `ChatTemplate.render` puts it in training: after everything the template writes for that
    assistant message. `source` becomes a macro rendered on growing prefixes of the messages,
    exactly as training cuts a conversation into segments."""
    return ("{%+ macro tl_turns(messages, add_generation_prompt) +%}" + source + "{%+ endmacro +%}"
            "{%+ set tl = namespace(done='') +%}{%+ for m in messages +%}{%+ if m['role'] == 'assistant' +%}"
            "{%+ set before = tl_turns(messages[:loop.index0], true) +%}{%+ set after = tl_turns(messages[:loop.index], false) +%}"
            "{{ before[tl.done | length:] }}{{ after[before | length:] }}{{ eos_token }}{%+ set tl.done = after +%}"
            "{%+ endif +%}{%+ endfor +%}{{ tl_turns(messages, add_generation_prompt)[tl.done | length:] }}")
