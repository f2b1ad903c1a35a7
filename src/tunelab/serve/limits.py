"""Request limits of the server (one object, set from the command line) and the body-size guard."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.serve.errors import ApiError, send_error


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20  # a request body above this is a 413
    max_tokens: int = 1024  # the most new tokens one generation request may ask for
    max_inputs: int = 256  # texts in one /v1/classify request
    timeout_s: float = 60.0  # per request, queue wait included: a 504 after it
    max_queue: int = 64  # waiting requests per run; beyond it a 503 with Retry-After
    max_batch_size: int = 32  # texts classified together, or generation requests decoded together
    max_wait_ms: float = 5.0  # how long a batch waits to fill
    retry_after_s: int = 1


class BodyLimit:
    """ASGI middleware: read the body up to `limit` bytes (413 beyond it, also without a
    Content-Length), then hand it on to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = ApiError(413, f"the request body is larger than {self.limit} bytes (--max-body-bytes)", code="body_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await send_error(send, too_big)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await send_error(send, too_big)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # waits for the disconnect, as the server's would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
