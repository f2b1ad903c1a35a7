"""`tunelab data review FILE.jsonl`: a local page to accept, reject and edit rows by eye.

    tunelab data review runs/synth/qa-ko.jsonl              # prints http://127.0.0.1:PORT/?token=...
    tunelab data review-export runs/synth/qa-ko.jsonl -o data/qa-ko.accepted.jsonl

The server listens on 127.0.0.1 only and answers nothing without the random token printed at
start: the first visit carries it in the query string, the server puts it in an HttpOnly,
SameSite=Strict cookie and redirects to a clean URL; scripts may send it as the X-Review-Token
header instead. Requests whose Host header is not this loopback address are refused too (a web
page elsewhere cannot reach the server through DNS rebinding), and writes must be JSON (a plain
cross-site form cannot send that).

    GET  /                         the page (page.html)
    GET  /api/state?status=&source=  counts, sources and the filtered list of items
    GET  /api/items/ID             one item: the row, its edits, status and version
    POST /api/items/ID             {"version": V, "status"?: ..., "edits"?: {...}, "grade"?: N}: 200 with
                                   the new state, 409 with the current state if V is stale

Grading mode (`tunelab data review FILE --grade 1-5`): the page also shows score buttons (keys
1-9) and the state carries `grade_scale` and the number graded; the grades are what
`tunelab judge FILE --human FILE.review.sqlite` compares an LLM judge with.
"""

from __future__ import annotations

import json
import secrets
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tunelab.errors import TunelabError
from tunelab.review.store import Conflict, ReviewStore

PAGE = Path(__file__).with_name("page.html")
HOST = "127.0.0.1"
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip
MAX_BODY = 8 * 1024 * 1024


class ReviewServer:
    """The HTTP server around one ReviewStore; `start()` serves in a thread (tests), `serve()`
    in the foreground (the CLI)."""

    def __init__(self, store: ReviewStore, port: int = 0, token: str | None = None):
        self.store = store
        self.token = token or secrets.token_urlsafe(24)
        self.httpd = ThreadingHTTPServer((HOST, port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.cookie = f"tunelab_review_{self.port}"  # cookies ignore ports: one name per server
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)


def _handler(server: ReviewServer):
    class Handler(BaseHTTPRequestHandler):
        server_version = "tunelab-review"
        sys_version = ""

        def log_message(self, fmt, *args):  # quiet: the terminal shows the URL, not every request
            pass

        # --- plumbing ------------------------------------------------------------------------
        def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Content-Security-Policy", CSP)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

        def _text(self, status: int, text: str) -> None:
            self._send(status, text.encode("utf-8"), "text/plain; charset=utf-8")

        def _host_ok(self) -> bool:
            return self.headers.get("Host", "") in (f"{HOST}:{server.port}", f"localhost:{server.port}")

        def _token_ok(self, query: dict) -> bool:
            given = [query.get("token", [""])[0], self.headers.get("X-Review-Token", "")]
            cookie = SimpleCookie()
            try:
                cookie.load(self.headers.get("Cookie", ""))
            except Exception:  # a malformed cookie header is just no token
                pass
            if server.cookie in cookie:
                given.append(cookie[server.cookie].value)
            return any(g and secrets.compare_digest(g, server.token) for g in given)

        def _gate(self):
            """(path, query) when the request may proceed; else answers 403 and returns None."""
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if not self._host_ok():
                self._text(HTTPStatus.FORBIDDEN, "forbidden: unexpected Host header")
                return None
            if not self._token_ok(query):
                self._text(HTTPStatus.FORBIDDEN, "forbidden: open the URL that `tunelab data review` printed "
                                                 "(it carries the access token)")  # fmt: skip
                return None
            return url.path, query

        def _item_id(self, path: str) -> int | None:
            tail = path[len("/api/items/"):]
            return int(tail) if tail.isdigit() else None

        # --- routes --------------------------------------------------------------------------
        def do_GET(self):
            gate = self._gate()
            if gate is None:
                return
            path, query = gate
            if path == "/" and "token" in query:  # first visit: token -> cookie, clean URL
                self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {
                    "Location": "/",
                    "Set-Cookie": f"{server.cookie}={server.token}; HttpOnly; SameSite=Strict; Path=/"})  # fmt: skip
            elif path == "/":
                self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif path == "/api/state":
                status = query.get("status", [""])[0] or None
                source = query["source"][0] if "source" in query else None
                store = server.store
                self._json(HTTPStatus.OK, {
                    "file": str(store.data_path), "database": str(store.db_path), "counts": store.counts(),
                    "sources": store.sources(), "orphans": store.orphans(),
                    "grade_scale": list(store.grade_scale) if store.grade_scale else None, "graded": len(store.grades()),
                    "items": [it.summary() for it in store.items(status=status, source=source)]})  # fmt: skip
            elif path.startswith("/api/items/") and self._item_id(path):
                try:
                    self._json(HTTPStatus.OK, server.store.item(self._item_id(path)).to_json())
                except KeyError:
                    self._json(HTTPStatus.NOT_FOUND, {"error": "no such item"})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        do_HEAD = do_GET

        def do_POST(self):
            gate = self._gate()
            if gate is None:
                return
            path, _ = gate
            item_id = self._item_id(path) if path.startswith("/api/items/") else None
            if item_id is None:
                return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send JSON"})
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": "empty or too large body"})
            try:
                body = json.loads(self.rfile.read(length))
                version = body["version"]
                if not isinstance(version, int) or not isinstance(body.get("edits") or {}, dict):
                    raise ValueError("version must be an integer and edits an object")
                item = server.store.save(item_id, version, status=body.get("status"), edits=body.get("edits"), grade=body.get("grade"))
            except Conflict as c:
                return self._json(HTTPStatus.CONFLICT, {"error": "changed in another tab — reload",
                                                        "item": c.current.to_json()})  # fmt: skip
            except KeyError as err:
                return self._json(HTTPStatus.NOT_FOUND if err.args == (item_id,) else HTTPStatus.BAD_REQUEST,
                                  {"error": f"missing {err}"})  # fmt: skip
            except ValueError as err:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            self._json(HTTPStatus.OK, item.to_json())

    return Handler


