"""The judge as one more metric of `tunelab eval` on an SFT run, and `tunelab judge RUN` on the
test answers training wrote (a tiny document-QA LoRA run, a stub judge on 127.0.0.1)."""

from __future__ import annotations

import json

from tests.helpers import one_thread, read_json, tiny_model, tiny_tokenizer, write_config
from tests.test_judge_http import StubJudge, pointwise_script

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.sft.run import train_sft


def _rows(n: int) -> list[dict]:
    return [{"question": "How long is the refund period?", "context": f"The refund period is {k} days.", "answer": f"{k} days"}
            if k % 3 else {"question": "보험금 청구 기한은?", "context": "The capital of France is Paris.", "answer": "답변을 찾을 수 없습니다."}
            for k in range(2, 2 + n)]  # fmt: skip


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_calls_the_judge_and_judge_reads_a_run(tmp_path, capsys):
    tok = tiny_tokenizer()
    base = tmp_path / "tiny"
    tiny_model(tok).save_pretrained(str(base))
    tok.save_pretrained(str(base))
    data = _write(tmp_path / "docqa.jsonl", _rows(24))
    cfg = {"task": "sft", "output_dir": str(tmp_path / "run"),
           "data": {"train": str(data), "max_length": 128, "split": {"validation": 0.15, "test": 0.2}},
           "model": {"name": str(base), "lora": {"r": 4}},
           "train": {"max_steps": 4, "batch_size": 4, "lr": 2e-2, "eval_every": 4, "seed": 7},
           "sft": {"template": "docqa", "generation": {"max_new_tokens": 4, "max_rows": 3}}}  # fmt: skip
    judge = StubJudge(pointwise_script)
    try:
        with one_thread():
            train_sft(load_config(write_config(tmp_path / "run.yaml", cfg)), log=lambda *_: None)
            held_out = _write(tmp_path / "held-out.jsonl", _rows(4))
            scores, preds = tmp_path / "scores.json", tmp_path / "preds.jsonl"
            assert main(["eval", str(tmp_path / "run"), "--data", str(held_out), "--output", str(scores), "--predictions", str(preds),
                         "--max-new-tokens", "4", "--judge-rubric", "docqa", "--judge", "scripted", "--judge-endpoint", judge.url]) == 0
        got = read_json(scores)["judge"]
        assert got["rubric"] == "docqa" and got["scored"] + got["unparseable"] == 4 and got["judge"].startswith("openai:scripted@127.0.0.1")
        assert (tmp_path / "preds.judge-docqa" / "report.html").is_file()
        assert "judge (openai:scripted" in capsys.readouterr().out
        # the run's own test answers, with the doc-QA rubric chosen from the refusals among the references
        assert main(["judge", str(tmp_path / "run"), "--judge", "scripted", "--endpoint", judge.url]) == 0
        assert (tmp_path / "run" / "judge-docqa" / "scores.jsonl").is_file()
    finally:
        judge.close()
    # a remote judge is refused before anything is generated
    assert main(["eval", str(tmp_path / "run"), "--data", str(held_out), "--predictions", str(tmp_path / "p2.jsonl"),
                 "--judge-rubric", "docqa", "--judge", "gpt", "--judge-endpoint", "https://judge.example.com/v1"]) == 2
    assert "--allow-remote" in capsys.readouterr().err and not (tmp_path / "p2.jsonl").exists()
