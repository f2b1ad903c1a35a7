"""The cleaning pipeline: every removal and change is reported with its reason and line."""

import hashlib
import json

import numpy as np
import pytest

from tunelab.data.clean import CleanOptions, clean_file, clean_rows, hf_mean_pool_encoder
from tunelab.errors import TunelabError


def rows_of(*texts, labels=None):
    return [{"text": t, "label": (labels[i] if labels else "a"), "_line": i + 2} for i, t in enumerate(texts)]


def by_line(report):
    return {e["line"]: e for e in report.entries if "line" in e}


def test_reasons_and_lines():
    rows = rows_of(
        "정상 문장입니다 하나",  # 2 kept
        "   ",  # 3 empty
        "\ufffd\ufffd 깨짐",  # 4 garbled
        "짧",  # 5 too short
        "x" * 70,  # 6 too long
        "This is English only",  # 7 wrong language
        "정상 문장입니다  하나",  # 8 exact duplicate of 2 (whitespace differs)
        "환불 요청은 구매 후 7일 이내에 고객센터로 연락해 주시면 처리해 드립니다.",  # 9 kept
        "환불 요청은 구매 후 7일 이내에 고객센터로 연락해 주시면 처리해 드립니다!!",  # 10 near dup of 9
        "<b>문의</b> 010-1234-5678",  # 11 changed: html + pii
    )
    kept, report = clean_rows(rows, CleanOptions(min_chars=2, max_chars=60, lang="ko"))
    e = by_line(report)
    assert [r["_line"] for r in kept] == [2, 9, 11]
    assert {line: e[line]["reason"] for line in (3, 4, 5, 6, 7, 8, 10)} == {
        3: "empty", 4: "garbled", 5: "too_short", 6: "too_long", 7: "wrong_language",
        8: "exact_duplicate", 10: "near_duplicate",
    }
    assert e[8]["detail"] == {"of_line": 2}
    assert e[10]["detail"]["of_line"] == 9 and e[10]["detail"]["similarity"] >= 0.7
    assert e[11]["action"] == "changed" and e[11]["reason"] == "normalized+pii_redacted"
    assert "pii:PHONE" in e[11]["changes"] and "normalize:html" in e[11]["changes"]
    assert kept[2]["text"] == "문의 [PHONE]"  # placeholders do not count as Latin letters
    assert report.summary["rows_in"] == 10 and report.summary["rows_out"] == 3
    assert sum(report.summary["removed"].values()) == 7


def test_input_rows_not_modified():
    rows = [{"text": "전화 010-1234-5678", "messages": [{"role": "user", "content": "메일 a@b.co"}], "_line": 2}]
    before = json.dumps(rows, ensure_ascii=False)
    kept, _ = clean_rows(rows, CleanOptions(text_columns=["text"]))
    assert json.dumps(rows, ensure_ascii=False) == before
    assert kept[0]["messages"][0]["content"] == "메일 [EMAIL]"  # nested chat messages are cleaned too


def test_pii_never_in_report():
    rows = rows_of("주민번호 900101-1234567 입니다", "주민번호 900101-1234567 입니다")
    _, report = clean_rows(rows)
    text = json.dumps(report.entries, ensure_ascii=False)
    assert "900101" not in text and "[RRN]" in text


def test_no_pii_option():
    kept, _ = clean_rows(rows_of("전화 010-1234-5678"), CleanOptions(pii=False))
    assert kept[0]["text"] == "전화 010-1234-5678"


def test_label_conflicts_reported_and_dropped():
    rows = rows_of("배송이 늦어요", "배송이 늦어요", "좋아요", labels=["complaint", "praise", "praise"])
    kept, report = clean_rows(rows)
    conflicts = [e for e in report.entries if e["action"] == "label_conflict"]
    assert conflicts == [{"action": "label_conflict", "lines": [2, 3], "labels": {"complaint": 1, "praise": 1},
                          "resolution": "kept line 2", "preview": "배송이 늦어요"}]
    assert [r["_line"] for r in kept] == [2, 4]
    kept, report = clean_rows(rows, CleanOptions(label_conflicts="drop"))
    assert [r["_line"] for r in kept] == [4]
    assert report.summary["removed"] == {"label_conflict": 2}


