"""Reading data files: JSON arrays of objects (Alpaca, LLaMA-Factory) next to JSON Lines."""

import json

import pytest

from tunelab.data.readers import read_rows
from tunelab.errors import TunelabError

ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well."},
    {"instruction": "번역하세요.", "input": "Hello", "output": "안녕하세요"},
    {"instruction": "Add.", "input": "2+2", "output": "4"},
]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _fields(rows):
    return [{k: v for k, v in r.items() if k != "_line"} for r in rows]


def test_pretty_printed_array_rows_carry_the_line_where_each_object_starts(tmp_path):
    # the layout of the original alpaca_data.json: json.dump(rows, f, indent=4)
    p = _write(tmp_path, "alpaca_data.json", json.dumps(ROWS, indent=4, ensure_ascii=False))
    rows = read_rows(p)
    assert _fields(rows) == ROWS
    lines = p.read_text(encoding="utf-8").splitlines()
    assert [r["_line"] for r in rows] == [2, 7, 12]
    assert all(lines[r["_line"] - 1].strip() == "{" for r in rows)


def test_array_with_one_object_per_line_and_leading_space(tmp_path):
    text = "\n  [\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n]\n"
    rows = read_rows(_write(tmp_path, "d.json", text))
    assert _fields(rows) == ROWS and [r["_line"] for r in rows] == [3, 4, 5]


def test_compact_array_numbers_rows_by_item(tmp_path):
    rows = read_rows(_write(tmp_path, "d.json", json.dumps(ROWS)))
    assert _fields(rows) == ROWS
    assert [r["_line"] for r in rows] == ["item 1", "item 2", "item 3"]


def test_array_with_byte_order_mark_and_explicit_jsonl_format(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS, indent=2).encode("utf-8"))
    assert _fields(read_rows(p)) == ROWS
    assert _fields(read_rows(p, format="jsonl")) == ROWS  # data.format: jsonl reads arrays too
    assert read_rows(_write(tmp_path, "e.json", " []\n")) == []


def test_json_lines_in_a_json_file_keep_working(tmp_path):
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    for name in ("d.json", "d.jsonl"):
        rows = read_rows(_write(tmp_path, name, text))
        assert _fields(rows) == ROWS and [r["_line"] for r in rows] == [1, 2, 3], name


@pytest.mark.parametrize("text, needle", [
    ('[\n {"a": 1},\n "hello"\n]', 'd.json: item 2: expected an object with fields, got a string ("hello") (line 3)'),
    ('[{"a": 1}, [1, 2]]', "d.json: item 2: expected an object with fields, got an array"),
    ('[\n  3\n]', "d.json: item 1: expected an object with fields, got a number (3)"),
    ('[{"a": 1}, null]', "d.json: item 2: expected an object with fields, got null"),
])
def test_array_items_that_are_not_objects(tmp_path, text, needle):
    with pytest.raises(TunelabError) as err:
        read_rows(_write(tmp_path, "d.json", text))
    assert needle in str(err.value)


@pytest.mark.parametrize("text, needle", [
    ('[\n {"a": 1},\n {"a": 2,}\n]', "d.json:3: not valid JSON (Expecting property name enclosed in double quotes at column 10)"),
    ('[\n {"a": 1}\n {"a": 2}\n]', "d.json:3: not valid JSON (expected ',' or ']' after item 1 at column 2)"),
    ('[\n {"a": 1},\n]', "d.json:3: not valid JSON (a comma after item 1 and no item before ']' at column 1)"),
    ('[\n {"a": 1}\n', "d.json:3: not valid JSON (the file ends after item 1 without the closing ']'"),
    ('[{"a": 1}]\n[{"a": 2}]\n', "d.json:2: not valid JSON (extra data after the array's closing ']' at column 1)"),
    ('[\n {"a": "unterminated}\n]', "d.json:2: not valid JSON (Invalid control character at column 22)"),
])
def test_malformed_array_names_line_and_column(tmp_path, text, needle):
    with pytest.raises(TunelabError) as err:
        read_rows(_write(tmp_path, "d.json", text))
    assert needle in str(err.value)


def test_one_object_over_several_lines_is_named(tmp_path):
    p = _write(tmp_path, "d.json", '{\n  "version": 1,\n  "data": [{"a": 1}]\n}\n')
    with pytest.raises(TunelabError, match=r"d.json: holds one JSON object \(keys: version, data\); expected an array"):
        read_rows(p)


def test_bad_json_lines_still_name_the_line(tmp_path):
    p = _write(tmp_path, "d.jsonl", '{"a": 1}\n{"a": \n')
    with pytest.raises(TunelabError, match=r"d.jsonl:2: not valid JSON"):
        read_rows(p)
    with pytest.raises(TunelabError, match=r"d.jsonl:1: expected a JSON object per line, found int"):
        read_rows(_write(tmp_path, "d.jsonl", "3\n"))


def test_undecodable_bytes_in_an_array_name_the_line(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b'[\n {"a": "ok"},\n {"a": "\xff"}\n]')
    with pytest.raises(TunelabError, match=r"d.json:3: bytes that are not valid utf-8"):
        read_rows(p)


def test_sharegpt_json_array_end_to_end(tmp_path):
    from tunelab.sft.formats import row_to_messages

    data = [
        {"conversations": [{"from": "human", "value": "안녕?"}, {"from": "gpt", "value": "안녕하세요."}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "x"}]},
    ]
    p = _write(tmp_path, "sharegpt.json", json.dumps(data, indent=2, ensure_ascii=False))
    rows = read_rows(p)
    assert row_to_messages(rows[0], source=str(p))[1] == {"role": "assistant", "content": "안녕하세요."}
    with pytest.raises(TunelabError, match=rf"sharegpt.json:{rows[1]['_line']}: conversations\[1\]: role 'observation'"):
        row_to_messages(rows[1], source=str(p))
