"""A real (tiny) SFT run end to end, in process: run folder, metrics, resume, export parity, CLI.

The model is the 2-layer Llama of test_sft_tiny with its ChatML byte-level tokenizer, saved as a
local HF folder; the data are short synthetic document-QA rows (English and Korean, a third
unanswerable) and prompt/completion rows.
"""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
from tests.helpers import one_thread, read_json, tiny_model, tiny_tokenizer, write_config

from tunelab.cli import main
from tunelab.config import load_config, validate_dict
from tunelab.errors import TunelabError
from tunelab.sft.run import train_sft

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # module scope: it must also cover the module-scoped runs below
    with one_thread():
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("sft")


@pytest.fixture(scope="module")
def base_dir(root):
    tok = tiny_tokenizer()
    folder = root / "tiny-chatml"
    tiny_model(tok, seed=0).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def docqa_rows(n: int = 36, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randint(2, 60)
        if i % 3 == 2:
            ko = i % 2 == 1
            rows.append({"question": "보험금 청구 기한은?" if ko else "How long is the refund period?",
                         "context": f"The capital of France is Paris. Note {i}.",
                         "answer": "답변을 찾을 수 없습니다." if ko else "The answer cannot be found."})
        elif i % 2:
            rows.append({"question": "보험금 청구 기한은?", "context": f"보험금 청구는 {k}년 이내.", "answer": f"{k}년 이내"})
        else:
            rows.append({"question": "How long is the refund period?",
                         "context": f"The refund period is {k} days.", "answer": f"{k} days"})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def docqa_file(root):
    return write_jsonl(root / "docqa.jsonl", docqa_rows())


def sft_config(data, model_dir, out, *, sft=None, model=None, data_opts=None, **train) -> dict:
    return {
        "task": "sft",
        "output_dir": str(out),
        "data": {"train": str(data), "max_length": 160, "split": {"validation": 0.15, "test": 0.2}, **(data_opts or {})},
        "model": {"name": str(model_dir), **(model or {})},
        "train": {"max_steps": 20, "batch_size": 4, "lr": 2e-2, "warmup": 0.1, "eval_every": 5, "seed": 7, **train},
        "sft": {"template": "docqa", "generation": {"max_new_tokens": 8, "max_rows": 4}, **(sft or {})},
    }


def run_config(root, name, *args, **kwargs):
    path = write_config(root / f"{name}.yaml", sft_config(*args, out=root / name, **kwargs))
    return load_config(path)


@pytest.fixture(scope="module")
def lora_run(root, base_dir, docqa_file):
    """A LoRA run with the bilingual document-QA template."""
    cfg = run_config(root, "lora", docqa_file, base_dir, model={"lora": {"r": 8}})
    return root / "lora", train_sft(cfg, **QUIET)


@pytest.fixture(scope="module")
def chat_run(root, base_dir):
    """A full fine-tune with the model's own (ChatML) chat template on prompt/completion rows."""
    facts = [("What is the capital of France?", "Paris"), ("Name a primary colour.", "Red"),
             ("2+2?", "4"), ("Say hi.", "hi"), ("Refund period?", "30 days"), ("보험금 청구 기한은?", "3년 이내")]
    data = write_jsonl(root / "facts.jsonl", [{"prompt": p, "completion": c} for p, c in facts * 4])
    cfg = run_config(root, "chat", data, base_dir, model={"trainable": "all"},
                     sft={"template": "chat", "system": "Be brief."}, lr=1e-2, max_steps=200, eval_every=50)
    return root / "chat", train_sft(cfg, **QUIET)


# ---------------------------------------------------------------------------------------------


def test_run_folder_files_and_metrics(lora_run):
    run, summary = lora_run
    for name in ("config.yaml", "sft_template.json", "data_report.json", "metrics.jsonl", "test_metrics.json",
                 "test_predictions.jsonl", "examples.md", "summary.json", "checkpoints/best/info.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "model/model.safetensors", "model/config.json", "model/tokenizer.json", "model/tunelab.json",
                 "model/sft_template.json", "model/generation_config.json", "model/chat_template.jinja"):
        assert (run / name).is_file(), name
    report = read_json(run / "data_report.json")
    assert report["sizes"] == {"train": 24, "validation": 5, "test": 7}
    assert set(report["truncated"]) == {"train", "validation", "test"} and report["skipped_rows"] == {}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("split") == "validation"]
    assert [r["step"] for r in val] == [5, 10, 15, 20]
    assert all(abs(r["perplexity"] - torch.tensor(r["loss"]).exp().item()) < 1e-3 * r["perplexity"] for r in val)
    test = read_json(run / "test_metrics.json")
    assert {"loss", "perplexity", "exact_match", "token_f1", "rouge_l", "chrf", "answer_exact_match",
            "refusal_precision", "refusal_recall", "n"} <= set(test)
    assert test["n"] == 4  # generation.max_rows
    assert summary["task"] == "sft" and summary["trainable"] == "lora"
    assert summary["trainable_params"] < summary["total_params"] / 4
    assert summary["validation"]["loss"] == min(r["loss"] for r in val)  # the best checkpoint
    assert "| # | prompt | reference | generated | chrF |" in (run / "examples.md").read_text()
    meta = read_json(run / "model/tunelab.json")
    assert meta["task"] == "sft" and meta["template"] == "docqa" and meta["generation"]["max_new_tokens"] == 8


