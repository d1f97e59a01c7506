"""Format detection, conversion and row validation."""

from __future__ import annotations

import logging

import pytest

from rlhf_lab.data.formats import DataError, PreferenceExample, convert_rows, detect_format, to_example
from rlhf_lab.errors import ConfigError

FILE = "data/train.jsonl"


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def system(content: str) -> dict[str, str]:
    return {"role": "system", "content": content}


def convert_one(row: dict, fmt: str = "auto") -> PreferenceExample:
    examples, counts = convert_rows([row], fmt, file=FILE)
    assert counts == {"rows": 1, "identical_dropped": 0}
    assert len(examples) == 1
    return examples[0]


def test_detect_format_from_columns_and_types():
    conversational = {"prompt": [user("hi")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    assert detect_format(conversational.keys(), conversational) == "conversational"
    plain = {"prompt": "hi", "chosen": "a", "rejected": "b"}
    assert detect_format(plain.keys(), plain) == "plain"
    implicit = {"chosen": [user("hi"), assistant("a")], "rejected": [user("hi"), assistant("b")]}
    assert detect_format(implicit.keys(), implicit) == "implicit_prompt"
    assert detect_format(["prompt", "completion"], {"prompt": "p", "completion": "c"}) == "sft"
    assert detect_format(["messages"], {"messages": []}) == "messages"


def test_detect_format_unknown_columns_names_file_and_columns():
    with pytest.raises(DataError) as caught:
        detect_format(["question", "answer"], {}, file=FILE)
    assert FILE in str(caught.value)
    assert "answer, question" in str(caught.value)


def test_conversational_row_converts_with_system_column():
    row = {
        "prompt": [user("hi there")],
        "chosen": [assistant("the cat")],
        "rejected": [assistant("a dog")],
        "system": "be brief",
    }
    example = convert_one(row)
    assert example.prompt == [system("be brief"), user("hi there")]
    assert example.chosen == [assistant("the cat")]
    assert example.rejected == [assistant("a dog")]
    assert example.source == "data/train.jsonl:row 0"
    assert example.is_conversational


def test_system_column_ignored_when_prompt_has_a_system_message():
    row = {
        "prompt": [system("own"), user("q")],
        "chosen": [assistant("a")],
        "rejected": [assistant("b")],
        "system": "column",
    }
    assert convert_one(row).prompt == [system("own"), user("q")]


def test_conversational_drops_extra_message_keys():
    row = {
        "prompt": [{"role": "user", "content": "q", "name": "bob"}],
        "chosen": [assistant("a")],
        "rejected": [assistant("b")],
    }
    assert convert_one(row).prompt == [user("q")]


def test_plain_row_converts():
    example = convert_one({"prompt": "2+2=", "chosen": "4", "rejected": "5"})
    assert example == PreferenceExample(
        prompt="2+2=", chosen="4", rejected="5", source="data/train.jsonl:row 0"
    )
    assert not example.is_conversational


def test_implicit_prompt_uses_longest_common_prefix_of_multi_turn_conversations():
    shared = [system("sys"), user("q1"), assistant("a1"), user("q2")]
    row = {
        "chosen": [*shared, assistant("good"), user("q3"), assistant("more")],
        "rejected": [*shared, assistant("bad")],
    }
    example = convert_one(row)
    assert example.prompt == shared
    assert example.chosen == [assistant("good"), user("q3"), assistant("more")]
    assert example.rejected == [assistant("bad")]


def test_sft_prompt_completion_strings():
    example = convert_one({"prompt": "Q:", "completion": " A"})
    assert example == PreferenceExample(
        prompt="Q:", chosen=" A", rejected=None, source="data/train.jsonl:row 0"
    )


def test_sft_prompt_completion_messages():
    example = convert_one({"prompt": [user("q")], "completion": [assistant("a")]})
    assert (example.prompt, example.chosen, example.rejected) == ([user("q")], [assistant("a")], None)


def test_sft_messages_split_before_last_assistant_turn():
    messages = [system("s"), user("q1"), assistant("a1"), user("q2"), assistant("a2")]
    example = convert_one({"messages": messages})
    assert example.prompt == messages[:4]
    assert example.chosen == [assistant("a2")]
    assert example.rejected is None


def test_format_override_and_unknown_format():
    # Forced to sft, a row that also has chosen/rejected columns is read as prompt/completion.
    example = convert_one({"prompt": "p", "completion": "c", "chosen": "x", "rejected": "y"}, fmt="sft")
    assert (example.prompt, example.chosen, example.rejected) == ("p", "c", None)
    with pytest.raises(ConfigError, match=r"data\.format"):
        convert_rows([], "csv", file=FILE)


def test_identical_pairs_dropped_and_counted(caplog):
    rows = [
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "x", "rejected": "x"},
    ]
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.data.formats"):
        examples, counts = convert_rows(rows, file=FILE)
    assert counts == {"rows": 3, "identical_dropped": 2}
    assert [(e.prompt, e.chosen, e.rejected, e.source) for e in examples] == [
        ("p", "a", "b", "data/train.jsonl:row 1")
    ]
    assert "data/train.jsonl" in caplog.text and "dropped 2 of 3" in caplog.text


def test_identical_implicit_prompt_conversations_are_dropped_not_errors():
    conversation = [user("q"), assistant("a")]
    examples, counts = convert_rows([{"chosen": conversation, "rejected": list(conversation)}], file=FILE)
    assert examples == []
    assert counts == {"rows": 1, "identical_dropped": 1}


GOOD = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
OK = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    ("rows", "fmt", "field", "reason"),
    [
        pytest.param(
            [OK, {"prompt": "p", "chosen": "a"}],
            "auto",
            "rejected",
            "missing column 'rejected' (found columns: chosen, prompt; format: plain (detected))",
            id="missing-column-detected",
        ),
        pytest.param(
            [OK, {"prompt": "p", "chosen": "a"}],
            "plain",
            "rejected",
            "format: plain (configured)",
            id="missing-column-configured",
        ),
        pytest.param(
            [OK, {"prompt": "p", "chosen": "a", "rejected": None}],
            "auto",
            "rejected",
            "is null",
            id="null-column",
        ),
        pytest.param(
            [OK, {"prompt": "p", "chosen": "  ", "rejected": "b"}],
            "auto",
            "chosen",
            "empty completion",
            id="empty-string-completion",
        ),
        pytest.param(
            [GOOD, {**GOOD, "chosen": [assistant(" \n")]}],
            "auto",
            "chosen[0].content",
            "empty completion",
            id="blank-assistant-content",
        ),
        pytest.param([GOOD, {**GOOD, "chosen": []}], "auto", "chosen", "empty completion", id="no-messages"),
        pytest.param(
            [GOOD, {**GOOD, "rejected": [{"role": "assistant", "content": 7}]}],
            "auto",
            "rejected[0].content",
            "content must be a string, got int",
            id="number-content",
        ),
        pytest.param(
            [GOOD, {**GOOD, "rejected": [{"role": "assistant", "content": None}]}],
            "auto",
            "rejected[0].content",
            "got NoneType",
            id="none-content",
        ),
        pytest.param(
            [OK, {"prompt": "p", "chosen": 3, "rejected": "b"}],
            "auto",
            "chosen",
            "expected a string, got int",
            id="number-plain-completion",
        ),
        pytest.param(
            [GOOD, {**GOOD, "prompt": [{"content": "q"}]}],
            "auto",
            "prompt[0]",
            "no 'role'",
            id="missing-role",
        ),
        pytest.param(
            [GOOD, {**GOOD, "chosen": [{"role": "assistant"}]}],
            "auto",
            "chosen[0]",
            "no 'content'",
            id="missing-content",
        ),
        pytest.param(
            [GOOD, {**GOOD, "prompt": [{"role": "human", "content": "q"}]}],
            "auto",
            "prompt[0].role",
            "unknown role 'human'",
            id="unknown-role",
        ),
        pytest.param(
            [GOOD, {**GOOD, "prompt": [user("q"), system("s"), user("r")]}],
            "auto",
            "prompt[1].role",
            "system message may only be the first",
            id="late-system",
        ),
        pytest.param(
            [GOOD, {**GOOD, "prompt": [user("q"), user("r")]}],
            "auto",
            "prompt[1].role",
            "must alternate",
            id="two-user-turns",
        ),
        pytest.param(
            [GOOD, {**GOOD, "prompt": [user("q"), assistant("a")]}],
            "auto",
            "prompt",
            "must end with a user turn",
            id="prompt-ends-with-assistant",
        ),
        pytest.param(
            [GOOD, {**GOOD, "chosen": [user("q2")]}],
            "auto",
            "chosen",
            "must start with an assistant turn",
            id="completion-starts-with-user",
        ),
        pytest.param(
            [GOOD, {**GOOD, "rejected": [assistant("a"), assistant("b")]}],
            "auto",
            "rejected[1].role",
            "must alternate",
            id="two-assistant-turns",
        ),
        pytest.param([GOOD, {**GOOD, "prompt": "q"}], "auto", "prompt", "type mismatch", id="string-prompt"),
        pytest.param(
            [OK, {**OK, "chosen": [assistant("a")]}],
            "auto",
            "chosen",
            "type mismatch",
            id="list-chosen-in-plain",
        ),
        pytest.param(
            [GOOD, {**GOOD, "rejected": "b"}],
            "auto",
            "rejected",
            "type mismatch",
            id="string-rejected-in-conversational",
        ),
        pytest.param(
            [
                {
                    "chosen": [user("q"), assistant("a")],
                    "rejected": [user("q"), assistant("a"), user("r"), assistant("b")],
                }
            ],
            "auto",
            "chosen",
            "must end with a user turn",
            id="implicit-prefix-ends-with-assistant",
        ),
        pytest.param(
            [{"messages": [user("q")], "label": True}],
            "auto",
            "messages",
            "the conversation ends with a user turn, so 'label' has no completion to go with",
            id="kto-messages-without-answer",
        ),
        pytest.param(
            [{"prompt": "q", "completion": "a"}, {"messages": [user("q")]}],
            "sft",
            "messages",
            "must end with an assistant turn",
            id="sft-messages-without-answer",
        ),
        pytest.param([OK, ["p", "a", "b"]], "auto", None, "expected an object", id="row-not-object"),
    ],
)
def test_invalid_rows_raise_data_error_naming_file_row_and_field(rows, fmt, field, reason):
    row_index = len(rows) - 1
    with pytest.raises(DataError) as caught:
        convert_rows(rows, fmt, file=FILE)
    message = str(caught.value)
    assert message.startswith(f"{FILE}, row {row_index}")
    if field is not None:
        assert f"field {field!r}" in message
    assert caught.value.row == row_index
    assert caught.value.field == field
    assert reason in message


def test_data_error_message_layout():
    error = DataError("empty completion", file="data/train.jsonl", row=12, field="chosen")
    assert str(error) == "data/train.jsonl, row 12, field 'chosen': empty completion"
    assert str(DataError("file not found", file="x.json")) == "x.json: file not found"


def test_to_example_passes_row_index_to_source():
    example = to_example({"prompt": "p", "chosen": "a", "rejected": "b"}, "plain", file="f.json", row_index=5)
    assert example.source == "f.json:row 5"


def test_row_numbers_name_positions_in_the_original_file():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "", "rejected": "b"}]
    examples, _ = convert_rows(rows[:1], file=FILE, row_numbers=[4])
    assert examples[0].source == "data/train.jsonl:row 4"
    with pytest.raises(DataError) as caught:
        convert_rows(rows, file=FILE, row_numbers=[4, 9])
    assert str(caught.value) == "data/train.jsonl, row 9, field 'chosen': empty completion"
