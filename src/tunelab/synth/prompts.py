"""The synth YAML config and the chat messages a teacher receives.

    cfg = load_synth_config("configs/synth/docqa-ko.yaml", ["teacher.batch_size=2"])
    messages = question_messages(cfg, chunk_text)      # system, few-shot turns, the request

Sections: `teacher` (which model and how it generates), `chunking`, `questions` and `answers`
(a system prompt, a Jinja prompt and few-shot examples each), `unanswerable` and `filters`.
Unknown keys are errors naming the key and the closest valid one. `prompt_version` is written
into every output row; bump it when the wording changes (the cache keys on the full prompt
anyway, so changed prompts are never served stale replies).

Few-shot examples become earlier chat turns: the user turn is the prompt rendered with the
example's context, the assistant turn the example's questions as a numbered list (or its
answer), which is the reply format the parser expects first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.config import apply_overrides, explain_errors, read_yaml
from tunelab.data.refusals import REFUSAL_EN, REFUSAL_KO
from tunelab.errors import TunelabError

REFUSALS = {"ko": REFUSAL_KO, "en": REFUSAL_EN}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TeacherConfig(Section):
    kind: Literal["local", "openai"] = Field("local", description="local: a causal LM loaded in this process; openai: an OpenAI-compatible chat-completions endpoint whose base URL and key come from TUNELAB_TEACHER_BASE_URL and TUNELAB_TEACHER_API_KEY (needs --allow-remote).")
    model: Optional[str] = Field(None, description="local: asset:NAME or a model folder (default: the strongest installed instruct asset); openai: the model name the endpoint serves (required).")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (reproducible); a little (0.3) gives more varied questions.")
    max_new_tokens: int = Field(256, ge=8, description="Longest reply, in tokens.")
    batch_size: int = Field(4, ge=1, description="local: prompts generated together in one batch.")
    concurrency: int = Field(4, ge=1, le=64, description="openai: requests in flight at once.")
    timeout: float = Field(120.0, gt=0, description="openai: seconds to wait for one reply.")
    retries: int = Field(5, ge=0, description="openai: retries on HTTP 429, 5xx, timeouts and dropped connections.")
    retry_base_seconds: float = Field(1.0, ge=0, description="openai: first backoff; doubled after each retry (with jitter), capped at 60 s; a Retry-After header wins.")
    seed: int = Field(0, description="Sampling seed (when temperature > 0).")
    constrained: bool = Field(True, description="local: constrained decoding, so every reply has the shape the parsers read (a numbered list of questions ending in '?', Korean ones with an interrogative ending; a one-line answer); false: free generation.")

    @model_validator(mode="after")
    def _remote_needs_model(self) -> TeacherConfig:
        if self.kind == "openai" and not self.model:
            raise ValueError("teacher.model: the model name is required for kind openai")
        return self


class ChunkingConfig(Section):
    max_chars: int = Field(1200, ge=100, description="Longest chunk in characters (a context of a training row).")
    overlap: int = Field(150, ge=0, description="Characters of whole sentences repeated from the end of the previous chunk.")
    min_chars: int = Field(80, ge=1, description="Shorter chunks are dropped (lone headings, page numbers).")

    @model_validator(mode="after")
    def _overlap_fits(self) -> ChunkingConfig:
        if self.overlap >= self.max_chars // 2:
            raise ValueError("chunking.overlap must be less than half of chunking.max_chars")
        return self


class QuestionExample(Section):
    context: str = Field(..., description="An example passage.")
    questions: list[str] = Field(..., min_length=1, description="Good questions about it.")


class AnswerExample(Section):
    context: str = Field(..., description="An example passage.")
    question: str = Field(..., description="A question about it.")
    answer: str = Field(..., description="The grounded answer (or the refusal).")


class QuestionsConfig(Section):
    per_chunk: int = Field(3, ge=1, le=20, description="Questions asked for per chunk.")
    system: str = Field(..., description="System prompt for writing questions.")
    prompt: str = Field(..., description="Jinja user prompt; variables: context, n, lang.")
    examples: list[QuestionExample] = Field(default_factory=list, description="Few-shot examples (earlier chat turns).")


class AnswersConfig(Section):
    system: str = Field(..., description="System prompt for answering from the context only.")
    prompt: str = Field(..., description="Jinja user prompt; variables: context, question, refusal, lang.")
    examples: list[AnswerExample] = Field(default_factory=list, description="Few-shot examples (earlier chat turns).")


class UnanswerableConfig(Section):
    share: float = Field(0.25, ge=0.0, le=1.0, description="Unanswerable rows per kept answerable row: a kept question paired with an unrelated chunk, answered with the refusal.")
    max_overlap: float = Field(0.25, ge=0.0, le=1.0, description="Most share of the question's content words (Hangul: syllable bigrams) that the unrelated chunk may contain.")


class FiltersConfig(Section):
    min_question_chars: int = Field(8, ge=1, description="Shorter questions are dropped.")
    max_question_chars: int = Field(250, ge=1, description="Longer questions are dropped.")
    min_answer_chars: int = Field(1, ge=1, description="Shorter answers are dropped.")
    max_answer_chars: int = Field(500, ge=1, description="Longer answers are dropped.")
    min_script_share: float = Field(0.6, ge=0.0, le=1.0, description="Least share of letters in the language's script (Hangul for ko, Latin for en) in questions, and in answers with 8 letters or more.")
    min_support: float = Field(0.7, ge=0.0, le=1.0, description="Least share of what the answer adds to the question (character bigrams within words) found in the chunk.")
    min_relevance: float = Field(0.3, ge=0.0, le=1.0, description="Least share of the question's content words (Hangul: syllable bigrams) in the chunk sentence the answer comes from (0: off). Drops grounded answers to another question: the chunk's heading, another paragraph.")
    near_dup_threshold: float = Field(0.8, ge=0.0, le=1.0, description="Jaccard similarity at which two questions are near duplicates (0: exact duplicates only).")


class SynthConfig(Section):
    lang: Literal["ko", "en"] = Field(..., description="Language of the documents and of the generated rows.")
    prompt_version: str = Field(..., min_length=1, description="Written into every row; bump it when prompts change.")
    refusal: Optional[str] = Field(None, description="Answer of unanswerable rows (default: the SFT template's refusal for the language).")
    seed: int = Field(0, description="Seed for choosing and pairing unanswerable rows.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Which model writes questions and answers.")
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig, description="How documents are cut.")
    questions: QuestionsConfig
    answers: AnswersConfig
    unanswerable: UnanswerableConfig = Field(default_factory=UnanswerableConfig, description="Rows whose answer is the refusal.")
    filters: FiltersConfig = Field(default_factory=FiltersConfig, description="Checks every generated item must pass.")

    @property
    def refusal_text(self) -> str:
        return self.refusal or REFUSALS[self.lang]


def validate_synth_dict(raw: dict, source: str = "") -> SynthConfig:
    try:
        cfg = SynthConfig.model_validate(raw)
    except ValidationError as err:
        raise TunelabError(f"invalid synth config {source}:\n  " + "\n  ".join(explain_errors(err, SynthConfig))) from None
    question_messages(cfg, "...")  # a misspelt variable fails now, not after an hour of generation
    answer_messages(cfg, "...", "...")
    return cfg


def load_synth_config(path: str | Path, overrides: list[str] | None = None) -> SynthConfig:
    """Read, override (`teacher.batch_size=2`) and check a synth YAML config."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_synth_dict(raw, source=f"in {path}")