def test_adapter_with_peft_gives_the_merged_logits(lora_run, base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _ = lora_run
    adapter_cfg = read_json(run / "adapter/adapter_config.json")
    assert adapter_cfg["task_type"] == "CAUSAL_LM" and adapter_cfg["base_model_name_or_path"] == str(base_dir)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    peft = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(run / "model")).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250]])
    with torch.no_grad():
        a, b, c = peft(input_ids=ids).logits, merged(input_ids=ids).logits, plain(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(b, c, atol=1e-4)  # LoRA did change the model


def _hf_greedy(folder, messages, max_new_tokens):
    """Generate with transformers alone, from the exported folder: chat template, greedy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    hf_msgs = [{"role": m["role"], "content": m["content"], **m.get("fields", {})} for m in messages]
    prompt = list(tok.apply_chat_template(hf_msgs, add_generation_prompt=True, tokenize=True, return_dict=False))
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens)
    new = out[0, len(prompt):].tolist()
    stops = model.generation_config.eos_token_id
    stops = stops if isinstance(stops, list) else [stops]
    end = next((k for k, t in enumerate(new) if t in stops), len(new))
    return prompt, tok.decode(new[:end], skip_special_tokens=True)


@pytest.mark.parametrize("which", ["lora", "chat"])
def test_export_parity_with_transformers_generate(which, lora_run, chat_run, root, capsys):
    from tunelab.sft.export import load_sft
    from tunelab.sft.formats import row_to_messages
    from tunelab.sft.generate import generate, trim_at_stop
    from tunelab.sft.tokenize import encode_prompt

    run = (lora_run if which == "lora" else chat_run)[0]
    out = root / f"exported-{which}"
    assert main(["export", str(run), "--out", str(out), "--force"]) == 0
    assert (out / "adapter" / "adapter_config.json").is_file() == (which == "lora")
    rows = ([{"question": "How long is the refund period?", "context": "The refund period is 12 days."},
             {"question": "보험금 청구 기한은?", "context": "보험금 청구는 7년 이내."}] if which == "lora" else
            [{"prompt": "What is the capital of France?"}, {"prompt": "보험금 청구 기한은?"}])
    lm = load_sft(out, "cpu")
    ours = generate(lm.model, lm.tokenizer, lm.template, rows, max_new_tokens=12)
    for row, text in zip(rows, ours):
        msgs = row_to_messages(row, require_answer=False)
        prompt, hf_text = _hf_greedy(out, msgs, 12)
        assert prompt == encode_prompt(msgs, lm.template, lm.tokenizer)  # same prompt ids
        assert trim_at_stop(hf_text, lm.template.stop_strings(lm.tokenizer)).strip() == text
    if which == "chat":
        assert ours[0] == "Paris"  # the tiny model learned its facts


def test_saved_template_is_reused_not_rebuilt(lora_run, monkeypatch):
    from tunelab.sft import templates
    from tunelab.sft.export import load_sft
    from tunelab.sft.generate import generate

    run, _ = lora_run
    row = {"question": "How long is the refund period?", "context": "The refund period is 9 days."}
    lm = load_sft(run, "cpu")
    before = generate(lm.model, lm.tokenizer, lm.template, [row], max_new_tokens=6)
    assert read_json(run / "model/sft_template.json") == templates.build_template("docqa").to_dict()
    # the built-in wording changes in a later version: the run keeps rendering its own text
    monkeypatch.setitem(templates.BUILTIN, "docqa", {**templates.BUILTIN["docqa"], "prompt": "Q: {{ question }}\nA: "})
    again = load_sft(run, "cpu")
    assert again.template.to_dict() == lm.template.to_dict()
    assert generate(again.model, again.tokenizer, again.template, [row], max_new_tokens=6) == before


def test_resume_after_crash_gives_the_same_final_loss(root, base_dir, docqa_file, monkeypatch):
    kw = dict(model={"trainable": "all"}, max_steps=12, save_every=4, eval_every=4, lr=5e-3,
              sft={"generation": {"max_new_tokens": 4, "max_rows": 2}})
    full = train_sft(run_config(root, "full", docqa_file, base_dir, **kw), **QUIET)
    cfg = run_config(root, "crash", docqa_file, base_dir, **kw)
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # after the checkpoint of step 4... and 4 more steps: killed in step 7
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_sft(cfg, **QUIET)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert not (root / "crash" / "summary.json").exists()
    resumed = train_sft(cfg, resume=True, **QUIET)
    assert resumed["steps"] == full["steps"] == 12
    assert resumed["validation"] == full["validation"]
    assert resumed["train"] == full["train"]
    assert resumed["test"]["loss"] == full["test"]["loss"]
    assert resumed["train"]["loss"] < 5.8  # it learned (random init: about ln(500) = 6.2)


def test_chat_reads_stdin_keeps_history_and_resets(chat_run, monkeypatch, capsys):
    import tunelab.sft.generate as gen_module

    run, _ = chat_run
    seen = []
    real = gen_module.generate

    def spy(model, tok, template, prompts, **kw):
        seen.append(len(prompts[0]))
        return real(model, tok, template, prompts, **kw)

    monkeypatch.setattr(gen_module, "generate", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?\n2+2?\n/reset\nSay hi.\n/exit\nnever read\n"))
    assert main(["chat", str(run), "--max-new-tokens", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Paris" and "(history cleared)" in lines and len(lines) == 4
    assert seen == [1, 3, 1]  # user; user, assistant, user; after /reset: user


def test_generate_and_eval_commands(lora_run, chat_run, root, capsys):
    run, _ = lora_run
    assert main(["generate", str(run), "--prompt", "How long is the refund period?"]) == 2
    assert "pass --context" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "How long?", "--prompt", "기한은?", "--context", "The refund period is 3 days.",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("[1] ")
    prompts = root / "prompts.txt"
    prompts.write_text("What is the capital of France?\n\nSay hi.\n", encoding="utf-8")
    out = root / "answers.jsonl"
    assert main(["generate", str(chat_run[0]), "--input", str(prompts), "--output", str(out)]) == 0
    answers = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [a["prompt"] for a in answers] == ["What is the capital of France?", "Say hi."] and answers[0]["generated"] == "Paris"

    scores = root / "eval.json"
    data = write_jsonl(root / "eval-rows.jsonl", docqa_rows(6, seed=5))
    assert main(["eval", str(run), "--data", str(data), "--output", str(scores), "--max-new-tokens", "4",
                 "--predictions", str(root / "preds.jsonl")]) == 0
    got = read_json(scores)
    assert got["n"] == 6 and got["n_refusal_refs"] == 2 and got["loss"] > 0 and "chrf" in got
    assert len((root / "preds.jsonl").read_text().splitlines()) == 6
    assert main(["predict", str(run), "--input", str(prompts)]) == 2
    assert "not a classifier" in capsys.readouterr().err


def test_bad_rows_name_the_line_or_are_skipped(root, base_dir):
    rows = docqa_rows(12)
    rows[2] = {"question": "q?", "context": "c."}  # line 3: no answer
    rows[6]["answer"] = " "  # line 7: empty answer
    data = write_jsonl(root / "bad.jsonl", rows)
    cfg = run_config(root, "bad", data, base_dir, max_steps=1)
    with pytest.raises(TunelabError, match=r"bad.jsonl:3: missing field 'answer'"):
        train_sft(cfg, **QUIET)
    cfg = run_config(root, "skip", data, base_dir, max_steps=1, data_opts={"bad_rows": "skip"},
                     sft={"generation": {"max_new_tokens": 2, "max_rows": 1}})
    train_sft(cfg, **QUIET)
    report = read_json(root / "skip" / "data_report.json")
    assert report["skipped_rows"] == {"missing field 'answer'": 1, "field 'answer' is empty (the answer must not be empty)": 1}
    assert sum(report["sizes"].values()) == 10


def test_too_long_rows_are_named_or_skipped_and_truncation_is_counted(root, base_dir):
    rows = docqa_rows(12)
    rows[4]["answer"] = "days " * 80  # line 5: the answer alone passes max_length
    rows[0]["context"] = "The refund period is 5 days. " * 20  # line 1: context cut, answer kept
    data = write_jsonl(root / "long.jsonl", rows)
    with pytest.raises(TunelabError, match=r"long.jsonl:5: needs \d+ tokens even with its context removed"):
        train_sft(run_config(root, "long", data, base_dir, max_steps=1), **QUIET)
    train_sft(run_config(root, "long-skip", data, base_dir, max_steps=1, data_opts={"bad_rows": "skip"},
                         sft={"generation": {"max_new_tokens": 2, "max_rows": 1}}), **QUIET)
    report = read_json(root / "long-skip" / "data_report.json")
    assert sum(report["too_long_skipped"].values()) == 1 and sum(report["truncated"].values()) >= 1


def test_split_by_keeps_documents_unseen():
    from collections import Counter

    from tunelab.sft.data import split_items, to_items

    rows = [{**r, "context": f"doc {i // 3}", "lang": "ko" if i % 2 else "en", "_line": i + 1}
            for i, r in enumerate(docqa_rows(60))]
    items = to_items(rows, "docqa", "d.jsonl", "error", Counter())
    train, val, test = split_items(items, 0.1, 0.2, seed=3, group_key="context")
    docs = [{it.row["context"] for it in part} for part in (train, val, test)]
    assert not (docs[0] & docs[1]) and not (docs[0] & docs[2]) and not (docs[1] & docs[2])
    assert len(train) + len(val) + len(test) == 60 and 9 <= len(test) <= 15
    assert split_items(items, 0.1, 0.2, seed=3, group_key="context")[2] == test  # seeded
    with pytest.raises(TunelabError, match=r"d.jsonl:1: no field 'source'"):
        split_items(items, 0.1, 0.2, seed=3, group_key="source")


MINIMAL = {"task": "sft", "data": {"train": "x.jsonl"}, "model": {"name": "asset:smollm2-135m-instruct"}}


def _with(**parts):
    raw = json.loads(json.dumps(MINIMAL))
    for key, value in parts.items():
        section, _, field = key.partition("__")
        raw.setdefault(section, {})[field] = value
    return raw


def test_sft_config_validation():
    cfg = validate_dict(MINIMAL)
    assert cfg.model.trainable == "lora" and cfg.sft.template == "chat" and cfg.sft.generation.do_sample is False
    assert validate_dict(_with(model__trainable="all")).model.trainable == "all"
    assert validate_dict({k: v for k, v in MINIMAL.items() if k != "task"}).sft is None  # classification
    bad = [
        (_with(model__pooling="mean"), "model.pooling is a classification setting"),
        (_with(model__head_dropout=0.1), "model.head_dropout is a classification setting"),
        (_with(data__balance="undersample"), "data.balance is a classification setting"),
        (_with(model__trainable="last_blocks"), "task sft trains lora"),
        (_with(train__early_stopping={"metric": "macro_f1"}), "best checkpoint by validation loss"),
        (_with(sft__template="jinja"), "set sft.prompt"),
        (_with(sft__prompt="{{ content }}"), "only used with sft.template: jinja"),
        (_with(sft__template="alpaca", sft__user_template="docqa-ko"), "only used with sft.template: chat"),
        (_with(sft__tempalte="chat"), "did you mean 'sft.template'"),
        ({**{k: v for k, v in MINIMAL.items() if k != "task"}, "sft": {}}, "only used with task: sft"),
    ]
    for raw, message in bad:
        with pytest.raises(TunelabError, match=message):
            validate_dict(raw, "in c.yaml")
    assert validate_dict(_with(sft__template="jinja", sft__prompt="Q: {{ content }}\nA: ")).sft.prompt


def test_validate_command_prints_the_sft_section(root, capsys):
    path = write_config(root / "v.yaml", MINIMAL)
    assert main(["validate", str(path), "sft.template=docqa-ko", "sft.split_by=context"]) == 0
    out = capsys.readouterr().out
    assert "template: docqa-ko" in out and "trainable: lora" in out and "split_by: context" in out
    assert main(["validate", str(path), "model.pooling=mean"]) == 2
    assert "model.pooling is a classification setting" in capsys.readouterr().err


def test_export_command_copies_a_classification_run(tmp_path, spam_csv, tiny_llama, capsys):
    from tests.helpers import base_config
    from transformers import AutoModelForSequenceClassification

    from tunelab.classify.run import train_classifier

    cfg = load_config(write_config(tmp_path / "c.yaml", base_config(spam_csv, tiny_llama, tmp_path / "cls", max_steps=2)))
    train_classifier(cfg, **QUIET)
    assert main(["export", str(tmp_path / "cls"), "--out", str(tmp_path / "out")]) == 0
    assert "AutoModelForSequenceClassification" in capsys.readouterr().out
    AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    assert main(["export", str(tmp_path / "cls"), "--out", str(tmp_path / "out")]) == 2  # no silent overwrite
    assert "pass --force" in capsys.readouterr().err


def test_loss_of_a_batch_without_targets_is_zero_with_a_gradient():
    from tunelab.sft.collate import collate
    from tunelab.sft.objective import sft_loss

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}], pad_id=tok.pad_token_id)
    loss, n = sft_loss(model, batch)
    assert loss.item() == 0.0 and int(n) == 0
    loss.backward()  # the loop may call backward on it


def test_sweep_of_an_sft_config_trains_sft_cells(root, base_dir, docqa_file):
    """The sweep worker dispatches on the config's task: SFT cells are SFT runs (summary task sft,
    a token loss), not classification runs of the same rows."""
    import yaml

    from tunelab.sweep import run_sweep

    write_config(root / "sweep-base.yaml", sft_config(docqa_file, base_dir, root / "unused", max_steps=2, eval_every=2,
                                                   model={"lora": {"r": 4}}))
    spec = {"base": "sweep-base.yaml", "output_dir": str(root / "sweep"), "seeds": [1],
            "groups": {"rank": {"variants": {"r4": {"model.lora.r": 4}, "r8": {"model.lora.r": 8}}}}}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_sweep(path, isolate=False, log=lambda *_: None)
    assert len(result["outcome"].ran) == 2 and not result["outcome"].failed
    for row in result["rows"]:
        summary = read_json(f"{row['folder']}/summary.json")
        assert summary["task"] == "sft" and row["test_loss"] == summary["test"]["loss"] > 0
        assert row["test_accuracy"] is None


def test_cv_of_an_sft_config_reports_the_test_loss_over_folds(root, base_dir, docqa_file):
    """`tunelab cv` of an SFT config: each fold an SFT run, mean ± std of the fold test losses;
    with sft.split_by the rows of one context never sit in two folds."""
    from tunelab.sweep.cv import cross_validate, format_table

    cfg = run_config(root, "cv", docqa_file, base_dir, max_steps=2, eval_every=2, sft={"split_by": "context"})
    result = cross_validate(cfg, 3, root / "cv", isolate=False, log=lambda *_: None)
    assert result["finished_folds"] == 3 and result["task"] == "sft" and result["pooled_test"] is None
    losses = [f["test_loss"] for f in result["per_fold"]]
    assert all(x > 0 for x in losses)
    assert result["mean_std"]["test_loss"]["mean"] == pytest.approx(sum(losses) / 3)
    contexts = [{json.loads(line)["context"] for line in (root / "cv" / "folds" / f"fold-{i}" / "test.jsonl").open(encoding="utf-8")}
                for i in range(3)]
    assert sum(len(c) for c in contexts) == len(set().union(*contexts))
    assert read_json(root / "cv" / "runs" / "fold-0" / "summary.json")["task"] == "sft"
    assert "test loss" in format_table(result)


def test_pinned_losses_of_a_tiny_lora_run(root, base_dir, docqa_file):
    """Six LoRA steps on the document-QA rows give these token losses: a refactor that changes the
    split, the template, the loss mask or the loss itself shows up here (printed identically by the
    code before and after the layout change of issue 13)."""
    cfg = run_config(root, "pinned", docqa_file, base_dir, max_steps=6, eval_every=3, model={"lora": {"r": 8}})
    s = train_sft(cfg, **QUIET)
    got = (s["train"]["loss"], s["validation"]["loss"], s["test"]["loss"])
    assert got == pytest.approx((6.095497215187157, 6.089713202582465, 6.098006475539434), rel=1e-5)
