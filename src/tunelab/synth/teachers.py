"""Teachers: the models that write questions and answers.

    teacher = build_teacher(cfg.teacher, allow_remote=False)
    replies = teacher.generate([messages1, messages2])        # LocalTeacher: one batch
    reply = teacher.complete(messages)                       # EndpointTeacher: one request

LocalTeacher loads a causal LM with transformers in this process (float32 on the CPU, the only
safe choice for bf16-stored weights there), renders messages with the model's own chat template
(a plain "System:/User:/Assistant:" transcript when it has none, as base models), and generates
a batch at once with left padding; greedy at temperature 0. Given the structure a stage wants
(`synth.constrained`), it decodes under a logits processor that keeps every reply in the shape
the parsers read: a numbered list of questions, or a one-line answer (`teacher.constrained`).

EndpointTeacher talks to any OpenAI-compatible chat-completions endpoint with the standard
library only. Base URL and key come from the environment (TUNELAB_TEACHER_BASE_URL, e.g.
http://10.0.0.5:8000/v1, and TUNELAB_TEACHER_API_KEY, optional), never from a config file that
might be committed. HTTP 429, 5xx, timeouts and dropped connections are retried with exponential
backoff and jitter (a Retry-After header wins); other errors stop the run with the reason. It is
built only when the user passed --allow-remote: documents are confidential by default.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse

from tunelab.errors import TunelabError
from tunelab.synth.prompts import TeacherConfig

BASE_URL_ENV = "TUNELAB_TEACHER_BASE_URL"
API_KEY_ENV = "TUNELAB_TEACHER_API_KEY"
# strongest first; the first one installed is the default local teacher
PREFERRED_LOCAL = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_MAX_BACKOFF = 60.0


def default_local_model() -> str:
    """`asset:NAME` of the strongest installed instruct model."""
    from tunelab.assets.store import is_installed

    for name in PREFERRED_LOCAL:
        if is_installed(name):
            return f"asset:{name}"
    raise TunelabError("no local teacher is installed: run `tunelab assets install "
                       f"{PREFERRED_LOCAL[0]}`, or set teacher.model to a model folder")  # fmt: skip


def build_teacher(cfg: TeacherConfig, allow_remote: bool = False, env: dict | None = None):
    """The teacher `cfg` describes; an endpoint only with `allow_remote`."""
    if cfg.kind == "openai":
        base_url, key = endpoint_from_env(env)
        if not allow_remote:
            raise TunelabError(
                f"the config's teacher is an OpenAI-compatible endpoint ({base_url}, model {cfg.model}): "
                "documents would leave this machine. Pass --allow-remote to send them, or use a local "
                "teacher (teacher.kind: local)")  # fmt: skip
        return EndpointTeacher(base_url, key, cfg)
    from tunelab.assets import resolve_model

    spec = cfg.model or default_local_model()
    return LocalTeacher(resolve_model(spec), cfg, name=spec.removeprefix("asset:"))


def endpoint_from_env(env: dict | None = None) -> tuple[str, str | None]:
    env = os.environ if env is None else env
    base_url = (env.get(BASE_URL_ENV) or "").strip()
    if not base_url:
        raise TunelabError(f"teacher.kind openai needs the endpoint's base URL in {BASE_URL_ENV} "
                           f"(e.g. http://10.0.0.5:8000/v1) and its key, if any, in {API_KEY_ENV}")  # fmt: skip
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise TunelabError(f"{BASE_URL_ENV}={base_url!r} is not an http(s) URL")
    return base_url, env.get(API_KEY_ENV) or None


def _fingerprint(folder: Path) -> str:
    """8 hex digits identifying the weights (config text and weight file sizes)."""
    h = hashlib.sha256((folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b"")
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:8]


class LocalTeacher:
    kind = "local"

    def __init__(self, folder: Path, cfg: TeacherConfig, name: str | None = None):
        self.folder = Path(folder)
        self.cfg = cfg
        self.id = f"local:{name or self.folder.name}@{_fingerprint(self.folder)}"
        self.params = {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens}
        self.truncated = 0  # prompts cut from the left to fit the model's context
        self._model = None
        self._tok = None
        self._vocab = None

    def load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoTokenizer

        from tunelab.model.backbone import load_backbone

        self._tok = AutoTokenizer.from_pretrained(str(self.folder))
        self._tok.padding_side = "left"  # generation continues at the right end of every row
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        self._model = load_backbone(self.folder, lm_head=True)
        self._model.eval()

    def render(self, messages: list[dict]) -> str:
        """The prompt text: the chat template, or a plain transcript for models without one."""
        self.load()
        if self._tok.chat_template:
            return self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        names = {"system": "System", "user": "User", "assistant": "Assistant"}
        return "".join(f"{names[m['role']]}: {m['content']}\n\n" for m in messages) + "Assistant:"

    @property
    def constrains(self) -> bool:
        """Whether `generate` honours a structure (`teacher.constrained`; see `synth.constrained`)."""
        return self.cfg.constrained

    def vocabulary(self):
        """The token classes of the constrained decoder (built once)."""
        from tunelab.synth.constrained import Vocabulary

        self.load()
        if self._vocab is None:
            eos = self._model.generation_config.eos_token_id
            eos = self._tok.eos_token_id if eos is None else eos
            eos = [eos] if isinstance(eos, int) else list(eos)
            width = self._model.get_output_embeddings().weight.shape[0]
            self._vocab = Vocabulary(self._tok, width, eos)
        return self._vocab

    def generate(self, batch: list[list[dict]], constraint=None) -> list[str]:
        """One reply per message list, generated together (greedy at temperature 0). With a
        `constraint` (`synth.constrained.QuestionList` or `Answer`) and `teacher.constrained`
        on, every reply has the shape the parsers read."""
        import torch

        self.load()
        texts = [self.render(m) for m in batch]
        # the chat template already holds BOS and the like; a plain transcript needs them added
        enc = self._tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self._tok.chat_template)
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, T)
        limit = getattr(self._model.config, "max_position_embeddings", None)
        if limit and ids.shape[1] + self.cfg.max_new_tokens > limit:
            keep = max(limit - self.cfg.max_new_tokens, 1)
            self.truncated += int((mask.sum(1) > keep).sum())
            ids, mask = ids[:, -keep:], mask[:, -keep:]
        kwargs = {"max_new_tokens": self.cfg.max_new_tokens, "pad_token_id": self._tok.pad_token_id}
        if self.cfg.temperature > 0:
            torch.manual_seed(self.cfg.seed)
            kwargs.update(do_sample=True, temperature=self.cfg.temperature, top_p=0.95)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        constrained = constraint is not None and self.constrains
        if constrained:
            from transformers import LogitsProcessorList

            from tunelab.synth.constrained import StructureProcessor

            processor = StructureProcessor(constraint, self.vocabulary(), len(batch), self.cfg.max_new_tokens)
            kwargs["logits_processor"] = LogitsProcessorList([processor])
            kwargs["eos_token_id"] = self.vocabulary().eos
        with torch.no_grad():
            out = self._model.generate(input_ids=ids, attention_mask=mask, **kwargs)  # (B, T + new)
        replies = [self._tok.decode(row[ids.shape[1]:], skip_special_tokens=True).strip() for row in out]
        if constrained:
            from tunelab.synth.constrained import clean_reply

            replies = [clean_reply(r) for r in replies]
        return replies


class EndpointTeacher:
    kind = "openai"

    def __init__(self, base_url: str, api_key: str | None, cfg: TeacherConfig, sleep=time.sleep):
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.host = urlparse(self.url).netloc
        self.key = api_key
        self.cfg = cfg
        self.id = f"openai:{cfg.model}@{self.host}"
        self.params = {"temperature": cfg.temperature, "max_tokens": cfg.max_new_tokens}
        self.requests = 0  # HTTP requests sent, retries included
        self.retried = 0
        self._sleep = sleep
        self._lock = threading.Lock()
        self._rng = random.Random(cfg.seed)

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), _MAX_BACKOFF)
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        with self._lock:
            jitter = 0.5 + self._rng.random() / 2
        return min(self.cfg.retry_base_seconds * 2**attempt, _MAX_BACKOFF) * jitter

    def complete(self, messages: list[dict]) -> str:
        """The reply text for one chat; retried on transient failures."""
        body = json.dumps({"model": self.cfg.model, "messages": messages, **self.params}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
            with self._lock:
                self.requests += 1
            retry_after = None
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
                    return self._content(resp.read())
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode("utf-8", "replace").strip()
                if err.code not in _RETRY_STATUS:
                    hint = {401: f"; check {API_KEY_ENV}", 403: f"; check {API_KEY_ENV}",
                            404: f"; is {BASE_URL_ENV} the base URL (ending in /v1)?"}.get(err.code, "")  # fmt: skip
                    raise TunelabError(f"teacher endpoint {self.url}: HTTP {err.code} {detail}{hint}") from None
                last, retry_after = f"HTTP {err.code} {detail}", err.headers.get("Retry-After")
            except (urllib.error.URLError, HTTPException, TimeoutError, ConnectionError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if attempt < self.cfg.retries:
                self._sleep(self._backoff(attempt, retry_after))
        raise TunelabError(f"teacher endpoint {self.url}: gave up after {self.cfg.retries} retries "
                           f"(last: {last}); replies so far are cached, rerun to resume")  # fmt: skip

    def _content(self, raw: bytes) -> str:
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise TunelabError(f"teacher endpoint {self.url}: not a chat-completions reply: "
                               f"{raw[:200].decode('utf-8', 'replace')!r}") from None  # fmt: skip
        return content if isinstance(content, str) else ""
