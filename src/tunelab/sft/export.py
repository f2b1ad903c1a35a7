"""Save a fine-tuned causal LM as folders the ecosystem loads, and load them back for tunelab.

    save_adapter(peft_model, tokenizer, template, run_dir / "adapter")    # PEFT, LoRA runs only
    save_merged(model, tokenizer, template, run_dir / "model", meta=..., generation=...)
    lm = load_sft(run_dir)                         # model/ folder: model, tokenizer, template
    export_run(run_dir, out_dir)                   # `tunelab export`: a copy of model/ (+ adapter/)

`model/` is a plain transformers folder in full precision, LoRA merged in:
`AutoModelForCausalLM.from_pretrained(model_dir)` loads it, and its tokenizer carries the run's
template as its chat template (`hf_chat_template`), so `tokenizer.apply_chat_template(messages,
add_generation_prompt=True)` gives the prompt tunelab trained on. `generation_config.json` holds
the run's decoding settings with every stop token (EOS and the template's end-of-turn token) as
`eos_token_id`, so a plain `model.generate` stops where tunelab stops. The template is also saved
as `sft_template.json`, with its full text, and `tunelab.json` says what produced the folder.

`adapter/` is PEFT's own folder: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
base), adapter_dir)`, with `base` as recorded in its adapter_config.json.
Folders are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.io_atomic import staged_dir
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
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_backbone(folder, lm_head=True).to(device).eval()
    return SftModel(model, load_tokenizer(folder), load_template(folder), meta, folder)


def export_run(run: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """`tunelab export`: RUN/model copied to OUT (an HF folder: merged, full precision), and
    RUN/adapter, when the run has one, to OUT/adapter. Works for SFT and classification runs."""
    from tunelab.data.outputs import check_folder_to_replace

    src = model_dir_of(run)
    run_folder = src.parent if src.name == "model" else src
    out_dir = check_folder_to_replace(out_dir, protect=[run_folder], force=force, marker=MODEL_META)
    adapter = src.parent / "adapter" if src.name == "model" else None
    try:
        with staged_dir(out_dir) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            if adapter is not None and (adapter / "adapter_config.json").is_file() and not (tmp / "adapter").exists():
                shutil.copytree(adapter, tmp / "adapter")
    except shutil.Error as err:  # copytree gathers the OS errors of its files into one
        first = str(err.args[0][0][2]) if err.args and err.args[0] else str(err)
        full = "No space left" in first or "Disk quota" in first
        raise TunelabError(f"--out {out_dir}: {'the disk is full' if full else 'copying failed'} ({first}); "
                           f"nothing was replaced{', free some space and export again' if full else ''}") from None
    return out_dir


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
    return head + template.chat_template
