"""review: the store (versions, 409, restart, export) and the server's gate (token, Host, JSON)."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.review.server import ReviewServer
from tunelab.review.store import Conflict, ReviewStore, db_path_for

ROWS = [
    {"question": "연차는 며칠인가요?", "context": "연차는 15일이 부여된다.", "answer": "15일", "lang": "ko", "source": "hr.md"},
    {"question": "How long is leave?", "context": "Staff get 15 days.", "answer": "15 days", "lang": "en", "source": "hr-en.md"},
    {"question": "이월은 언제까지인가요?", "context": "이월은 3월 31일까지.", "answer": "4월", "lang": "ko", "source": "hr.md"},
    {"question": "How long is leave?", "context": "Staff get 15 days.", "answer": "15 days", "lang": "en", "source": "hr-en.md"},
]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    return path


def test_versions_conflicts_and_edits(data):
    store = ReviewStore(data)
    assert len(store) == 4 and store.counts() == {"total": 4, "pending": 4, "accepted": 0, "rejected": 0, "edited": 0}
    item = store.item(1)
    assert item.version == 0 and item.status == "pending" and item.editable == ["question", "answer", "context"]

    item = store.save(1, 0, status="accepted")
    assert (item.status, item.version) == ("accepted", 1)
    with pytest.raises(Conflict) as c:  # a second tab still at version 0
        store.save(1, 0, status="rejected")
    assert c.value.current.status == "accepted" and c.value.current.version == 1

    item = store.save(3, 0, edits={"answer": "3월 31일까지"})
    assert item.current["answer"] == "3월 31일까지" and item.row["answer"] == "4월" and item.status == "pending"
    item = store.save(3, 1, edits={"question": "이월 기한은 언제인가요?"})  # edits merge
    assert item.edits == {"answer": "3월 31일까지", "question": "이월 기한은 언제인가요?"}
    item = store.save(3, 2, edits={"question": "이월은 언제까지인가요?"})  # back to the original: no edit
    assert item.edits == {"answer": "3월 31일까지"} and item.version == 3

    # identical rows are separate items
    store.save(4, 0, status="rejected")
    assert store.item(2).status == "pending" and store.item(4).status == "rejected"

    with pytest.raises(ValueError, match="cannot be edited"):
        store.save(1, 1, edits={"lang": "en"})
    with pytest.raises(ValueError, match="status must be one of"):
        store.save(1, 1, status="maybe")
    with pytest.raises(KeyError):
        store.item(99)
    assert [it.id for it in store.items(status="pending", source="hr.md")] == [3]


def test_decisions_survive_a_restart_and_export_is_atomic_and_faithful(data, tmp_path):
    before = data.read_bytes()
    store = ReviewStore(data)
    store.save(1, 0, status="accepted")
    store.save(3, 0, status="accepted", edits={"answer": "3월 31일까지"})
    store.save(2, 0, status="rejected")
    store.close()

    store = ReviewStore(data)  # a new process would see the same
    assert store.db_path == db_path_for(data) == tmp_path / "qa.review.sqlite"
    assert store.counts() == {"total": 4, "pending": 1, "accepted": 2, "rejected": 1, "edited": 1}
    out = tmp_path / "accepted.jsonl"
    counts = store.export(out)
    assert counts["accepted"] == 2 and counts["edited"] == 1
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [ROWS[0], {**ROWS[2], "answer": "3월 31일까지"}]
    assert data.read_bytes() == before  # the source is never modified
    with pytest.raises(TunelabError, match="would overwrite the reviewed file"):
        store.export(data)


def test_decisions_follow_rows_when_the_file_changes(data):
    store = ReviewStore(data)
    store.save(3, 0, status="accepted")
    store.close()
    lines = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join([json.dumps({"question": "새 질문인가요?", "context": "c", "answer": "a"}, ensure_ascii=False)]
                              + lines[:2] + lines[3:]) + "\n", encoding="utf-8")  # fmt: skip
    store = ReviewStore(data)
    assert store.counts()["accepted"] == 0 and store.orphans() == 1  # row 3 is gone; its decision is kept
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert ReviewStore(data).item(3).status == "accepted"


def test_concurrent_saves_from_many_threads_never_both_win(data):
    store = ReviewStore(data)
    wins, conflicts = [], []

    def attempt(status):
        try:
            wins.append(store.save(2, 0, status=status).status)
        except Conflict:
            conflicts.append(status)

    threads = [threading.Thread(target=attempt, args=(s,)) for s in ["accepted", "rejected"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(conflicts) == 7 and store.item(2).version == 1


def test_bad_input_files_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\nnot json\n')
    with pytest.raises(TunelabError, match=r"bad.jsonl:2: not valid JSON"):
        ReviewStore(bad)
    with pytest.raises(TunelabError, match="no such file"):
        ReviewStore(tmp_path / "missing.jsonl")
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"question": "q"}\n')
    with pytest.raises(TunelabError, match="no review of"):
        ReviewStore(ok, create=False)


# --- the server's gate -----------------------------------------------------------------------------


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


@pytest.fixture
def server(data):
    srv = ReviewServer(ReviewStore(data)).start()
    yield srv
    srv.stop()


def test_every_request_needs_the_token(server):
    port = server.port
    for path in ("/", "/api/state", "/api/items/1", "/nope", "/?token=wrong"):
        status, _, body = _request(port, "GET", path)
        assert status == 403, path
        assert b"state" not in body and "연차".encode() not in body
    status, _, _ = _request(port, "POST", "/api/items/1", json.dumps({"version": 0, "status": "accepted"}),
                            {"Content-Type": "application/json"})  # fmt: skip
    assert status == 403 and server.store.item(1).status == "pending"
    status, _, _ = _request(port, "GET", "/api/state", headers={"Cookie": f"{server.cookie}=wrong"})
    assert status == 403


def test_token_becomes_a_cookie_and_the_api_works(server):
    port, token = server.port, server.token
    assert server.url == f"http://127.0.0.1:{port}/?token={token}"
    status, headers, _ = _request(port, "GET", f"/?token={token}")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    status, headers, page = _request(port, "GET", "/", headers=jar)
    assert status == 200 and b"tunelab review" in page and "default-src 'none'" in headers["Content-Security-Policy"]
    status, _, body = _request(port, "GET", "/api/state?status=pending&source=hr.md", headers=jar)
    state = json.loads(body)
    assert [it["id"] for it in state["items"]] == [1, 3] and state["counts"]["total"] == 4

    post = {**jar, "Content-Type": "application/json"}
    status, _, body = _request(port, "POST", "/api/items/1", json.dumps({"version": 0, "status": "accepted"}), post)
    assert status == 200 and json.loads(body)["version"] == 1
    status, _, body = _request(port, "POST", "/api/items/1", json.dumps({"version": 0, "edits": {"answer": "x"}}), post)
    assert status == 409 and json.loads(body)["error"] == "changed in another tab — reload"
    assert json.loads(body)["item"]["version"] == 1
    # the header works instead of the cookie; writes must be JSON
    status, _, _ = _request(port, "GET", "/api/items/2", headers={"X-Review-Token": token})
    assert status == 200
    status, _, _ = _request(port, "POST", "/api/items/2", "version=0&status=accepted",
                            {**jar, "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert status == 415
    status, _, _ = _request(port, "POST", "/api/items/2", json.dumps({"version": 0, "status": "nope"}), post)
    assert status == 400
    status, _, _ = _request(port, "GET", "/api/items/99", headers=jar)
    assert status == 404


def test_foreign_host_header_is_refused(server):
    status, _, _ = _request(server.port, "GET", f"/?token={server.token}", headers={"Host": "evil.example:80"})
    assert status == 403


def test_server_listens_on_loopback_only(server):
    assert server.httpd.server_address[0] == "127.0.0.1"


def test_export_commands(data, tmp_path, capsys):
    store = ReviewStore(data)
    store.save(2, 0, status="accepted", edits={"answer": "fifteen days"})
    store.close()
    out = tmp_path / "acc.jsonl"
    assert main(["data", "review-export", str(data), "--output", str(out)]) == 0
    assert [json.loads(line)["answer"] for line in out.read_text().splitlines()] == ["fifteen days"]
    assert "1 accepted rows (1 edited) of 4" in capsys.readouterr().out
    out2 = tmp_path / "acc2.jsonl"
    assert main(["data", "review", str(data), "--export", str(out2)]) == 0
    assert out2.read_bytes() == out.read_bytes()
    assert main(["data", "review-export", str(tmp_path / "none.jsonl"), "-o", str(out2)]) == 2


def test_review_command_prints_a_token_url_and_stops_on_ctrl_c(data):
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    # SIGINT as in a terminal's foreground job: after the tests before this one the pytest process
    # ignores SIGINT (signal.getsignal gives SIG_IGN; which test leaves it so is not found yet), and
    # a child inherits an ignored signal, so Ctrl-C would never reach the command.
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "data", "review", str(data), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        lines = []
        while not any(line.startswith("open ") for line in lines):
            line = proc.stdout.readline()
            assert line, f"the command ended early: {proc.stderr.read()}"
            lines.append(line)
        url = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=[\w-]+)", "".join(lines)).group(1)
        assert "4 rows (4 pending" in lines[0]
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(url, timeout=10) as resp:  # follows the redirect with the cookie
            assert resp.status == 200 and b"tunelab review" in resp.read()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "0 accepted, 0 rejected, 4 pending" in out
    finally:
        if proc.poll() is None:
            proc.kill()
