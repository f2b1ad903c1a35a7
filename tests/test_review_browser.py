"""review end to end in headless Chromium: accept, edit, a conflict from another tab, reload, export.

Needs Debian's chromium and chromium-driver (`make browser`, i.e. apt-get install -y chromium
chromium-driver); skipped with that reason when they are absent. The browser is driven through
chromedriver's W3C WebDriver HTTP API with the standard library only (no selenium).

    TUNELAB_REVIEW_SCREENSHOT=docs/img/review.png pytest tests/test_review_browser.py   # also save a screenshot
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tunelab.review.server import ReviewServer
from tunelab.review.store import ReviewStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; `make browser`)",
)
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
CTRL, ENTER = "\ue009", "\ue007"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,860", "--lang=ko-KR"]  # fmt: skip

ROWS = [
    {"question": "연차휴가는 며칠이 부여되나요?", "context": "한빛소프트 취업규칙 > 연차휴가\n1년 이상 근무한 직원에게는 매년 15일의 "
     "연차휴가가 부여된다. 사용하지 않은 연차는 다음 해 3월 31일까지 이월할 수 있다.", "answer": "매년 15일",
     "lang": "ko", "answerable": True, "source": "data/synth-demo/hr-policy-ko.md", "chunk": 0,
     "teacher": "local:qwen2.5-coder-0.5b-instruct@ab449983", "prompt_version": "docqa-ko-v1"},
    {"question": "How long must passwords be?", "context": "Passwords for company accounts must be at least 14 "
     "characters long.", "answer": "14 characters", "lang": "en", "answerable": True, "source": "it-security-en.md",
     "chunk": 0, "teacher": "t", "prompt_version": "v1"},
    {"question": "Who unlocks accounts?", "context": "The IT Service Desk can unlock it sooner.", "answer": "IT",
     "lang": "en", "answerable": True, "source": "it-security-en.md", "chunk": 1, "teacher": "t", "prompt_version": "v1"},
    {"question": "재택근무 통신비는 얼마인가요?", "context": "경조사 지원 > 본인 결혼 시 축하금 100만 원을 지급한다.",
     "answer": "답변을 찾을 수 없습니다.", "lang": "ko", "answerable": False, "source": "data/synth-demo/hr-policy-ko.md",
     "chunk": 1, "teacher": "t", "prompt_version": "v1"},
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """Just enough of WebDriver: navigate, find, click, type, press keys, read text, screenshot."""

    def __init__(self, profile: str):
        port = _free_port()
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                if self._call("GET", "/status").get("ready"):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.time() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.2)
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": FLAGS + [f"--user-data-dir={profile}"]}}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())["value"]
        except urllib.error.HTTPError as err:
            raise AssertionError(f"WebDriver {method} {path}: {err.read()[:500]!r}") from None

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def click(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        el = self.find(css)
        self.cmd("POST", f"/element/{el}/clear", {})
        self.cmd("POST", f"/element/{el}/value", {"text": text})

    def keys(self, *keys: str) -> None:
        """Press keys together (e.g. CTRL, ENTER), released in reverse order."""
        actions = [{"type": "keyDown", "value": k} for k in keys] + [{"type": "keyUp", "value": k} for k in reversed(keys)]
        self.cmd("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})

    def text(self, css: str) -> str:
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)

    def wait(self, predicate, what: str, timeout: float = 30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; page: {self.text('body')!r:.600}")

    def wait_text(self, css: str, expected: str, timeout: float = 30) -> None:
        self.wait(lambda: (self.text(css) or "").strip() == expected, f"{css} == {expected!r}", timeout)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.cmd("GET", "/screenshot"))

    def quit(self) -> None:
        try:
            self.cmd("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def browser(tmp_path):
    b = Browser(str(tmp_path / "profile"))
    yield b
    b.quit()


def test_review_in_chromium(tmp_path, browser):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    before = data.read_bytes()
    server = ReviewServer(ReviewStore(data)).start()
    try:
        browser.get(server.url)  # token in the query once; a cookie afterwards
        browser.wait_text("#item-number", "#1")
        assert browser.js("return location.search") == ""  # the token left the address bar
        assert browser.text("#field-question") == ROWS[0]["question"]
        assert browser.text("#left").strip() == "4 left"

        browser.keys("a")  # accept -> the next pending item
        browser.wait_text("#item-number", "#2")
        browser.wait_text("#left", "3 left")

        browser.keys("e")  # edit the answer, save with Ctrl+Enter
        browser.wait(lambda: browser.text("#edit-answer") is not None, "the answer editor")
        browser.type("#edit-answer", "at least 14 characters")
        browser.keys(CTRL, ENTER)
        browser.wait_text("#field-answer", "at least 14 characters")
        assert "edited" in browser.text("#item .meta")
        browser.click("#accept")  # the mouse works too
        browser.wait_text("#item-number", "#3")

        # another tab (here: the store directly) decides item 3 first: this tab's save gets 409
        server.store.save(3, 0, status="rejected")
        browser.keys("r")
        browser.wait(lambda: "Changed in another tab — reload" in (browser.text("#banner") or ""), "the conflict banner")
        assert server.store.item(3).status == "rejected" and server.store.item(3).version == 1
        browser.click("#banner-reload")
        browser.wait_text("#item-number", "#4")  # 3 is no longer pending

        if os.environ.get("TUNELAB_REVIEW_SCREENSHOT"):
            browser.keys("k")  # back to a Korean item for the picture
            browser.wait_text("#item-number", "#4")
            browser.js("document.getElementById('status').value=''; document.getElementById('status').dispatchEvent(new Event('change'))")
            browser.wait_text("#item-number", "#1")
            with open(os.environ["TUNELAB_REVIEW_SCREENSHOT"], "wb") as fh:
                fh.write(browser.screenshot())

        # reload: everything came from SQLite
        browser.get(f"http://127.0.0.1:{server.port}/")
        browser.wait(lambda: (browser.text("#counts") or "").startswith("1 left2 accepted1 rejected1 edited"), "counts after reload")
        browser.keys("l")  # the list view, all statuses
        browser.js("document.getElementById('status').value=''; document.getElementById('status').dispatchEvent(new Event('change'))")
        browser.wait(lambda: browser.js("return document.querySelectorAll('#list tbody tr').length") == 4, "four rows")
        statuses = browser.js("return [...document.querySelectorAll('#list tbody tr td:nth-child(2) .badge:first-child')].map(e => e.textContent)")
        assert statuses == ["accepted", "accepted", "rejected", "pending"]
    finally:
        server.stop()

    # export: the accepted rows, the edit applied; the source untouched
    store = ReviewStore(data)
    out = tmp_path / "accepted.jsonl"
    assert store.export(out)["accepted"] == 2
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [ROWS[0], {**ROWS[1], "answer": "at least 14 characters"}]
    assert data.read_bytes() == before
