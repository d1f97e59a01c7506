"""Reading rows from JSONL, JSON and Parquet."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_lab.data.formats import DataError
from rlhf_lab.data.io import read_rows

ROWS = [
    {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "yo"}],
        "n": 1,
    },
    {
        "prompt": [{"role": "user", "content": "bye"}],
        "chosen": [{"role": "assistant", "content": "ok"}],
        "n": 2,
    },
]


def test_jsonl_round_trip_skips_blank_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    assert read_rows(path) == ROWS


def test_json_list_of_objects(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert read_rows(str(path)) == ROWS


def test_json_data_wrapper(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    assert read_rows(path) == ROWS


def test_json_dict_of_columns(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"prompt": ["a", "b"], "chosen": ["x", "y"]}), encoding="utf-8")
    assert read_rows(path) == [{"prompt": "a", "chosen": "x"}, {"prompt": "b", "chosen": "y"}]


def test_json_columns_of_different_lengths(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"prompt": ["a", "b"], "chosen": ["x"]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"different lengths \(prompt: 2, chosen: 1\)") as caught:
        read_rows(path)
    assert str(path) in str(caught.value)


def test_parquet_round_trip_keeps_nested_messages_as_python_lists(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    rows = read_rows(path)
    assert rows == ROWS
    assert type(rows[0]["prompt"]) is list


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": oops}\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: line 3: invalid JSON: Expecting value")


def test_row_that_is_not_an_object_names_row(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == f"{path}, row 1: expected an object (column -> value), got list"


def test_missing_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == f"{path}: file not found"


def test_unknown_extension(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("prompt\tchosen\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert (
        str(caught.value)
        == f"{path}: unknown file type '.tsv'; expected one of: .jsonl, .json, .parquet, .csv"
    )


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read the Parquet file") as caught:
        read_rows(path)
    assert str(path) in str(caught.value)


def test_json_scalar_top_level(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("42", encoding="utf-8")
    with pytest.raises(DataError, match="got int"):
        read_rows(path)


def test_csv_rows_keep_quoted_commas_and_line_breaks(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        'instruction,input,output\n"Say hi, twice","","hi\nhi"\nAdd,2 and 2,4\n', encoding="utf-8"
    )
    assert read_rows(path) == [
        {"instruction": "Say hi, twice", "input": "", "output": "hi\nhi"},
        {"instruction": "Add", "input": "2 and 2", "output": "4"},
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prompt,prompt\na,b\n", "line 1: the header names column 'prompt' twice"),
        ("prompt,completion\na,b\nc\n", "line 3: 1 cells but the header has 2 columns (prompt, completion)"),
    ],
)
def test_bad_csv_is_named(tmp_path, text, message):
    path = tmp_path / "train.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert message in str(caught.value)


def test_csv_labels_and_margins_are_read_from_text(tmp_path):
    from rlhf_lab.data.formats import convert_rows

    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\np,a,true\np,b,0\n", encoding="utf-8")
    examples, _ = convert_rows(read_rows(path), file=str(path))
    assert [example.label for example in examples] == [True, False]
    path = tmp_path / "rm.csv"
    path.write_text("prompt,chosen,rejected,margin\np,a,b,1.5\n", encoding="utf-8")
    (example,), _ = convert_rows(read_rows(path), file=str(path))
    assert example.margin == 1.5


def test_jsonl_splits_lines_at_newlines_only(tmp_path):
    """JSON text may hold U+2028, U+0085 or a form feed unescaped (``json.dumps(..., ensure_ascii=False)``
    writes U+2028 so): they stay in the row's string, and CRLF line ends are read."""
    row = {"prompt": "a\u2028b\x85c\x0cd", "chosen": "x"}
    path = tmp_path / "train.jsonl"
    path.write_bytes((json.dumps(row, ensure_ascii=False) + "\r\n" + json.dumps(ROWS[0]) + "\r\n").encode())
    assert read_rows(path) == [row, ROWS[0]]