def test_near_duplicate_with_other_label_is_flagged():
    a = "The delivery arrived two days late and the box was damaged badly"
    rows = rows_of(a, a + "!!", labels=["neg", "pos"])
    rows[1]["text"] = a.replace("badly", "badly.") + " ok"
    _, report = clean_rows(rows, CleanOptions(near_dup_threshold=0.6))
    e = by_line(report)[3]
    assert e["reason"] == "near_duplicate" and e["detail"]["label_differs"] is True


def hashed_embed(texts):
    """A stand-in encoder: bag of hashed words, so texts sharing words are similar."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.split():
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 64] += 1
    return out


def test_off_domain_filter():
    reference = ["배송 조회 부탁드립니다", "환불 요청 드립니다", "주문 취소 하고 싶어요"]
    rows = rows_of("배송 조회 하고 싶어요", "오늘 점심 메뉴 추천해줘", "환불 요청 부탁드립니다")
    options = CleanOptions(domain_reference=reference, embed=hashed_embed, domain_threshold=0.3, domain_top_k=1)
    kept, report = clean_rows(rows, options)
    assert [r["_line"] for r in kept] == [2, 4]
    e = by_line(report)[3]
    assert e["reason"] == "off_domain" and e["detail"]["score"] < 0.3


def test_off_domain_needs_an_encoder():
    with pytest.raises(TunelabError, match="encoder"):
        clean_rows(rows_of("a b c"), CleanOptions(domain_reference=["x"]))


def test_hf_encoder_mean_pooling(tmp_path):
    from tests.helpers import make_model_dir

    folder = make_model_dir(tmp_path, "bert")
    embed = hf_mean_pool_encoder(folder)
    emb = embed(["hi see you later", "free cash prize now", "hi"])
    assert emb.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # padding does not change a text's embedding (mean over real tokens only)
    np.testing.assert_allclose(embed(["hi"])[0], emb[2], atol=1e-5)


def test_bad_options():
    with pytest.raises(TunelabError, match="lang"):
        clean_rows(rows_of("x"), CleanOptions(lang="fr"))
    with pytest.raises(TunelabError, match="near_dup_threshold"):
        clean_rows(rows_of("x"), CleanOptions(near_dup_threshold=1.5))


def test_unknown_text_column_is_named():
    with pytest.raises(TunelabError, match="data.jsonl: cannot tell which column"):
        clean_rows([{"a": "x", "b": "y"}], source="data.jsonl")


def test_clean_file_writes_outputs_and_leaves_input(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"text": t, "label": 1}, ensure_ascii=False)
                             for t in ["연락처 010-1234-5678", "연락처 010-1234-5678", "두 번째 문장"]) + "\n", encoding="utf-8")
    before = src.read_bytes()
    report = clean_file(src, tmp_path / "out.jsonl")
    assert src.read_bytes() == before
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert out == [{"text": "연락처 [PHONE]", "label": 1}, {"text": "두 번째 문장", "label": 1}]
    entries = [json.loads(x) for x in (tmp_path / "out.report.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(e["line"], e["reason"]) for e in entries} == {(1, "pii_redacted"), (2, "exact_duplicate")}
    summary = json.loads((tmp_path / "out.summary.json").read_text(encoding="utf-8"))
    assert summary["rows_in"] == 3 and summary["rows_out"] == 2 and summary["input"] == str(src)
    assert report.summary["removed"] == {"exact_duplicate": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_clean_file_refuses_to_overwrite_input(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n')
    with pytest.raises(TunelabError, match="overwrite the input"):
        clean_file(src, src)
    assert src.read_text() == '{"text": "a"}\n'


def test_bad_input_file_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(TunelabError, match=r"broken\.jsonl:2"):
        clean_file(bad, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
