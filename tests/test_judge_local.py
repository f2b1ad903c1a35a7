"""`tunelab judge` with a local judge: the tiny random-init Llama goes through tunelab's loader and
batched greedy generation. Its replies are noise, so every row must end unparseable after one retry
(never silently scored), and a re-run must not load the model or generate anything."""

from __future__ import annotations

import json
import re

import pytest
from tests.helpers import one_thread

from tunelab.cli import main
from tunelab.judge.workflow import judge_files
from tunelab.synth.teachers import LocalTeacher


def test_tiny_local_judge_end_to_end(tmp_path, tiny_llama, capsys, monkeypatch):
    answers = tmp_path / "answers.jsonl"
    rows = [{"prompt": "hi see you later", "generated": "ok"}, {"prompt": "free prize now", "generated": "spam"},
            {"prompt": "보험금 청구 기한은?", "generated": "3년"}]  # fmt: skip
    answers.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with one_thread():
        out, s = judge_files(answers, rubric="instruct", judge=str(tiny_llama), max_new_tokens=8, batch_size=2,
                             progress=False, log=lambda m: None)  # fmt: skip
    assert s["kind"] == "local" and s["judge"].startswith(f"local:{tiny_llama.name}@")
    assert s["params"]["temperature"] == 0 and s["params"]["seed"] == 0
    assert (s["rows"], s["scored"], s["unparseable"], s["requests_sent"]) == (3, 0, 3, 6)  # each garbage reply retried once
    scored = [json.loads(x) for x in (out / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(r["score"] is None and r["status"] == "unparseable" and r["retry_messages"][-2]["content"] == r["reply"] for r in scored)
    first = scored[0]["reply"]
    # a re-run through the CLI: everything from the cache, the same replies, the model never loaded
    capsys.readouterr()
    monkeypatch.setattr(LocalTeacher, "load", lambda self: pytest.fail("the model was loaded although every reply is cached"))
    assert main(["judge", str(answers), "--rubric", "instruct", "--judge", str(tiny_llama), "--max-new-tokens", "8", "--batch-size", "2"]) == 0
    assert re.search(r"requests sent\s+0 \(6 from cache\)", capsys.readouterr().out)
    assert json.loads((out / "scores.jsonl").read_text(encoding="utf-8").splitlines()[0])["reply"] == first
