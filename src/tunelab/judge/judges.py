"""The judge: a local model loaded by tunelab, or an OpenAI-compatible endpoint.

    judge = build_judge(None)                                          # strongest installed instruct asset
    judge = build_judge("runs/docqa/model", batch_size=8)               # any local model tunelab loads
    judge = build_judge("qwen2.5:7b", endpoint="http://127.0.0.1:11434/v1")   # Ollama on this machine
    judge = build_judge("gpt-x", endpoint="https://api.example.com/v1", allow_remote=True)

The judge objects are synth's teachers (`tunelab.synth.teachers`): the same batched, greedy local
generation and the same HTTP client with retries; `synth.pipeline.run_requests` drives them
through the content-keyed reply cache. Settings are deterministic by default (temperature 0,
seed 0). An endpoint on a loopback address (127.0.0.0/8, ::1, localhost: a local llama.cpp,
Ollama, vLLM or `tunelab serve`) keeps the data on this machine and needs no opt-in; any other
host needs `allow_remote`, and `describe_remote` says what will leave before anything is sent.
The endpoint's key, if any, comes from TUNELAB_JUDGE_API_KEY (never a flag: it would show in `ps`).
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlparse

from pydantic import ValidationError

from tunelab.errors import TunelabError
from tunelab.synth.prompts import TeacherConfig

API_KEY_ENV = "TUNELAB_JUDGE_API_KEY"


def is_loopback(url: str) -> bool:
    """Whether `url` points at this machine.

    >>> is_loopback("http://127.0.0.1:8080/v1"), is_loopback("http://localhost:11434/v1"), is_loopback("http://[::1]:8000")
    (True, True, True)
    >>> is_loopback("https://api.example.com/v1"), is_loopback("http://10.0.0.5:8000/v1")
    (False, False)
    """
    host = (urlparse(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_judge(model: str | None = None, *, endpoint: str | None = None, allow_remote: bool = False,
                temperature: float = 0.0, seed: int = 0, max_new_tokens: int = 96, batch_size: int = 8,
                concurrency: int = 4, timeout: float = 120.0, retries: int = 5, env: dict | None = None):
    """A judge (a synth teacher object with `id`, `kind`, `params`); see the module docstring."""
    settings = {"temperature": temperature, "seed": seed, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                "concurrency": concurrency, "timeout": timeout, "retries": retries}
    try:
        TeacherConfig(**settings)
    except ValidationError as err:
        raise TunelabError("; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in err.errors())) from None
    if endpoint:
        from tunelab.synth.teachers import EndpointTeacher

        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise TunelabError(f"--endpoint {endpoint!r} is not an http(s) URL (e.g. http://127.0.0.1:8080/v1)")
        if not model:
            raise TunelabError("--endpoint needs --judge MODEL: the model name the endpoint serves")
        if not is_loopback(endpoint) and not allow_remote:
            raise TunelabError(f"the judge endpoint {endpoint} is not on this machine: the questions, contexts and answers "
                               "would leave it. Pass --allow-remote to send them, or use a local judge (a model folder, "
                               "an asset, or a server on 127.0.0.1)")  # fmt: skip
        env = os.environ if env is None else env
        judge = EndpointTeacher(endpoint, env.get(API_KEY_ENV) or None, TeacherConfig(kind="openai", model=model, **settings))
        judge.params["seed"] = seed  # OpenAI-compatible servers take a seed; part of the cache key too
        judge.remote = not is_loopback(endpoint)
        return judge
    from tunelab.assets import resolve_model
    from tunelab.synth.teachers import PREFERRED_LOCAL, LocalTeacher, default_local_model

    try:
        spec = model or default_local_model()
    except TunelabError:
        raise TunelabError(f"no local judge is installed: run `tunelab assets install {PREFERRED_LOCAL[0]}`, pass --judge with "
                           "a model folder, or --endpoint with a server (e.g. http://127.0.0.1:11434/v1)") from None
    name = spec.removeprefix("asset:") if spec.startswith("asset:") else None  # a folder: its name (the id adds a weights fingerprint)
    judge = LocalTeacher(resolve_model(spec), TeacherConfig(kind="local", model=spec, **settings), name=name)
    judge.params["seed"] = seed
    judge.remote = False
    return judge


def describe_remote(judge, requests: int, chars: int) -> str | None:
    """What leaves the machine for a remote judge (None for a local or loopback one)."""
    if not getattr(judge, "remote", False):
        return None
    return (f"remote judge: sending up to {requests} requests ({chars:,} characters of questions, contexts, references "
            f"and answers) to {judge.host} ({judge.url}, model {judge.cfg.model}); replies already cached are not sent again")
