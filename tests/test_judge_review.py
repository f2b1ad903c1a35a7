"""The review page's grading mode (people score answers on the rubric's scale, stored with the
other decisions) and `tunelab judge --human FILE.review.sqlite` reading those grades back."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from tests.test_judge_http import StubJudge, pointwise_script
from tests.test_review_browser import CHROMEDRIVER, CHROMIUM, Browser

from tunelab.cli import main
from tunelab.judge.workflow import judge_files
from tunelab.review.server import ReviewServer, grade_scale
from tunelab.review.store import Conflict, ReviewStore

ROWS = [
    {"prompt": "Capital of France?", "reference": "Paris", "generated": "Paris."},
    {"prompt": "Capital of France, again?", "reference": "Paris", "generated": "Lyon, I think."},
    {"prompt": "What is the capital?", "reference": "Paris", "generated": "mumble mumble"},
]


@pytest.fixture
def answers(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def test_grades_are_decisions_with_versions(answers):
    store = ReviewStore(answers, grade_scale=(1, 5))
    item = store.save(2, 0, grade=2)
    assert (item.grade, item.status, item.version) == (2, "pending", 1)  # the status is left alone
    with pytest.raises(Conflict):
        store.save(2, 0, grade=5)  # another tab graded it first
    assert store.save(2, 1, status="accepted", grade=1).grade == 1
    with pytest.raises(ValueError, match="grade must be an integer from 1 to 5"):
        store.save(1, 0, grade=6)
    with pytest.raises(ValueError, match="grade must be an integer"):
        store.save(1, 0, grade=True)
    assert store.grades() == {2: 1}
    store.close()
    again = ReviewStore(answers, create=False)  # grades persist; without grading mode they are read-only
    assert again.grades() == {2: 1} and again.item(2).status == "accepted"
    with pytest.raises(ValueError, match="grading is off"):
        again.save(1, 0, grade=3)
    again.close()


def test_grade_scale_flag():
    assert grade_scale("1-5") == (1, 5)
    for bad in ("5-1", "1-10", "a-b", "3"):
        with pytest.raises(Exception, match="expected LOW-HIGH"):
            grade_scale(bad)


def _post(server, item_id, body):
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/items/{item_id}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-Review-Token": server.token})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_grading_over_http_then_judge_against_the_people(tmp_path, answers):
    server = ReviewServer(ReviewStore(answers, grade_scale=(1, 5))).start()
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/state", headers={"X-Review-Token": server.token})
        with urllib.request.urlopen(req, timeout=10) as resp:
            state = json.loads(resp.read())
        assert state["grade_scale"] == [1, 5] and state["graded"] == 0
        assert _post(server, 1, {"version": 0, "grade": 5})[0] == 200
        assert _post(server, 2, {"version": 0, "grade": 2})[0] == 200
        status, body = _post(server, 3, {"version": 0, "grade": 7})
        assert status == 400 and "from 1 to 5" in body["error"]
        assert _post(server, 3, {"version": 0, "grade": 3})[0] == 200
    finally:
        server.stop()
        server.store.close()
    judge = StubJudge(pointwise_script)
    try:
        db = tmp_path / "answers.review.sqlite"
        _, s = judge_files(answers, rubric="docqa", judge="scripted", endpoint=judge.url, human=db, progress=False, log=lambda m: None)
    finally:
        judge.close()
    agr = s["human"]["agreement"]
    # judge 5, 1, 3 against people 5, 2, 3: two of three exact
    assert agr["n"] == 3 and agr["exact"]["value"] == pytest.approx(2 / 3, abs=1e-4) and s["human"]["source"] == str(db)


def test_judge_human_review_db_must_exist(tmp_path, answers, capsys):
    assert main(["judge", str(answers), "--judge", "m", "--endpoint", "http://127.0.0.1:9/v1", "--human", str(tmp_path / "none.review.sqlite")]) == 2
    assert "none.review.sqlite: no such file" in capsys.readouterr().err


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (`make browser`)")
def test_grading_mode_in_chromium(tmp_path, answers):
    server = ReviewServer(ReviewStore(answers, grade_scale=(1, 5))).start()
    browser = Browser(str(tmp_path / "profile"))
    try:
        browser.get(server.url)
        browser.wait_text("#item-number", "#1")
        assert browser.js("return document.querySelectorAll('#grades button').length") == 5
        browser.keys("4")  # grade with the keyboard -> the next item
        browser.wait_text("#item-number", "#2")
        browser.wait(lambda: (browser.text("#graded") or "").strip() == "1 graded", "the graded count")
        browser.click("#grade-2")  # and with the mouse
        browser.wait_text("#item-number", "#3")
        browser.keys("k")
        browser.wait_text("#item-number", "#2")
        assert browser.text("#item-grade") == "grade 2" and browser.js("return document.getElementById('grade-2').getAttribute('aria-pressed')") == "true"
        assert server.store.grades() == {1: 4, 2: 2} and server.store.item(1).status == "pending"
    finally:
        browser.quit()
        server.stop()
