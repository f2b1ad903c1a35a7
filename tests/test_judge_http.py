"""`tunelab judge` against a stub judge: a real HTTP server on 127.0.0.1 speaking the OpenAI
chat-completions API, answering from a script (good scores, chatter, garbage that a retry fixes,
garbage for ever) or always preferring the first position in pairwise prompts."""

from __future__ import annotations

import csv
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunelab.cli import main
from tunelab.judge.agreement import point_stats
from tunelab.judge.workflow import judge_files


def pointwise_script(messages: list[dict]) -> str:
    """Score by the answer shown; garbage first for 'mumble' (fixed by the retry), always for 'noise'."""
    user = messages[1]["content"]
    answer = user.split("[Answer to grade]\n")[1].split("\n")[0] if "[Answer to grade]" in user else user.split("[채점할 답변]\n")[1].split("\n")[0]
    retried = len(messages) > 2
    if "noise" in answer:
        return "%%%% no idea %%%%"
    if "mumble" in answer and not retried:
        return "It is quite good, maybe a four?"
    score = {"Paris": 5, "Lyon": 1, "mumble": 3, "3년": 4}.get((answer.split() or [""])[0].strip(".,"), 2)
    return f"Sure.\nSCORE: {score}\nREASON: graded {answer[:10]}"


def first_position(messages: list[dict]) -> str:
    return "WINNER: A\nREASON: the first one reads better"


def content_judge(messages: list[dict]) -> str:
    """Prefers whichever answer says Paris, in either position."""
    user = messages[1]["content"]
    a = user.split("[Answer A]\n")[1].split("\n")[0]
    return f"WINNER: {'A' if 'Paris' in a else 'B'}\nREASON: Paris is right"


