"""Prompt templates for SFT: messages -> text segments, one (prompt, response) pair per turn.

A template never returns one flat string: it returns `Segment`s, so the tokenizer can encode the
prompt part and the response part of each turn separately and the loss mask is exact (no token
straddles the boundary). The same segments, minus the last answer, are what inference feeds the
model, so training and serving see identical prompt ids.

    alpaca     the Alpaca prompt as in ch07 of "Build a LLM (From Scratch)"
    docqa-ko   the Korean document-QA prompt ([질문] / [내용] / [답변]), refusal REFUSAL_KO
    docqa-en   its English counterpart ([Question] / [Context] / [Answer]), refusal REFUSAL_EN
    docqa      docqa-ko for rows with lang "ko" (or Hangul in the question), else docqa-en
    jinja      a user template from the config: a Jinja `prompt` and `response` part
    chat       the model's own chat template (tokenizer.apply_chat_template)

Templates serialise to JSON with their full text (`save_template`, `load_template`), so a run
folder renders prompts exactly as in training even if the built-in wording changes later.
`tunelab.sft.export.hf_chat_template` writes any template as an HF chat template, for exported folders.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from tunelab.data.refusals import REFUSAL_EN, REFUSAL_KO
from tunelab.errors import TunelabError

TEMPLATE_FILE = "sft_template.json"  # name of the saved template inside a run folder

ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
ALPACA_PROMPT = (
    "{% if turn == 0 %}{{ system }}{% endif %}"
    "\n\n### Instruction:\n{{ instruction if instruction is defined else content }}"
    "{% if input is defined and input %}\n\n### Input:\n{{ input }}{% endif %}"
    "\n\n### Response:\n"
)
DOCQA_KO_PROMPT = (
    "아래 [내용]을 참고해서 [질문]에 대해 답변해주세요. "
    f'만약 질문에 답변할 수 없으면 "{REFUSAL_KO}"로 대답하세요.\n'
    "[질문]\n{{ question }}\n[내용]\n{{ context }}\n[답변]\n"
)
DOCQA_EN_PROMPT = (
    "Answer the [Question] using the [Context] below. "
    f'If the question cannot be answered from the context, reply "{REFUSAL_EN}"\n'
    "[Question]\n{{ question }}\n[Context]\n{{ context }}\n[Answer]\n"
)
DOCQA_KO_STOP = ("\n[질문]", "\n[내용]", "\n[답변]")
DOCQA_EN_STOP = ("\n[Question]", "\n[Context]", "\n[Answer]")

_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined,  # a misspelt field is an error, not an empty string
    keep_trailing_newline=True,  # else Jinja drops a final newline: "[답변]\n" would lose it
    autoescape=False,
)


@dataclass(frozen=True)
class Segment:
    """One turn: `prompt` is not trained (unless train_on_prompt), `response` is.

    response is None for the open turn at inference. add_eos: append the tokenizer's EOS id
    after the response (text templates); False when the response already ends with the
    template's own end-of-turn token (chat templates).
    """

    prompt: str
    response: str | None
    add_eos: bool = True


def conversation(messages: list[dict]) -> tuple[str | None, list[tuple[dict, dict | None]]]:
    """Split messages into (system text or None, [(user, assistant or None), ...]).

    >>> conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    (None, [({'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'})])
    """
    system = None
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    pairs = []
    for i in range(0, len(messages), 2):
        user = messages[i]
        answer = messages[i + 1] if i + 1 < len(messages) else None
        assert user["role"] == "user", f"expected a user message, got {user['role']}"
        assert answer is None or answer["role"] == "assistant", "expected an assistant message"
        pairs.append((user, answer))
    return system, pairs


def _compile(source: str, what: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TunelabError(f"{what}: Jinja syntax error at line {e.lineno}: {e.message}") from e


@dataclass
class TextTemplate:
    """A plain-text template: Jinja `prompt` and `response` parts rendered per turn.

    Variables: the row's prompt-side fields (instruction, input, question, context, lang,
    prompt), `content` (the user text; in `response`, the assistant text), `system` (the
    system message, else this template's default) and `turn` (0, 1, ...).
    """

    name: str
    prompt: str
    response: str = "{{ content }}"
    system: str = ""
    stop: list[str] = field(default_factory=list)
    multi_turn: bool = True

    def __post_init__(self):
        self._prompt = _compile(self.prompt, f"template '{self.name}' prompt")
        self._response = _compile(self.response, f"template '{self.name}' response")

    def _render(self, tpl: jinja2.Template, variables: dict, where: str) -> str:
        try:
            return tpl.render(**variables)
        except jinja2.UndefinedError as e:
            given = sorted(k for k in variables if k not in ("turn", "system"))
            raise TunelabError(
                f"{where + ': ' if where else ''}template '{self.name}': {e.message}; "
                f"this row provides {given}"
            ) from e

    def render(self, messages: list[dict], tokenizer=None, where: str = "") -> list[Segment]:
        """Segments of a conversation; the tokenizer is not needed (kept for one signature).

        >>> t = build_template("docqa-en")
        >>> seg, = t.render([{"role": "user", "content": "", "fields": {"question": "Q?",
        ...     "context": "C."}}, {"role": "assistant", "content": "A."}])
        >>> seg.prompt.endswith("[Question]\\nQ?\\n[Context]\\nC.\\n[Answer]\\n"), seg.response
        (True, 'A.')
        """
        system, pairs = conversation(messages)
        if not self.multi_turn and len(pairs) > 1:
            raise TunelabError(
                f"{where + ': ' if where else ''}template '{self.name}' takes one question per "
                f"row, this row has {len(pairs)} user turns"
            )
        segments = []
        for turn, (user, answer) in enumerate(pairs):
            variables = {**user.get("fields", {}), "content": user["content"],
                         "system": self.system if system is None else system, "turn": turn}
            prompt = self._render(self._prompt, variables, where)
            response = None
            if answer is not None:
                variables = {**variables, "content": answer["content"]}
                response = self._render(self._response, variables, where)
            segments.append(Segment(prompt, response, add_eos=True))
        return segments

    def stop_strings(self, tokenizer=None) -> list[str]:
        """Strings that end a generated answer besides EOS (the next section's header)."""
        return list(self.stop)

    def to_dict(self) -> dict:
        return {"type": "text", **asdict(self)}


def _special_strings(tokenizer) -> list[str]:
    """Text of every special added token (ChatML's <|im_end|>, Gemma's <end_of_turn>, ...)."""
    return [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]


def _end_of_turn(text: str, content: str, tokenizer) -> int | None:
    """Index just past the first special token after the answer in `text`, or None.

    >>> class T: added_tokens_decoder = {2: type("A", (), {"content": "<|im_end|>", "special": True})}
    >>> _end_of_turn("Paris<|im_end|>\\n", "Paris", T())
    15
    """
    start = text.rfind(content.strip())
    start = 0 if start < 0 else start + len(content.strip())
    hits = [(i, i + len(s)) for s in _special_strings(tokenizer) if (i := text.find(s, start)) >= 0]
    return min(hits)[1] if hits else None


@dataclass
class ChatTemplate:
    """The model's own chat template, cut into segments by rendering growing prefixes.

    The prompt of turn i is what the template adds up to its generation prompt; the response
    is the answer plus the template's end-of-turn token (trained; text after it, such as
    ChatML's newline, goes to the next prompt). `system` is inserted when a conversation has no
    system message (many templates add their own default otherwise, e.g. SmolLM2). With
    `user_template` (a TextTemplate), user turns show that template's prompt part instead of
    the plain user text, e.g. the docqa-ko instruction inside the chat format.
    """

    chat_template: str
    system: str | None = None
    user_template: TextTemplate | None = None
    name: str = "chat"

    def _messages(self, messages: list[dict], where: str) -> list[dict]:
        out = []
        for m in messages:
            content = m["content"]
            if self.user_template is not None and m["role"] == "user":
                seg = self.user_template.render([m], where=where)[0]
                content = seg.prompt.rstrip("\n")
            out.append({"role": m["role"], "content": content})
        if self.system is not None and (not out or out[0]["role"] != "system"):
            out.insert(0, {"role": "system", "content": self.system})
        return out

    def render(self, messages: list[dict], tokenizer, where: str = "") -> list[Segment]:
        """Segments of a conversation rendered by the chat template (needs the tokenizer)."""
        msgs = self._messages(messages, where)

        def text(n: int, gen: bool) -> str:
            return tokenizer.apply_chat_template(
                msgs[:n], chat_template=self.chat_template, tokenize=False,
                add_generation_prompt=gen,
            )

        segments, done = [], ""
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before, after = text(i, True), text(i + 1, False)
            self._check_prefix(done, before, after, where)
            full = after[len(before):]
            cut = _end_of_turn(full, m["content"], tokenizer)
            response = full if cut is None else full[:cut]
            segments.append(Segment(before[len(done):], response, add_eos=cut is None))
            done = before + response
        if msgs[-1]["role"] != "assistant":
            before = text(len(msgs), True)
            self._check_prefix(done, before, before, where)
            segments.append(Segment(before[len(done):], None, add_eos=False))
        return segments

    def _check_prefix(self, done: str, before: str, after: str, where: str) -> None:
        if not (before.startswith(done) and after.startswith(before)):
            raise TunelabError(
                f"{where + ': ' if where else ''}the model's chat template rewrites earlier turns "
                "when a message is added (e.g. it strips reasoning from past answers), so the "
                "prompt seen in training would differ from inference; use a text template "
                "(alpaca, docqa-*, jinja) or a template without that behaviour"
            )

    def stop_strings(self, tokenizer) -> list[str]:
        """The end-of-turn token string, found by rendering a one-turn conversation."""
        plain = ChatTemplate(self.chat_template, system=self.system)  # no user_template fields
        seg = plain.render([{"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello"}], tokenizer)[0]
        return [] if seg.add_eos else [seg.response[seg.response.rfind("Hello") + 5:]]

    def to_dict(self) -> dict:
        return {"type": "chat", "chat_template": self.chat_template, "system": self.system,
                "user_template": None if self.user_template is None else self.user_template.to_dict()}


Template = TextTemplate | ChatTemplate

BUILTIN = {
    "alpaca": dict(prompt=ALPACA_PROMPT, system=ALPACA_SYSTEM,
                   stop=["\n\n### Instruction:", "\n\n### Input:", "\n\n### Response:"]),
    "docqa-ko": dict(prompt=DOCQA_KO_PROMPT, stop=list(DOCQA_KO_STOP), multi_turn=False),
    "docqa-en": dict(prompt=DOCQA_EN_PROMPT, stop=list(DOCQA_EN_STOP), multi_turn=False),
    "docqa": dict(
        prompt=f"{{% if lang == 'ko' %}}{DOCQA_KO_PROMPT}{{% else %}}{DOCQA_EN_PROMPT}{{% endif %}}",
        stop=list(DOCQA_KO_STOP + DOCQA_EN_STOP), multi_turn=False),
}
NAMES = ("chat", *BUILTIN, "jinja")


def build_template(
    name: str,
    tokenizer=None,
    *,
    prompt: str | None = None,
    response: str | None = None,
    system: str | None = None,
    stop: list[str] | None = None,
    user_template: str | None = None,
) -> Template:
    """Build a template from plain arguments (the config's `template` section).

    name: chat | alpaca | docqa | docqa-ko | docqa-en | jinja. `chat` needs the tokenizer;
    `jinja` needs `prompt` (and optionally `response`, default "{{ content }}").

    >>> build_template("jinja", prompt="Q: {{ content }}\\nA: ").render(
    ...     [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    [Segment(prompt='Q: 2+2?\\nA: ', response='4', add_eos=True)]
    """
    if name == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise TunelabError(
                "template 'chat': the model's tokenizer has no chat template; "
                f"use one of {', '.join(NAMES[1:])}"
            )
        chat = tokenizer.chat_template
        if isinstance(chat, dict):  # several named templates: the default one
            chat = chat.get("default") or next(iter(chat.values()))
        inner = None if user_template is None else build_template(user_template)
        if inner is not None and not isinstance(inner, TextTemplate):
            raise TunelabError("template.user_template must name a text template, not 'chat'")
        return ChatTemplate(chat, system=system, user_template=inner)
    if name == "jinja":
        if not prompt:
            raise TunelabError("template 'jinja' needs a 'prompt' (a Jinja string)")
        return TextTemplate("jinja", prompt, response or "{{ content }}", system or "", list(stop or []))
    if name not in BUILTIN:
        close = difflib.get_close_matches(name, NAMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TunelabError(f"unknown template '{name}'{hint}; expected one of {', '.join(NAMES)}")
    spec = dict(BUILTIN[name])
    if system is not None:
        spec["system"] = system
    if stop is not None:
        spec["stop"] = list(stop)
    return TextTemplate(name, **spec)


def template_from_dict(d: dict) -> Template:
    """Inverse of `to_dict` (a saved template, reloaded with its exact text)."""
    d = dict(d)
    kind = d.pop("type", None)
    if kind == "text":
        return TextTemplate(**d)
    if kind == "chat":
        inner = d.get("user_template")
        return ChatTemplate(d["chat_template"], system=d.get("system"),
                            user_template=None if inner is None else template_from_dict(inner))
    raise TunelabError(f"saved template has unknown type {kind!r} (expected 'text' or 'chat')")


def save_template(template: Template, path: str | Path) -> Path:
    """Write the template as JSON (UTF-8, Korean kept readable); returns the path."""
    path = Path(path)
    text = json.dumps(template.to_dict(), ensure_ascii=False, indent=2)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def load_template(path: str | Path) -> Template:
    """Read a template saved by `save_template` (a file, or a run folder holding TEMPLATE_FILE)."""
    path = Path(path)
    if path.is_dir():
        path = path / TEMPLATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TunelabError(
            f"{path}: no saved SFT template (was this run trained with task: sft?)"
        ) from e
    except json.JSONDecodeError as e:
        raise TunelabError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
    return template_from_dict(data)
