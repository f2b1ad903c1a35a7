"""Request bodies of the routes, as pydantic models: the OpenAI shapes (unknown fields such as
`user` or `logit_bias` are accepted and ignored, as clients send them), checked on arrival so a
bad value is a 400 naming the field."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, Field, field_validator

Stop = Union[str, list[str], None]


class ClassifyRequest(BaseModel):
    model: str | None = None
    input: Union[str, list[str]] = Field(description="a text, or a list of texts")

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class Decoding(BaseModel):
    """The decoding fields both generation routes share; None = the run's own setting."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Stop = None
    seed: int | None = None
    n: int = 1
    stream: bool = False

    @field_validator("n")
    @classmethod
    def _one(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is supported (got {n}); send several requests instead")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: Stop) -> Stop:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 stop strings, none empty")
        return stop

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(Decoding):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Decoding):
    prompt: Union[str, list[str]]

    @field_validator("prompt")
    @classmethod
    def _single(cls, prompt):
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("one prompt per request (a list of exactly one string)")
        return prompt

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
