"""An Ollama `Modelfile` for a GGUF export: the run's prompt format as a Go template, its stops.

    text = modelfile("assistant-f16.gguf", template, tokenizer, generation, hf_chat_template(template, tokenizer))
    # ollama create assistant -f Modelfile && ollama run assistant

The TEMPLATE is not translated from Jinja by hand: the exported HF chat template (the one in the
GGUF and in tokenizer_config) is rendered on a two-turn conversation of marker strings, with and
without a system message, and cut at the markers into a head, the text after a user message and
the text between an answer and the next user message. Those pieces become a Go template over
Ollama's `.Messages`, checked to reproduce both renderings; a template that cannot be cut so
(turns written differently) gets a comment instead of a wrong TEMPLATE. What the template writes
after an answer (EOS for text templates, `<|im_end|>` for ChatML) comes before the next user
message, so past answers end with the token the model was trained to emit. PARAMETER stop lists
EOS, the end-of-turn token and the template's stop strings; decoding settings come from the run
(greedy runs get temperature 0). Document-QA templates read `question` and `context`: the
question is the user message and the document the system message. BOS is left to llama.cpp,
which adds it when the GGUF says so.
"""

from __future__ import annotations

import json
import re

from tunelab.errors import TunelabError

SYSTEM, USER, ANSWER = "\x00TUNELAB-SYSTEM\x00", "\x00TUNELAB-USER\x00", "\x00TUNELAB-ANSWER\x00"


def _render(tokenizer, chat_template: str, system: bool, turns: int = 2, answer_last: bool = True) -> str:
    """The exported template on `turns` marker turns (the system marker also as docqa's context)."""
    user = {"role": "user", "content": USER, "question": USER, "instruction": USER, **({"context": SYSTEM} if system else {})}
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    for _ in range(turns):
        messages += [dict(user), {"role": "assistant", "content": ANSWER}]
    if not answer_last:
        messages.pop()
    return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=not answer_last)


def _pieces(text: str) -> list[str]:
    """The text between the user and answer markers: [head, user->answer, answer->user, ...]."""
    return re.split(f"{USER}|{ANSWER}", text)


def _go(text: str, sys: str = "{{ $sys }}") -> str:
    """Literal text for a Go template inside TEMPLATE \"\"\"...\"\"\": the system marker becomes
    `sys`; a "{{" or a triple quote is written as a Go string action instead of as text."""
    for bad in ("{{", '"""'):
        text = text.replace(bad, "\x01" + json.dumps(bad) + "\x02")
    return text.replace("\x01", "{{ ").replace("\x02", " }}").replace(SYSTEM, sys)


def go_template(tokenizer, chat_template: str, strip_bos: str | None = None) -> str:
    """A Go template over Ollama's `.Messages` that renders as `chat_template` does, with and
    without a system message; a TunelabError says why when the template has no such form.

    Shape: a head (with the system text, or the template's own default), then per user message
    its text and the answer header, per answer its text and what separates it from the next
    user message (the end-of-turn token first). Checked by rendering markers both ways.
    """
    with_sys, plain = _pieces(_render(tokenizer, chat_template, True)), _pieces(_render(tokenizer, chat_template, False))
    if len(with_sys) != 5 or len(plain) != 5:
        raise TunelabError("the template does not show each user text and answer once")
    head, ask, between = with_sys[0], with_sys[1], with_sys[2]
    if strip_bos and head.startswith(strip_bos) and plain[0].startswith(strip_bos):  # llama.cpp adds BOS itself
        head, plain[0] = head[len(strip_bos):], plain[0][len(strip_bos):]
    nosys = [p.replace(SYSTEM, "") for p in (ask, between)]
    if with_sys[3] != ask or plain[1] != nosys[0] or plain[2] != nosys[1] or plain[3] != nosys[0]:
        raise TunelabError("the template writes later turns differently from the first")
    opened = _pieces(_render(tokenizer, chat_template, True, turns=1, answer_last=False))
    if len(opened) != 2 or not ask.startswith(opened[1]):
        raise TunelabError("the template's generation prompt is not the start of the header before a trained answer")
    prompt, rest = opened[1], ask[len(opened[1]):]  # after a user message; then before an answer
    return ("{{ $sys := .System }}{{ range .Messages }}{{ if eq .Role \"system\" }}{{ $sys = .Content }}{{ end }}{{ end }}"
            f"{{{{ if $sys }}}}{_go(head)}{{{{ else }}}}{_go(plain[0])}{{{{ end }}}}{{{{ $answered := false }}}}"
            "{{ range .Messages }}{{ if eq .Role \"user\" }}"
            f"{{{{ if $answered }}}}{_go(between)}{{{{ end }}}}{{{{ .Content }}}}{_go(prompt)}"
            f"{{{{ else if eq .Role \"assistant\" }}}}{_go(rest)}{{{{ .Content }}}}{{{{ $answered = true }}}}{{{{ end }}}}{{{{ end }}}}")


def stop_strings(template, tokenizer) -> list[str]:
    """What ends an answer: EOS, the template's end-of-turn token and its stop strings."""
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    return stops + [s for s in template.stop_strings(tokenizer) if s and s not in stops]


def _quoted(value: str) -> str:
    return f'"""{value}"""' if ("\n" in value or '"' in value) else f'"{value}"'


def modelfile(gguf_name: str, template, tokenizer, generation: dict, chat_template: str) -> str:
    """The Modelfile text: FROM the GGUF beside it, TEMPLATE (from `chat_template`, the exported
    HF template of `template`), PARAMETER stop and decoding lines."""
    from tunelab.sft.tokenize import special_prefix

    lines = [f"FROM ./{gguf_name}"]
    bos = tokenizer.bos_token if special_prefix(tokenizer) else None
    try:
        lines.append(f'TEMPLATE """{go_template(tokenizer, chat_template, bos)}"""')
    except TunelabError as err:  # the GGUF is still usable; say so where the template would be
        lines.append(f"# no TEMPLATE: {err}; Ollama then uses the GGUF's own chat template, check it")
    for stop in stop_strings(template, tokenizer):
        if '"""' in stop:
            raise TunelabError(f"stop string {stop!r} holds a triple quote, which a Modelfile cannot quote")
        lines.append(f"PARAMETER stop {_quoted(stop)}")
    if generation.get("do_sample"):
        lines += [f"PARAMETER temperature {generation['temperature']}", f"PARAMETER top_p {generation['top_p']}"]
    else:
        lines.append("PARAMETER temperature 0")
    lines.append(f"PARAMETER num_predict {generation['max_new_tokens']}")
    return "\n".join(lines) + "\n"
