"""synth with a local teacher: a tiny random-init causal LM exercises loading, chat templates,
batched generation, truncation and the cache mechanically (its replies are noise, so the filters
drop them; the scripted HTTP tests check the filters on meaningful replies)."""

from __future__ import annotations

import json
import shutil

import pytest
from tests.helpers import make_model_dir

from tunelab.synth import teachers
from tunelab.synth.pipeline import synthesize
from tunelab.synth.prompts import TeacherConfig, validate_synth_dict
from tunelab.synth.teachers import LocalTeacher, build_teacher

TEMPLATE = ("{% for m in messages %}<{{ m.role }}> {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    """The tiny llama with a chat template (the other path: no template, a plain transcript)."""
    root = tmp_path_factory.mktemp("chat")
    folder = make_model_dir(root, "llama")
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    return folder


def config(model: str, **teacher) -> dict:
    return {
        "lang": "en", "prompt_version": "tiny-v1",
        "teacher": {"kind": "local", "model": model, "max_new_tokens": 8, "batch_size": 2, **teacher},
        "chunking": {"max_chars": 120, "overlap": 0, "min_chars": 20},
        "questions": {"per_chunk": 2, "system": "write questions", "prompt": "{{ context }} questions {{ n }}"},
        "answers": {"system": "answer", "prompt": "{{ question }} {{ context }}"},
    }  # fmt: skip


def test_local_teacher_generates_a_batch_greedily(tiny_llama, tiny_chat):
    msgs = [[{"role": "user", "content": "hi see you later"}], [{"role": "user", "content": "free prize now"}],
            [{"role": "system", "content": "be nice"}, {"role": "user", "content": "the meeting is tomorrow"}]]  # fmt: skip
    for folder in (tiny_llama, tiny_chat):
        teacher = LocalTeacher(folder, TeacherConfig(max_new_tokens=8), name="tiny")
        out = teacher.generate(msgs)
        assert len(out) == 3 and all(isinstance(t, str) for t in out)
        assert teacher.generate(msgs) == out  # greedy: reproducible
        assert teacher.id.startswith("local:tiny@") and len(teacher.id.split("@")[1]) == 8
    assert LocalTeacher(tiny_chat, TeacherConfig()).render(msgs[2]) == "<system> be nice\n<user> the meeting is tomorrow\n<assistant>"
    assert LocalTeacher(tiny_llama, TeacherConfig()).render(msgs[2]).endswith("User: the meeting is tomorrow\n\nAssistant:")


def test_prompts_longer_than_the_context_are_cut_from_the_left(tiny_llama):
    teacher = LocalTeacher(tiny_llama, TeacherConfig(max_new_tokens=8))
    long = [{"role": "user", "content": "see you later " * 100}]
    assert len(teacher.generate([long])) == 1
    assert teacher.truncated == 1  # max_position_embeddings is 128 in the tiny config


def test_pipeline_with_a_local_teacher_and_resume(tiny_chat, tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Lunch\n\nwe see you at lunch tomorrow and thanks for the dinner tonight ok\n\n"
                               "# Home\n\nplease reply to me on the meeting at home tomorrow and see you later")  # fmt: skip
    (docs / "b.txt").write_text("hi love see you tonight for dinner and thanks for the lunch reply please ok")
    cfg = validate_synth_dict(config(str(tiny_chat)))
    out = tmp_path / "qa.jsonl"
    report = synthesize([str(docs)], cfg, out, progress=False)
    assert report["chunks"] == 3 and report["teacher_requests"]["questions"] == 3
    assert report["teacher"].startswith("local:") and report["teacher_requests"]["from_cache"] == 0
    assert out.is_file() and (tmp_path / "qa.report.json").is_file() and (tmp_path / "qa.dropped.jsonl").is_file()
    # noise in, nothing kept, and every reply is accounted for in the report
    d = report["dropped"]
    assert d.get("unparsable_reply", 0) + report["questions"]["parsed"] > 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == report["rows"]["total"]

    # a rerun is served from the cache: the model is never even loaded
    def boom(self):
        raise AssertionError("the model was loaded on a fully cached rerun")

    monkeypatch.setattr(LocalTeacher, "load", boom)
    again = synthesize([str(docs)], cfg, out, progress=False)
    assert again["teacher_requests"]["from_cache"] == again["teacher_requests"]["questions"] + again["teacher_requests"]["answers"]
    assert again["rows"] == report["rows"]


def test_default_teacher_is_the_strongest_installed(monkeypatch, tiny_llama, tmp_path):
    import tunelab.assets
    import tunelab.assets.store

    monkeypatch.setattr(tunelab.assets.store, "is_installed", lambda name: name == "smollm2-135m-instruct")
    assert teachers.default_local_model() == "asset:smollm2-135m-instruct"
    seen = []
    monkeypatch.setattr(tunelab.assets, "resolve_model", lambda spec: seen.append(spec) or tiny_llama)
    teacher = build_teacher(TeacherConfig())
    assert seen == ["asset:smollm2-135m-instruct"] and teacher.id.startswith("local:smollm2-135m-instruct@")
    monkeypatch.setattr(tunelab.assets.store, "is_installed", lambda name: False)
    with pytest.raises(Exception, match="tunelab assets install qwen2.5-coder-0.5b-instruct"):
        teachers.default_local_model()


def test_copy_of_a_model_folder_keeps_its_teacher_id(tiny_llama, tmp_path):
    copy = tmp_path / "tiny-llama"
    shutil.copytree(tiny_llama, copy)
    assert LocalTeacher(copy, TeacherConfig()).id == LocalTeacher(tiny_llama, TeacherConfig()).id
