"""`tunelab serve` through FastAPI's TestClient, on a tiny classification run and a tiny SFT run.

The classification run is a real 2-step training of the tiny Llama (helpers.base_config); the SFT
run is the 2-layer ChatML Llama overfit on two answers (one Korean, whose byte-level tokens cut
characters in half) and saved as a model folder by sft.export.save_merged.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient
from tests.helpers import base_config, one_thread, synthetic_rows, tiny_model, tiny_tokenizer, write_config

from tunelab.classify.predict import load_classifier
from tunelab.cli import main
from tunelab.serve.app import create_app
from tunelab.serve.batching import Batcher
from tunelab.serve.limits import Limits
from tunelab.serve.runs import load_runs
from tunelab.sft.stream import load_generator
from tunelab.sft.textstream import visible

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LOADERS = {"classification": load_classifier, "sft": load_generator}
FACTS = [("보험금 청구 기한은?", "3년 이내"), ("What is the capital of France?", "Paris")]
SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def cls_run(root, tiny_llama):
    import csv

    from tunelab.classify.run import train_classifier
    from tunelab.config import load_config

    data = root / "messages.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(synthetic_rows(60))
    cfg = write_config(root / "spam.yaml", base_config(data, tiny_llama, root / "spam", max_steps=2))
    train_classifier(load_config(cfg), log=lambda *_: None)
    return root / "spam"


@pytest.fixture(scope="module")
def sft_run(root):
    """The tiny ChatML model trained until it repeats FACTS' answers, saved as RUN/model."""
    from tunelab.sft.collate import collate
    from tunelab.sft.export import save_merged
    from tunelab.sft.generate import decoding_settings
    from tunelab.sft.objective import sft_loss
    from tunelab.sft.templates import build_template
    from tunelab.sft.tokenize import tokenize_messages

    tok = tiny_tokenizer()
    template = build_template("chat", tok, system="Be brief.")
    model = tiny_model(tok, seed=1)
    rows = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in FACTS]
    batch = collate([tokenize_messages(m, template, tok) for m in rows], tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss, n = sft_loss(model, batch)
        if (loss / n).item() < 0.01:
            break
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    save_merged(model.eval(), tok, template, root / "chat" / "model", meta={"max_length": 64},
                generation=decoding_settings(None, max_new_tokens=12))
    return root / "chat"


@pytest.fixture(scope="module")
def served(cls_run, sft_run):
    return load_runs([str(cls_run), str(sft_run)], LOADERS, device="cpu", log=lambda *_: None)


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served, KEY, Limits(max_body_bytes=4096, max_tokens=32))) as c:
        yield c


def ask(question: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": question}]


def assert_error(r, status: int, param=None, code=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and "Traceback" not in r.text
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# --- routes, key ---------------------------------------------------------------------------------


def test_models_lists_the_runs(client):
    r = client.get("/v1/models", headers=AUTH)
    assert r.status_code == 200
    assert {(m["id"], m["task"], m["object"]) for m in r.json()["data"]} == {("spam", "classification", "model"), ("chat", "sft", "model")}


ROUTES = [("get", "/v1/models"), ("get", "/metrics"), ("post", "/v1/classify"), ("post", "/v1/chat/completions"),
          ("post", "/v1/completions"), ("get", "/no/such/route")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_key_required_on_every_route_but_health(client, method, path):
    body = {"json": {"input": "hi"}} if method == "post" else {}
    assert_error(getattr(client, method)(path, **body), 401, code="missing_api_key")
    assert_error(getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}, **body), 401, code="invalid_api_key")
    assert_error(getattr(client, method)(path, headers={"Authorization": KEY}, **body), 401)  # no Bearer scheme
    assert client.get("/health").json() == {"status": "ok"}
    assert getattr(client, method)(path, headers=AUTH, **body).status_code != 401


# --- classification ------------------------------------------------------------------------------


def test_classify_probabilities_equal_predict(client, cls_run, root):
    texts = ["win a free prize now", "see you at lunch tomorrow", "urgent call now to claim cash", "보험금 청구"]
    (root / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["predict", str(cls_run), "--input", str(root / "in.txt"), "--output", str(root / "pred.jsonl")]) == 0
    expected = [json.loads(line) for line in (root / "pred.jsonl").read_text(encoding="utf-8").splitlines()]
    r = client.post("/v1/classify", headers=AUTH, json={"model": "spam", "input": texts})
    assert r.status_code == 200, r.text
    got = r.json()["data"]
    assert [g["index"] for g in got] == [0, 1, 2, 3]
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert max(abs(g["probs"][k] - e["probs"][k]) for g, e in zip(got, expected) for k in e["probs"]) < 1e-6
    one = client.post("/v1/classify", headers=AUTH, json={"input": texts[0]}).json()["data"]  # the only classifier by default
    assert len(one) == 1 and one[0]["probs"] == got[0]["probs"]


def test_batcher_takes_waiting_jobs_together_up_to_the_batch_size():
    import asyncio

    started, release, batches = threading.Event(), threading.Event(), []

    def run_batch(jobs):
        batches.append([j.payload for j in jobs])
        started.set()
        release.wait(5)
        return [j.payload for j in jobs]

    async def scenario():
        b = Batcher("t", run_batch, max_batch_size=3, max_wait_s=0.05, max_queue=8)
        b.start()
        first = asyncio.ensure_future(b.submit("a"))
        while not started.is_set():
            await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(b.submit(x)) for x in "bcde"]
        await asyncio.sleep(0.02)
        release.set()
        out = await asyncio.gather(first, *rest)
        b.stop(5)
        return out

    assert asyncio.run(scenario()) == list("abcde")
    assert batches == [["a"], ["b", "c", "d"], ["e"]]