# --- messages ------------------------------------------------------------------------------------

_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def _compile(source: str, what: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TunelabError(f"{what}: Jinja syntax error at line {e.lineno}: {e.message}") from None


def _render(source: str, what: str, **variables) -> str:
    try:
        return _compile(source, what).render(**variables).strip()
    except jinja2.UndefinedError as e:
        raise TunelabError(f"{what}: {e.message}; variables here: {', '.join(sorted(variables))}") from None


def numbered(items: list[str]) -> str:
    """The reply format the question parser reads first.

    >>> numbered(["a?", "b?"])
    '1. a?\\n2. b?'
    """
    return "\n".join(f"{i}. {q}" for i, q in enumerate(items, 1))


def question_messages(cfg: SynthConfig, context: str) -> list[dict]:
    """Chat messages asking for `questions.per_chunk` questions about `context`."""
    q = cfg.questions
    messages = [{"role": "system", "content": q.system.strip()}]
    for ex in q.examples:
        messages.append({"role": "user", "content": _render(q.prompt, "questions.prompt", context=ex.context.strip(), n=len(ex.questions), lang=cfg.lang)})
        messages.append({"role": "assistant", "content": numbered(ex.questions)})
    messages.append({"role": "user", "content": _render(q.prompt, "questions.prompt", context=context, n=q.per_chunk, lang=cfg.lang)})
    return messages


def answer_messages(cfg: SynthConfig, context: str, question: str) -> list[dict]:
    """Chat messages asking for a grounded answer to `question` from `context` only."""
    a = cfg.answers
    messages = [{"role": "system", "content": _render(a.system, "answers.system", refusal=cfg.refusal_text, lang=cfg.lang)}]
    for ex in a.examples:
        messages.append({"role": "user", "content": _render(a.prompt, "answers.prompt", context=ex.context.strip(), question=ex.question.strip(), refusal=cfg.refusal_text, lang=cfg.lang)})
        messages.append({"role": "assistant", "content": ex.answer.strip()})
    messages.append({"role": "user", "content": _render(a.prompt, "answers.prompt", context=context, question=question, refusal=cfg.refusal_text, lang=cfg.lang)})
    return messages
