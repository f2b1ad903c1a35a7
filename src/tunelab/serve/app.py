"""The routes of `tunelab serve`, as one FastAPI app over the loaded runs.

    app = create_app(load_runs(["runs/spam"], loaders), api_key="secret", limits=Limits())
    uvicorn.run(app, host="127.0.0.1", port=8000)

    POST /v1/classify            {"model": "spam", "input": "text" | ["text", ...]} -> label + probs per input
    POST /v1/chat/completions    OpenAI chat request (stream: true -> server-sent events)
    POST /v1/completions         OpenAI completion request: the prompt is the user turn of the run's template
    GET  /v1/models              the runs served
    GET  /health                 no key needed
    GET  /metrics                request counts, latencies, batch sizes (Prometheus text)

Middleware, outermost first: count the request (metrics), check the API key, cap the body size.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse

from tunelab.errors import TunelabError
from tunelab.serve import shapes
from tunelab.serve.auth import RequireKey
from tunelab.serve.batching import Batcher, Job, QueueFull
from tunelab.serve.errors import ApiError, error_body, install_handlers, log
from tunelab.serve.limits import BodyLimit, Limits
from tunelab.serve.metrics import CountRequests, Metrics
from tunelab.serve.runs import Served, batcher_for
from tunelab.serve.schemas import ChatRequest, ClassifyRequest, CompletionRequest, Decoding

ROUTES = {"/health", "/metrics", "/v1/models", "/v1/classify", "/v1/chat/completions", "/v1/completions"}
ROUTE_OF = {"classification": "/v1/classify", "sft": "/v1/chat/completions or /v1/completions"}


def pick(served: dict[str, Served], name: str | None, task: str) -> Served:
    """The run a request names; with no name, the only run of the route's task."""
    if name is None:
        fitting = [s for s in served.values() if s.task == task]
        if len(fitting) == 1:
            return fitting[0]
        if not fitting:
            holds = ", ".join(f"{s.name} ({s.task})" for s in served.values())
            raise ApiError(400, f"this server holds no {task} run (it holds {holds})", param="model", code="wrong_task")
        raise ApiError(400, f"field 'model' is required: this server holds {', '.join(sorted(served))}", param="model", code="model_required")
    if name not in served:
        raise ApiError(404, f"no model '{name}'; this server holds {', '.join(sorted(served))}", param="model", code="model_not_found")
    run = served[name]
    if run.task != task:
        raise ApiError(400, f"model '{name}' is a {run.task} run: use {ROUTE_OF[run.task]}", param="model", code="wrong_task")
    return run


class Server:
    """The loaded runs with their batchers, the limits and the metrics the routes share."""

    def __init__(self, served: dict[str, Served], limits: Limits):
        self.served, self.limits, self.metrics = served, limits, Metrics()
        self.batchers: dict[str, Batcher] = {name: batcher_for(run, limits, self.metrics.batch) for name, run in served.items()}

    def busy(self, name: str) -> ApiError:
        return ApiError(503, f"the server is busy (the queue of model '{name}' is full); retry in a moment", code="queue_full",
                        headers={"Retry-After": str(self.limits.retry_after_s)})

    def too_slow(self) -> ApiError:
        return ApiError(504, f"the request took longer than {self.limits.timeout_s:g} s and was stopped", code="timeout")

    async def submit(self, name: str, payload, size: int = 1):
        try:
            return await self.batchers[name].submit(payload, size, self.limits.timeout_s)
        except QueueFull:
            raise self.busy(name) from None
        except TimeoutError:
            raise self.too_slow() from None

    def prepared(self, run: Served, req: Decoding, messages: list[dict]):
        if req.max_tokens is not None and req.max_tokens > self.limits.max_tokens:
            raise ApiError(400, f"max_tokens {req.max_tokens} is above this server's limit of {self.limits.max_tokens} (--max-tokens)",
                           param="max_tokens", code="max_tokens_too_large")
        max_tokens = req.max_tokens or min((run.model.meta.get("generation") or {}).get("max_new_tokens", 256), self.limits.max_tokens)
        return run.model.prepare(messages, max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                       seed=req.seed, stop=req.stops())

    async def generate(self, kind: str, req: Decoding, conversation):
        run = pick(self.served, req.model, "sft")
        prep = self.prepared(run, req, conversation(run.model))
        if req.stream:
            return self.stream(kind, run.name, prep)
        done = await self.submit(run.name, prep)
        return shapes.body(kind, shapes.new_id(kind), run.name, done)

    def stream(self, kind: str, name: str, prep) -> StreamingResponse:
        """Queue the request now (a full queue is still a 503), then stream its deltas."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        try:
            job: Job = self.batchers[name].job(prep, emit=lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece))
        except QueueFull:
            raise self.busy(name) from None
        job.future.add_done_callback(lambda _: pieces.put_nowait(None))  # after every delta: both go through the loop in order
        id_, deadline = shapes.new_id(kind), loop.time() + self.limits.timeout_s

        async def events():
            try:
                if kind == "chat":
                    yield shapes.sse(shapes.chunk(kind, id_, name, role=True))
                while (piece := await asyncio.wait_for(pieces.get(), max(0.0, deadline - loop.time()))) is not None:
                    yield shapes.sse(shapes.chunk(kind, id_, name, piece))
                err = job.future.exception()
                if err is None:
                    yield shapes.sse(shapes.chunk(kind, id_, name, finish=job.future.result().finish_reason))
                else:
                    yield shapes.sse(stream_error(err))
            except TimeoutError:
                yield shapes.sse(error_body(504, self.too_slow().message, code="timeout"))
            finally:
                job.cancelled.set()  # the client left, or the time ran out: stop decoding
            yield shapes.sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def stream_error(err: BaseException) -> dict:
    """An error after the stream began (its status is sent already): an error event."""
    if isinstance(err, TunelabError):
        return error_body(400, str(err))
    log.error("generation failed", exc_info=err)
    return error_body(500, "internal server error (a bug in tunelab; the server log has the details)")


def create_app(served: dict[str, Served], api_key: str, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    server = Server(served, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for b in server.batchers.values():
            b.start()
        yield
        for b in server.batchers.values():
            b.stop(timeout=limits.timeout_s)  # the queued jobs finish first

    app = FastAPI(title="tunelab serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    install_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return server.metrics.text()

    @app.get("/v1/models")
    async def models():
        data = [{"id": r.name, "object": "model", "created": r.created, "owned_by": "tunelab", "task": r.task} for r in served.values()]
        return {"object": "list", "data": data}

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest):
        run = pick(served, req.model, "classification")
        texts = req.texts()
        if not texts or len(texts) > limits.max_inputs:
            raise ApiError(400, f"'input' must hold 1 to {limits.max_inputs} texts (got {len(texts)})", param="input", code="invalid_value")
        empty = next((i for i, t in enumerate(texts) if not t.strip()), None)
        if empty is not None:
            raise ApiError(400, f"input[{empty}] is empty; expected a text", param=f"input.{empty}", code="invalid_value")
        predictions = await server.submit(run.name, texts, size=len(texts))
        return {"object": "list", "model": run.name, "data": [{"index": i, **p} for i, p in enumerate(predictions)]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        return await server.generate("chat", req, lambda gen: gen.chat_messages(messages))

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        return await server.generate("completion", req, lambda gen: gen.prompt_messages(req.text()))

    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(RequireKey, key=api_key)
    app.add_middleware(CountRequests, metrics=server.metrics, routes=ROUTES)
    return app