@pytest.fixture
def blocked(cls_run, monkeypatch):
    """A fresh classifier whose predict waits until released (a busy worker)."""
    served = load_runs([str(cls_run)], LOADERS, device="cpu", log=lambda *_: None)
    clf = served["spam"].model
    started, release, real = threading.Event(), threading.Event(), clf.predict

    def slow(texts, batch_size):
        started.set()
        release.wait(10)
        return real(texts, batch_size)

    monkeypatch.setattr(clf, "predict", slow)
    yield served, started, release
    release.set()


def test_a_full_queue_answers_503_with_retry_after(blocked):
    served, started, release = blocked
    app = create_app(served, KEY, Limits(max_queue=1))
    answers = []
    with TestClient(app) as c:
        post = lambda: answers.append(c.post("/v1/classify", headers=AUTH, json={"input": "win cash"}))  # noqa: E731
        threads = [threading.Thread(target=post)]
        threads[0].start()
        assert started.wait(10)  # the worker holds the first request
        threads.append(threading.Thread(target=post))
        threads[1].start()
        queue = app.state.server.batchers["spam"].queue
        deadline = time.time() + 10
        while queue.qsize() < 1 and time.time() < deadline:
            time.sleep(0.01)
        r = c.post("/v1/classify", headers=AUTH, json={"input": "one more"})
        assert_error(r, 503, code="queue_full")
        assert r.headers["Retry-After"] == "1"
        release.set()
        for t in threads:
            t.join(10)
        assert [a.status_code for a in answers] == [200, 200]
        assert 'tunelab_requests_total{route="/v1/classify",status="503"} 1' in c.get("/metrics", headers=AUTH).text


def test_a_request_past_its_timeout_answers_504(blocked):
    served, started, release = blocked
    with TestClient(create_app(served, KEY, Limits(timeout_s=0.2))) as c:
        assert_error(c.post("/v1/classify", headers=AUTH, json={"input": "win cash"}), 504, code="timeout")
        release.set()


# --- generation ----------------------------------------------------------------------------------


def test_chat_greedy_equals_tunelab_generate(client, served):
    from tunelab.sft.generate import generate

    lm = served["chat"].model.lm
    for question, answer in FACTS:
        r = client.post("/v1/chat/completions", headers=AUTH, json={"model": "chat", "messages": ask(question), "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == "chat"
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": answer} and choice["finish_reason"] == "stop"
        assert choice["message"]["content"] == generate(lm.model, lm.tokenizer, lm.template, [ask(question)], max_new_tokens=12)[0]
        assert body["usage"]["completion_tokens"] > 0


def sse_events(r) -> list[bytes]:
    """The data of each server-sent event, as raw bytes (decoded by the test, not the client)."""
    return [e[len(b"data: "):] for e in r.read().split(b"\n\n") if e.strip()]


def test_streamed_korean_chunks_are_whole_utf8_and_join_to_the_answer(client, served):
    tok = served["chat"].model.lm.tokenizer
    ids = tok.encode("3년 이내", add_special_tokens=False)
    assert any(tok.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))  # tokens do cut characters
    with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                       json={"messages": ask("보험금 청구 기한은?"), "stream": True, "temperature": 0}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e.decode("utf-8", errors="strict")) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert all("\ufffd" not in d for d in deltas)
    assert len([d for d in deltas if d]) >= 2  # streamed piece by piece, not in one go
    assert "".join(deltas) == "3년 이내"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_completions_stop_strings_and_length(client):
    def complete(**extra):
        r = client.post("/v1/completions", headers=AUTH, json={"prompt": "What is the capital of France?", "temperature": 0, **extra})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]

    assert complete()["text"] == "Paris" and complete()["finish_reason"] == "stop"
    assert complete(stop=["ri"]) == {"index": 0, "text": "Pa", "logprobs": None, "finish_reason": "stop"}
    assert complete(max_tokens=1)["finish_reason"] == "length"
    with client.stream("POST", "/v1/completions", headers=AUTH,
                       json={"prompt": "What is the capital of France?", "stream": True, "stop": "ris"}) as r:
        events = sse_events(r)
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == "Pa"


