"""The API key: required on every route but /health, as `Authorization: Bearer KEY`.

The key comes from the environment variable TUNELAB_API_KEY, or is generated at start and printed
once. The check runs as ASGI middleware before routing, so an unknown path without a key is a
401 too (nothing about the server is learnt without the key).
"""

from __future__ import annotations

import hmac
import os
import secrets

from tunelab.serve.errors import ApiError, send_error

ENV = "TUNELAB_API_KEY"
OPEN_PATHS = ("/health",)


def api_key() -> tuple[str, bool]:
    """(key, generated): the environment's key, or a new random one."""
    key = os.environ.get(ENV, "").strip()
    return (key, False) if key else (secrets.token_urlsafe(24), True)


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header.

    >>> bearer([(b"authorization", b"Bearer abc")])
    'abc'
    """
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class RequireKey:
    """ASGI middleware: a 401 with an OpenAI-style body unless the request carries the key."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        token = bearer(scope["headers"])
        if token is None:
            err = ApiError(401, "missing API key: send the header 'Authorization: Bearer KEY' (the key printed by `tunelab serve`, or $TUNELAB_API_KEY)", code="missing_api_key")
        elif not hmac.compare_digest(token.encode(), self.key):
            err = ApiError(401, "wrong API key", code="invalid_api_key")
        else:
            return await self.app(scope, receive, send)
        err.headers["WWW-Authenticate"] = "Bearer"
        await send_error(send, err)