class StubJudge:
    def __init__(self, script):
        self.script, self.calls, self.bodies = script, 0, []
        lock, outer = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.calls += 1
                    outer.bodies.append(body)
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": outer.script(body["messages"])}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub():
    servers = []

    def start(script):
        servers.append(StubJudge(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


ROWS = [
    {"prompt": "Capital of France?", "reference": "Paris", "generated": "Paris."},
    {"prompt": "Capital of France, again?", "reference": "Paris", "generated": "Lyon, I think."},
    {"prompt": "What is the capital?", "reference": "Paris", "generated": "mumble mumble"},
    {"prompt": "Say something.", "generated": "noise noise"},
    {"prompt": "보험금 청구 기한은?", "reference": "3년", "generated": "3년 이내입니다.", "context": "보험금 청구는 사고일로부터 3년 이내에 해야 합니다."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_pointwise_retry_unparseable_cache_and_outputs(tmp_path, stub):
    judge = stub(pointwise_script)
    answers = write_jsonl(tmp_path / "answers.jsonl", ROWS)
    out, s = judge_files(answers, rubric="docqa", judge="scripted", endpoint=judge.url, progress=False, log=lambda m: None)
    assert out == tmp_path / "answers.judge-docqa"
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["score"] for r in rows] == [5, 1, 3, None, 4]
    assert [r["status"] for r in rows] == ["ok", "ok", "retried", "unparseable", "ok"]
    assert rows[3]["reason"] is None and rows[3]["retry_reply"] == "%%%% no idea %%%%"  # counted, never scored
    assert (s["scored"], s["retried"], s["unparseable"], s["rows"]) == (4, 1, 1, 5)
    assert s["requests_sent"] == 7 and judge.calls == 7  # 5 + one retry each for the two garbage replies
    # the exact prompts are saved, and they are what the server received
    assert rows[4]["messages"] in [b["messages"] for b in judge.bodies] and "[채점할 답변]\n3년 이내입니다." in rows[4]["messages"][1]["content"]
    assert rows[4]["lang"] == "ko" and rows[0]["lang"] == "en"
    assert all(b["temperature"] == 0 and b["seed"] == 0 and b["model"] == "scripted" for b in judge.bodies)
    assert s["histogram"] == {"1": 1, "2": 0, "3": 1, "4": 1, "5": 1}
    assert {"report.md", "report.html", "summary.json", "rubric.json", "judge-cache.sqlite"} <= {p.name for p in out.iterdir()}
    assert "unparseable | 1 (20.0%)" in (out / "report.md").read_text(encoding="utf-8")
    # a re-run is served entirely from the cache: no new HTTP call, the same scores
    _, again = judge_files(answers, rubric="docqa", judge="scripted", endpoint=judge.url, progress=False, log=lambda m: None)
    assert judge.calls == 7 and again["requests_sent"] == 0 and again["from_cache"] == 7
    assert [json.loads(x)["score"] for x in (out / "scores.jsonl").read_text(encoding="utf-8").splitlines()] == [5, 1, 3, None, 4]


def test_agreement_with_human_scores_in_the_report(tmp_path, stub):
    judge = stub(pointwise_script)
    answers = write_jsonl(tmp_path / "answers.jsonl", ROWS)
    human = tmp_path / "graded.csv"
    with open(human, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "human_score"])
        w.writerows([[r["prompt"], h] for r, h in zip(ROWS, [5, 2, 3, 1, 5])])
    out, s = judge_files(answers, rubric="docqa", judge="scripted", endpoint=judge.url, human=human, progress=False, log=lambda m: None)
    agr = s["human"]["agreement"]
    assert agr["n"] == 4  # the unparseable row has no judge score
    expected = point_stats([5, 1, 3, 4], [5, 2, 3, 5], (1, 5))
    assert agr["kappa"]["value"] == pytest.approx(expected["kappa"], abs=1e-4) and agr["exact"]["value"] == 0.5
    assert agr["spearman"]["low"] <= agr["spearman"]["value"] <= agr["spearman"]["high"]
    png = (out / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "Cohen&#x27;s κ (quadratic)" in page
    assert "![judge vs human](confusion.png)" in (out / "report.md").read_text(encoding="utf-8")
    rows = [json.loads(x) for x in (out / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["human"] for r in rows] == [5, 2, 3, 1, 5]


def test_pairwise_both_orders_cancel_a_first_position_judge(tmp_path, stub):
    a = write_jsonl(tmp_path / "tuned.jsonl", [{"prompt": f"Capital {i}?", "generated": "Paris"} for i in range(4)])
    b = write_jsonl(tmp_path / "base.jsonl", [{"prompt": f"Capital {i}?", "generated": "Lyon"} for i in range(4)])
    biased = stub(first_position)
    out, s = judge_files(a, against=b, rubric="docqa", judge="scripted", endpoint=biased.url, progress=False, log=lambda m: None)
    assert out == tmp_path / "tuned-vs-base.judge-docqa"
    assert biased.calls == 8  # every pair in both orders
    assert (s["win"], s["tie"], s["loss"]) == (0, 4, 0)  # position preference alone wins nothing
    assert s["order_disagreement_rate"] == 1.0 and s["first_position_rate"] == 1.0 and s["win_rate"] == 0.5
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert pairs[0]["orders_disagree"] is True and pairs[0]["ab"]["messages"][1]["content"].index("Paris") < pairs[0]["ab"]["messages"][1]["content"].index("Lyon")
    assert pairs[0]["ba"]["messages"][1]["content"].index("Lyon") < pairs[0]["ba"]["messages"][1]["content"].index("Paris")

    fair = stub(content_judge)
    _, s = judge_files(a, against=b, rubric="docqa", judge="scripted", endpoint=fair.url, output=tmp_path / "fair", progress=False, log=lambda m: None)
    assert (s["win"], s["tie"], s["loss"], s["order_disagreement_rate"], s["win_rate"]) == (4, 0, 0, 0.0, 1.0)
    assert s["first_position_rate"] == 0.5


def test_remote_refused_without_allow_remote_and_nothing_sent(tmp_path, capsys):
    answers = write_jsonl(tmp_path / "answers.jsonl", ROWS)
    rc = main(["judge", str(answers), "--judge", "gpt", "--endpoint", "https://judge.example.com/v1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--allow-remote" in err and "judge.example.com" in err and "Traceback" not in err
    assert not (tmp_path / "answers.judge-docqa" / "scores.jsonl").exists()


def test_remote_judge_says_what_leaves(tmp_path, stub, monkeypatch):
    """A remote endpoint (here: the stub, treated as remote) announces what it sends, first."""
    from tunelab.judge import judges

    judge = stub(pointwise_script)
    monkeypatch.setattr(judges, "is_loopback", lambda url: False)
    answers = write_jsonl(tmp_path / "answers.jsonl", ROWS[:2])
    logged = []
    judge_files(answers, rubric="docqa", judge="scripted", endpoint=judge.url, allow_remote=True, progress=False, log=logged.append)
    assert any(m.startswith("remote judge: sending up to 4 requests") and "127.0.0.1" in m for m in logged)


def test_cli_loopback_run_and_bad_inputs(tmp_path, stub, capsys):
    judge = stub(pointwise_script)
    answers = write_jsonl(tmp_path / "answers.jsonl", ROWS[:2])
    assert main(["judge", str(answers), "--rubric", "docqa", "--judge", "scripted", "--endpoint", judge.url]) == 0
    out = capsys.readouterr().out
    assert "scored" in out and "wrote" in out
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "generated": "a"}, {"question": "q2"}])
    cases = [
        (["judge", str(bad), "--endpoint", judge.url, "--judge", "m"], "bad.jsonl:2: no answer field"),
        (["judge", str(answers), "--rubric", "nope.yaml"], "rubric file not found: nope.yaml"),
        (["judge", str(answers), "--rubric", "docqa", "--endpoint", judge.url], "--endpoint needs --judge MODEL"),
        (["judge", str(answers), "--repeats", "3"], "--temperature > 0"),
        (["judge", str(answers), "--human", str(tmp_path / "missing.csv")], "missing.csv: no such file"),
        (["judge", str(tmp_path / "nothing.jsonl")], "answers file not found"),
        (["judge", str(answers), "--against", str(bad)], "bad.jsonl:2: no answer field"),
        (["judge", str(answers), "--endpoint", "ftp://x", "--judge", "m"], "not an http(s) URL"),
        (["judge", str(answers), "--limit", "0"], "--limit must be at least 1"),
        (["judge", str(answers), "--endpoint", judge.url, "--judge", "m", "--max-new-tokens", "4"], "--max-new-tokens: Input should be greater than or equal to 8"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "internal error" not in err, (argv, err)


def test_self_consistency_of_a_sampled_judge(tmp_path, stub):
    judge = stub(pointwise_script)
    answers = write_jsonl(tmp_path / "answers.jsonl", ROWS[:3])
    _, s = judge_files(answers, rubric="docqa", judge="scripted", endpoint=judge.url, repeats=3, temperature=0.7,
                       progress=False, log=lambda m: None)  # fmt: skip
    seeds = sorted({b["seed"] for b in judge.bodies})
    assert seeds == [0, 1, 2] and all(b["temperature"] == 0.7 for b in judge.bodies)
    c = s["self_consistency"]
    assert c["runs"] == 3 and c["identical"] == 1.0 and c["exact"] == 1.0  # the script is deterministic


def test_run_folder_and_two_judges_compared(tmp_path, stub):
    run = tmp_path / "runs" / "docqa"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("task: sft\n")
    write_jsonl(run / "test_predictions.jsonl", [{"source": f"test.jsonl:{i}", **r} for i, r in enumerate(ROWS[:3], 1)])
    judge = stub(pointwise_script)
    out, first = judge_files(run, judge="scripted", endpoint=judge.url, progress=False, log=lambda m: None)
    assert out == run / "judge-instruct" and first["rubric"] == "instruct"  # the run was not trained with a docqa template
    # a second judge against the first one's scores, the same way as against people
    _, second = judge_files(run, rubric="instruct", judge="other", endpoint=judge.url, human=out / "scores.jsonl", human_column="score",
                            output=tmp_path / "second", progress=False, log=lambda m: None)  # fmt: skip
    assert second["human"]["agreement"]["n"] == 3 and second["human"]["agreement"]["kappa"]["value"] == 1.0
    assert judge.calls == 4 + 4  # "other" is another judge: its own cache keys, asked afresh