def test_requests_decoded_together_get_the_answers_they_get_alone(served):
    """Batched decoding: prompts of different lengths (left padding), each request's own
    max_tokens and stop strings, streaming per request; every answer equals the one it gets alone."""
    gen = served["chat"].model

    def prep(question, **settings):
        base = {"max_tokens": None, "temperature": 0, "top_p": None, "seed": None, "stop": []}
        return gen.prepare(gen.chat_messages(ask(question)), **{**base, **settings})

    preps = [prep(FACTS[0][0]), prep(FACTS[1][0]), prep(FACTS[1][0], max_tokens=1), prep(FACTS[1][0], stop=["ri"])]
    assert len({len(p.prompt) for p in preps}) > 1  # the batch is padded
    alone = [gen.decode(p) for p in preps]
    deltas = [[] for _ in preps]
    together = gen.decode_many([(p, d.append, None) for p, d in zip(preps, deltas)])
    assert [c.text for c in alone] == ["3년 이내", "Paris", alone[2].text, "Pa"]
    assert together == alone
    assert [c.finish_reason for c in together] == ["stop", "stop", "length", "stop"] and together[2].completion_tokens == 1
    assert ["".join(d) for d in deltas] == [c.text for c in together]
    assert all("\ufffd" not in piece for d in deltas for piece in d)


def test_sampled_answers_with_a_seed_do_not_depend_on_batch_mates(served):
    gen = served["chat"].model
    settings = {"max_tokens": 8, "temperature": 1.5, "top_p": 0.95, "stop": []}
    mine = gen.prepare(gen.chat_messages(ask(FACTS[1][0])), seed=3, **settings)
    other = gen.prepare(gen.chat_messages(ask(FACTS[0][0])), seed=4, **settings)
    alone = gen.decode(mine)
    assert gen.decode(mine) == alone  # a seed repeats
    assert gen.decode_many([(other, None, None), (mine, None, None)])[1] == alone


def test_a_short_request_is_answered_before_its_long_batch_mate_ends(served):
    gen = served["chat"].model
    settings = {"temperature": 1.0, "top_p": None, "seed": 0, "stop": []}
    long, short = (gen.prepare(gen.chat_messages(ask(FACTS[0][0])), max_tokens=n, **settings) for n in (12, 1))
    calls = []
    out = gen.decode_many([(long, None, None), (short, None, None)], on_done=lambda i, done: calls.append((i, done.completion_tokens)))
    assert calls[0] == (1, 1) and [i for i, _ in calls] == [1, 0] and [c.completion_tokens for c in out] == [calls[1][1], 1]


def test_a_cancelled_request_stops_while_its_batch_mate_goes_on(served):
    gen = served["chat"].model
    cancelled = threading.Event()
    cancelled.set()
    long = {"max_tokens": 12, "temperature": 1.0, "top_p": None, "seed": 0, "stop": []}
    a, b = (gen.prepare(gen.chat_messages(ask(q)), **long) for q, _ in FACTS)
    gone, kept = gen.decode_many([(a, None, cancelled), (b, None, None)])
    assert gone.completion_tokens == 1 and kept == gen.decode(b)


def test_visible_text_holds_back_half_characters_and_stop_prefixes():
    assert visible("3년 이\ufffd", [], final=False) == "3년 이"
    assert visible("Paris\n[Qu", ["\n[Question]"], final=False) == "Paris"
    assert visible("Paris\n[Question] more", ["\n[Question]"], final=False) == "Paris"


# --- bad requests --------------------------------------------------------------------------------


