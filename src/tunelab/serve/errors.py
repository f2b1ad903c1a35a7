"""OpenAI-style error bodies, `{"error": {"message", "type", "param", "code"}}`, for every failure.

A bad request gets a 4xx with such a body, never a traceback; an unexpected failure is logged
on the server and answered with a 500 that says only that it is a server error.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("tunelab.serve")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 503: "overloaded_error",
         504: "timeout_error"}


class ApiError(Exception):
    """A failure to answer with `status` and an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The body of an error response.

    >>> error_body(400, "bad", "n")
    {'error': {'message': 'bad', 'type': 'invalid_request_error', 'param': 'n', 'code': None}}
    """
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(err: ApiError):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(err.status, err.message, err.param, err.code), status_code=err.status, headers=err.headers)


async def send_error(send, err: ApiError) -> None:
    """The same response from plain ASGI middleware (before FastAPI's handlers are reached)."""
    body = json.dumps(error_body(err.status, err.message, err.param, err.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def validation_error(exc) -> ApiError:
    """FastAPI's RequestValidationError -> a 400 naming the first bad field (or the JSON error)."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})", code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        return ApiError(400, f"missing required field '{param}'", param=param, code="missing_field")
    what = f"field '{param}'" if param else "the request body"
    return ApiError(400, f"{what}: {first.get('msg', 'invalid value')}", param=param, code="invalid_value")


def install_handlers(app) -> None:
    """Every error the framework or a route raises becomes an OpenAI-style body."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from tunelab.errors import TunelabError

    @app.exception_handler(ApiError)
    async def _api(request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        kind = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in kind:  # curl -d sends a form type unless told
            return error_response(ApiError(400, f"send the body as JSON with the header 'Content-Type: application/json' (got {kind or 'no content type'!r})",
                                           code="invalid_content_type"))
        return error_response(validation_error(exc))

    @app.exception_handler(TunelabError)
    async def _user(request, exc):  # e.g. a conversation the run's template cannot render
        return error_response(ApiError(400, str(exc)))

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        message = {404: f"no route {request.method} {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
        return error_response(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), headers=exc.headers))

    @app.exception_handler(Exception)
    async def _bug(request, exc):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, "internal server error (a bug in tunelab; the server log has the details)"))
