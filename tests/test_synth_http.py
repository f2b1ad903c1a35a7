"""synth against a real local HTTP server speaking the OpenAI chat-completions API.

The server (http.server in a thread, on 127.0.0.1) answers from a script: a 429 first (retried),
a garbage reply for one chunk (counted, dropped), duplicates, a refusal and an unsupported answer
(filtered). A second run makes zero HTTP calls (everything from the cache), and without
--allow-remote nothing is sent at all.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunelab.cli import main
from tunelab.data.refusals import REFUSAL_EN
from tunelab.errors import TunelabError
from tunelab.synth.pipeline import ROW_KEYS, synthesize
from tunelab.synth.prompts import validate_synth_dict

DOCS = {
    "leave.md": "# Leave policy\n\nStaff get 15 days of paid leave each year. Unused days carry over until "
                "March 31. Requests go through the HR portal three days ahead.",
    "travel.md": "# Travel policy\n\nTrain travel is booked in second class. Hotels are reimbursed up to "
                 "150 dollars per night. Receipts go to Finance within 7 days.",
    "parking.md": "# Parking\n\nThe garage under building B opens at 6 am and closes at midnight. Visitors "
                  "park on level -1 and register at the front desk.",
}
QUESTIONS = {  # context keyword -> the teacher's reply
    "paid leave": "Sure! Here are the questions:\n1. How many days of paid leave do staff get?\n"
                  "2) Until when can unused days carry over?\n3. How many days of paid leave do staff get?\n"
                  "Hope this helps.",
    "Train travel": '```json\n["In which class is train travel booked?", '
                    '{"question": "How much is reimbursed per night for hotels?"}, "What colour is the CEO\'s car?"]\n```',
    "garage": "@@@@ ##### lorem ipsum",
}
ANSWERS = {
    "How many days of paid leave do staff get?": "15 days of paid leave each year",
    "Until when can unused days carry over?": "Answer: until March 31.",
    "In which class is train travel booked?": "According to the context, second class.",
    "How much is reimbursed per night for hotels?": "Hotels are free for executives on weekends.",
    "What colour is the CEO's car?": REFUSAL_EN,
}


class FakeEndpoint:
    """A scripted chat-completions server; `fail_first` requests get HTTP 429."""

    def __init__(self, fail_first: int = 1, status: int = 429):
        self.calls = 0
        self.requests: list[dict] = []
        self.fail_first, self.status = fail_first, status
        self.fail_answers = False  # answer requests get HTTP 503 (an outage half way through a run)
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.calls += 1
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    failing = outer.calls <= outer.fail_first
                system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
                if failing:
                    return self._reply(outer.status, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                if outer.fail_answers and "write questions" not in system:
                    return self._reply(503, {"error": {"message": "down"}})
                if "write questions" in system:
                    content = next(v for k, v in QUESTIONS.items() if k in user)
                else:
                    question = user.split("[Question]\n")[1].split("\n")[0]
                    content = ANSWERS[question]
                self._reply(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                               "finish_reason": "stop"}]})  # fmt: skip

            def _reply(self, status, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def synth_config(**teacher) -> dict:
    return {
        "lang": "en", "prompt_version": "test-v1", "seed": 0,
        "teacher": {"kind": "openai", "model": "scripted", "concurrency": 3, "retries": 3,
                    "retry_base_seconds": 0.01, "timeout": 10, **teacher},
        "chunking": {"max_chars": 400, "overlap": 0, "min_chars": 40},
        "questions": {"per_chunk": 3, "system": "You write questions about documents.",
                      "prompt": "[Context]\n{{ context }}\n\nWrite {{ n }} questions.",
                      "examples": [{"context": "Desks are cleaned on Fridays.", "questions": ["When are desks cleaned?"]}]},
        "answers": {"system": "You answer from the context only, or say \"{{ refusal }}\"",
                    "prompt": "[Question]\n{{ question }}\n[Context]\n{{ context }}\n[Answer]"},
        "unanswerable": {"share": 1.0, "max_overlap": 0.6},
    }  # fmt: skip


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def endpoint(monkeypatch):
    server = FakeEndpoint()
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TUNELAB_TEACHER_BASE_URL", server.url)
    monkeypatch.setenv("TUNELAB_TEACHER_API_KEY", "sk-test")
    yield server
    server.close()


def test_endpoint_retry_filters_and_resume(docs, endpoint, tmp_path):
    cfg = validate_synth_dict(synth_config())
    out = tmp_path / "qa.jsonl"
    said: list[str] = []
    report = synthesize([str(docs)], cfg, out, allow_remote=True, progress=False, log=said.append)

    # what is sent where is said before anything is sent
    assert any("127.0.0.1" in s and "3 chunks" in s for s in said), said
    # 3 question requests + 5 answers (the duplicate is dropped before answering) + one 429 retried
    assert endpoint.calls == 3 + 5 + 1
    assert report["teacher_requests"]["retried"] == 1
    assert {r["auth"] for r in endpoint.requests} == {"Bearer sk-test"}
    assert {r["path"] for r in endpoint.requests} == {"/v1/chat/completions"}
    assert {r["model"] for r in endpoint.requests} == {"scripted"}

    assert report["dropped"] == {"unparsable_reply": 1, "duplicate_exact": 1, "answer_unsupported": 1,
                                 "answer_refused": 1}  # fmt: skip
    assert report["questions"]["parsed"] == 6 and report["rows"]["answerable"] == 3

    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    answerable = [r for r in rows if r["answerable"]]
    assert [(r["question"], r["answer"]) for r in answerable] == [
        ("How many days of paid leave do staff get?", "15 days of paid leave each year"),
        ("Until when can unused days carry over?", "until March 31."),
        ("In which class is train travel booked?", "second class."),
    ]
    for r in rows:
        assert tuple(r) == ROW_KEYS
        assert r["teacher"] == f"openai:scripted@{endpoint.url.split('/')[2]}" and r["prompt_version"] == "test-v1"
    assert answerable[0]["source"].endswith("leave.md") and answerable[0]["chunk"] == 0
    assert "15 days" in answerable[0]["context"]
    for r in (r for r in rows if not r["answerable"]):
        assert r["answer"] == REFUSAL_EN
        own = "leave.md" if "leave" in r["question"] or "carry" in r["question"] else "travel.md"
        assert not r["source"].endswith(own)  # paired with another document's chunk
    dropped = [json.loads(line) for line in (tmp_path / "qa.dropped.jsonl").read_text().splitlines()]
    assert {d["reason"] for d in dropped} == set(report["dropped"])
    assert json.loads((tmp_path / "qa.report.json").read_text())["rows"] == report["rows"]

    # resume: a second run pays for nothing
    calls = endpoint.calls
    again = synthesize([str(docs)], cfg, out, allow_remote=True, progress=False, log=said.append)
    assert endpoint.calls == calls
    assert again["teacher_requests"]["from_cache"] == 8 and again["teacher_requests"]["http"] == 0
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == rows


def test_interrupted_run_resumes_without_paying_twice(docs, endpoint, tmp_path):
    cfg = validate_synth_dict(synth_config(retries=0))
    endpoint.fail_first, endpoint.fail_answers = 0, True  # questions arrive, then the endpoint goes down
    with pytest.raises(TunelabError, match="gave up after 0 retries.*rerun to resume"):
        synthesize([str(docs)], cfg, tmp_path / "qa.jsonl", allow_remote=True, progress=False, log=lambda s: None)
    assert not (tmp_path / "qa.jsonl").exists()
    first = [r for r in endpoint.requests if "write questions" in r["messages"][0]["content"]]
    assert len(first) == 3
    endpoint.fail_answers, endpoint.requests = False, []
    report = synthesize([str(docs)], cfg, tmp_path / "qa.jsonl", allow_remote=True, progress=False, log=lambda s: None)
    # the rerun asks only for the answers: the questions came from the cache
    assert len(endpoint.requests) == 5 and all("write questions" not in r["messages"][0]["content"] for r in endpoint.requests)
    assert report["teacher_requests"]["from_cache"] == 3 and report["rows"]["answerable"] == 3


def test_remote_is_refused_without_allow_remote(docs, endpoint, tmp_path, capsys):
    cfg = validate_synth_dict(synth_config())
    with pytest.raises(TunelabError, match="--allow-remote") as err:
        synthesize([str(docs)], cfg, tmp_path / "qa.jsonl", progress=False)
    assert "127.0.0.1" in str(err.value)

    # the same through the command line: exit 2, one line, nothing sent
    import yaml

    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump(synth_config()))
    code = main(["data", "synth", str(docs), "--config", str(config), "--output", str(tmp_path / "qa.jsonl")])
    assert code == 2
    assert "--allow-remote" in capsys.readouterr().err
    # --teacher openai:MODEL turns a local config remote: refused the same way
    local = synth_config()
    local["teacher"] = {"kind": "local"}
    config.write_text(yaml.safe_dump(local))
    code = main(["data", "synth", str(docs), "--config", str(config), "--output", str(tmp_path / "qa.jsonl"),
                 "--teacher", "openai:scripted"])  # fmt: skip
    assert code == 2 and "--allow-remote" in capsys.readouterr().err
    assert endpoint.calls == 0 and not (tmp_path / "qa.jsonl").exists()


def test_cli_with_allow_remote_prints_plan_and_report(docs, endpoint, tmp_path, capsys):
    import yaml

    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump(synth_config()))
    out = tmp_path / "qa.jsonl"
    code = main(["data", "synth", str(docs), "--config", str(config), "--output", str(out), "--allow-remote",
                 "--set", "unanswerable.share=0"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert text.index("remote teacher: sending 3 chunks") < text.index("rows written")
    assert "dropped: unparsable_reply" in text and f"wrote {out}" in text
    assert len(out.read_text().splitlines()) == 3


def test_http_errors_that_are_not_transient_stop_with_the_reason(docs, endpoint, tmp_path):
    endpoint.fail_first, endpoint.status = 100, 401
    cfg = validate_synth_dict(synth_config())
    with pytest.raises(TunelabError, match="HTTP 401.*TUNELAB_TEACHER_API_KEY"):
        synthesize([str(docs)], cfg, tmp_path / "qa.jsonl", allow_remote=True, progress=False, log=lambda s: None)
    assert endpoint.calls <= 3  # no retries on 401


def test_missing_base_url_is_explained(docs, monkeypatch, tmp_path):
    monkeypatch.delenv("TUNELAB_TEACHER_BASE_URL", raising=False)
    cfg = validate_synth_dict(synth_config())
    with pytest.raises(TunelabError, match="TUNELAB_TEACHER_BASE_URL"):
        synthesize([str(docs)], cfg, tmp_path / "qa.jsonl", allow_remote=True, progress=False)