def test_bad_requests_get_openai_error_bodies(client):
    post = lambda path, **kw: client.post(path, headers={**AUTH, **kw.pop("headers", {})}, **kw)  # noqa: E731
    chat = {"model": "chat", "messages": ask("2+2?")}
    assert_error(post("/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"}), 400, code="invalid_json")
    assert_error(post("/v1/classify", content=b'{"input": "hi"}', headers={"Content-Type": "application/x-www-form-urlencoded"}), 400, code="invalid_content_type")
    assert_error(post("/v1/chat/completions", json={"model": "chat"}), 400, param="messages", code="missing_field")
    assert_error(post("/v1/classify", json={}), 400, param="input", code="missing_field")
    assert_error(post("/v1/chat/completions", json={**chat, "n": 2}), 400, param="n")
    assert_error(post("/v1/chat/completions", json={**chat, "max_tokens": 33}), 400, param="max_tokens")
    assert_error(post("/v1/chat/completions", json={**chat, "temperature": -1}), 400, param="temperature")
    assert_error(post("/v1/chat/completions", json={**chat, "messages": [{"role": "robot", "content": "x"}]}), 400, param="messages.0.role")
    assert_error(post("/v1/chat/completions", json={**chat, "messages": [*ask("q"), {"role": "assistant", "content": "a"}]}), 400)
    assert_error(post("/v1/chat/completions", json={**chat, "model": "nope"}), 404, param="model", code="model_not_found")
    assert_error(post("/v1/chat/completions", json={**chat, "model": "spam"}), 400, param="model", code="wrong_task")
    assert_error(post("/v1/classify", json={"input": []}), 400, param="input")
    assert_error(post("/v1/classify", json={"input": ["ok", " "]}), 400, param="input.1")
    assert_error(post("/v1/classify", json={"input": "x" * 5000}), 413, code="body_too_large")
    assert_error(client.delete("/v1/models", headers=AUTH), 405)


def test_a_route_without_a_run_of_its_task_says_so(served):
    with TestClient(create_app({"chat": served["chat"]}, KEY)) as c:
        err = assert_error(c.post("/v1/classify", headers=AUTH, json={"input": "hi"}), 400, param="model", code="wrong_task")
        assert err["message"] == "this server holds no classification run (it holds chat (sft))"


def test_metrics_count_requests_and_batch_sizes(client):
    client.post("/v1/classify", headers=AUTH, json={"input": ["a b", "c d", "e f"]})
    text = client.get("/metrics", headers=AUTH).text
    assert 'tunelab_requests_total{route="/v1/classify",status="200"}' in text
    assert 'tunelab_request_seconds_count{route="/v1/classify"}' in text
    assert 'tunelab_batch_size_bucket{model="spam",le="4"}' in text


# --- the command ---------------------------------------------------------------------------------


def test_command_defaults_are_safe_and_bad_runs_are_named(tmp_path, cls_run, capsys, monkeypatch):
    from tunelab.cli import build_parser
    from tunelab.serve.auth import api_key

    args = build_parser().parse_args(["serve", "runs/x"])
    assert (args.host, args.dtype) == ("127.0.0.1", "fp32")
    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)
    key, generated = api_key()
    assert generated and len(key) >= 24 and api_key()[0] != key
    monkeypatch.setenv("TUNELAB_API_KEY", "mine")
    assert api_key() == ("mine", False)
    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    assert f"run folder not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["serve", str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: no trained model here" in capsys.readouterr().err
    assert main(["serve", str(cls_run), str(cls_run / "model")]) == 2
    assert "two runs are named 'spam'" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_decoding_together_matches_generate_per_family(arch):
    """Left padding, positions and the KV cache (Gemma 3's sliding window of 16 included, with
    prompts longer than it) in the batched loop give `tunelab generate`'s greedy tokens."""
    import types

    import transformers as tf
    from tests.helpers import tiny_config

    from tunelab.sft.batch_decode import decode_batch
    from tunelab.sft.generate import generate
    from tunelab.sft.stream import prepare
    from tunelab.sft.templates import build_template

    tok = tiny_tokenizer()
    config = tiny_config(arch, len(tok))
    config.pad_token_id, config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    config.initializer_range = {"llama": 0.2, "qwen2": 0.2, "gemma3": 0.02}[arch]  # random weights that write text, not only specials
    torch.manual_seed(3)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    lm = types.SimpleNamespace(model=model, tokenizer=tok, template=build_template("chat", tok, system="Be brief."), meta={})
    questions = ["Hi", "What is the capital of France and why is it there?", "보험금 청구 기한은 어떻게 되나요? 자세히 알려 주세요."]
    preps = [prepare(lm, ask(q), max_tokens=10, temperature=0, top_p=None, seed=None, stop=[]) for q in questions]
    assert max(len(p.prompt) for p in preps) > 16 > 0 and len({len(p.prompt) for p in preps}) == 3
    together = decode_batch(lm, [(p, None, None) for p in preps])
    assert all(len(done.text) >= 3 for done in together), together  # real text to compare
    for q, p, done in zip(questions, preps, together):
        assert done.text == generate(model, tok, lm.template, [ask(q)], max_new_tokens=10, batch_size=1)[0]
        assert done == decode_batch(lm, [(p, None, None)])[0]