def grade_scale(text: str | None) -> tuple[int, int] | None:
    """`--grade 1-5` -> (1, 5).

    >>> grade_scale("1-5"), grade_scale("0-3"), grade_scale(None)
    ((1, 5), (0, 3), None)
    """
    if text is None:
        return None
    lo, sep, hi = text.partition("-")
    if not (sep and lo.strip().isdigit() and hi.strip().isdigit() and int(lo) < int(hi) <= 9):
        raise TunelabError(f"--grade {text}: expected LOW-HIGH with 0 <= LOW < HIGH <= 9, e.g. --grade 1-5 (the rubric's scale)")
    return int(lo), int(hi)


def serve_command(file: str, port: int = 0, grade: str | None = None) -> int:
    """The CLI: open the store, print the URL, serve until Ctrl-C."""
    if not 0 <= port <= 65535:
        raise TunelabError(f"--port {port}: expected 0 (any free port) or 1-65535")
    store = ReviewStore(file, grade_scale=grade_scale(grade))
    server = ReviewServer(store, port=port)
    c = store.counts()
    print(f"tunelab data review {file}: {c['total']} rows ({c['pending']} pending, {c['accepted']} accepted, "
          f"{c['rejected']} rejected)")  # fmt: skip
    if store.orphans():
        print(f"note: {store.orphans()} decisions in {store.db_path} belong to rows no longer in {file} (kept)")
    print(f"decisions are saved in {store.db_path}; {file} is never modified")
    if store.grade_scale:
        print(f"grading mode: score each answer {store.grade_scale[0]}-{store.grade_scale[1]} (keys); "
              f"then: tunelab judge {file} --human {store.db_path}")
    print(f"open {server.url}")
    print(f"stop with Ctrl-C; then: tunelab data review-export {file} --output accepted.jsonl", flush=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        c = store.counts()
        print(f"\nreview of {file}: {c['accepted']} accepted, {c['rejected']} rejected, {c['pending']} pending")
        store.close()
    return 0


def export_command(file: str, output: str) -> int:
    """The CLI: write the accepted (and edited) rows."""
    from tunelab.data.outputs import check_output
    from tunelab.review.store import db_path_for

    check_output(output, inputs=[file, db_path_for(file)])
    store = ReviewStore(file, create=False)
    try:
        c = store.export(output)
    finally:
        store.close()
    print(f"tunelab data review-export {file}: {c['accepted']} accepted rows ({c['edited']} edited) of {c['total']}; "
          f"{c['rejected']} rejected, {c['pending']} not reviewed")  # fmt: skip
    print(f"wrote {output}")
    return 0
