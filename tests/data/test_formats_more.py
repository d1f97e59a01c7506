"""The unpaired (kto), prompt_only, swift, sharegpt and alpaca formats, margins, images and `to_unpaired`."""

from __future__ import annotations

import pytest

from rlhf_lab.data.formats import DataError, PreferenceExample, convert_rows, detect_format, to_unpaired

FILE = "data/train.jsonl"


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def system(content: str) -> dict[str, str]:
    return {"role": "system", "content": content}


def source(row: int) -> str:
    return f"{FILE}:row {row}"


def convert(rows: list[dict], fmt: str = "auto") -> list[PreferenceExample]:
    examples, counts = convert_rows(rows, fmt, file=FILE)
    assert counts == {"rows": len(rows), "identical_dropped": 0}
    return examples


def error(rows: list[dict], fmt: str = "auto") -> DataError:
    with pytest.raises(DataError) as caught:
        convert_rows(rows, fmt, file=FILE)
    return caught.value


# --- detection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        # The existing formats are detected as before...
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "plain"),
        ({"prompt": [user("p")], "chosen": [assistant("a")], "rejected": [assistant("b")]}, "conversational"),
        ({"chosen": [user("p"), assistant("a")], "rejected": [user("p"), assistant("b")]}, "implicit_prompt"),
        ({"prompt": "p", "completion": "c"}, "sft"),
        ({"messages": [user("p"), assistant("a")]}, "messages"),
        # ...a prompt column wins over the LLaMA-Factory columns...
        ({"prompt": "p", "instruction": "i", "chosen": "a", "rejected": "b"}, "plain"),
        # ...and the new ones by their own columns.
        ({"prompt": "p", "completion": "c", "label": True}, "kto"),
        ({"prompt": [user("p")], "completion": [assistant("c")], "label": False}, "kto"),
        ({"prompt": "p"}, "prompt_only"),
        ({"prompt": [user("p")], "id": 3}, "prompt_only"),
        ({"query": "q", "response": "r"}, "swift"),
        ({"query": "q", "response": "r", "rejected_response": "x", "history": []}, "swift"),
        ({"query": "q"}, "swift"),
        ({"messages": [user("p"), assistant("a")], "rejected_response": "x"}, "messages"),
        ({"messages": [{"from": "human", "value": "p"}], "label": True}, "sharegpt"),
        ({"conversation": [{"human": "p", "assistant": "a"}]}, "sharegpt"),
        ({"instruction": "i", "output": "o"}, "alpaca"),
        ({"chosen_messages": [], "rejected_messages": []}, "llamafactory_v1"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "value": "p"}]}]}, "llamafactory_v1"),
        ({"text": "t"}, "text"),
        ({"chosen": "The sky is blue.", "rejected": "The sky is green."}, "implicit_prompt"),
        ({"prompt": "p", "completions": ["a"], "labels": [True]}, "stepwise"),
        ({"conversations": [], "chosen": {}, "rejected": {}}, "sharegpt"),
        ({"instruction": "i", "input": "", "chosen": "a", "rejected": "b"}, "alpaca"),
    ],
)
def test_detection_precedence(row: dict, expected: str) -> None:
    assert detect_format(row.keys(), row) == expected


def test_detection_failure_lists_the_new_layouts() -> None:
    with pytest.raises(DataError) as caught:
        detect_format(["question", "answer"], {}, file=FILE)
    message = str(caught.value)
    assert message.startswith(f"{FILE}: cannot detect the data format from columns [answer, question]")
    for layout in (
        "prompt + completion + label (kto)",
        "query [+ response",
        "(sharegpt)",
        "(alpaca)",
        "(prompt_only)",
        "(messages)",
        "(llamafactory_v1)",
        "data.columns",
    ):
        assert layout in message


# --- kto -------------------------------------------------------------------------------------------


def test_kto_rows_convert_with_bool_and_integer_labels() -> None:
    rows = [
        {"prompt": "2 + 2 =", "completion": " 4", "label": True},
        {"prompt": "2 + 2 =", "completion": " 5", "label": False},
        {"prompt": [user("hi")], "completion": [assistant("hello")], "label": 1},
        {"prompt": [user("hi")], "completion": [assistant("go away")], "label": 0},
    ]
    assert convert(rows) == [
        PreferenceExample("2 + 2 =", " 4", None, source(0), label=True),
        PreferenceExample("2 + 2 =", " 5", None, source(1), label=False),
        PreferenceExample([user("hi")], [assistant("hello")], None, source(2), label=True),
        PreferenceExample([user("hi")], [assistant("go away")], None, source(3), label=False),
    ]
    # 0/1 become real booleans.
    assert [type(example.label) for example in convert(rows)] == [bool] * 4


@pytest.mark.parametrize("label", ["yes", 2, 0.5, 1.0, None, [True]])
def test_kto_non_boolean_label_names_file_row_and_field(label: object) -> None:
    rows = [
        {"prompt": "p", "completion": "c", "label": True},
        {"prompt": "p", "completion": "c", "label": label},
    ]
    caught = error(rows)
    assert (caught.file, caught.row, caught.field) == (FILE, 1, "label")
    if label is None:
        assert caught.reason == "column 'label' is null (format: kto (detected))"
    else:
        assert caught.reason == (
            "expected a boolean label (true = desirable, false = undesirable; 0/1 also accepted), "
            f"got {label!r}"
        )


def test_kto_rows_are_validated_like_sft_rows() -> None:
    caught = error([{"prompt": [user("q")], "completion": "a", "label": True}])
    assert (caught.row, caught.field) == (0, "completion")
    assert caught.reason.startswith("type mismatch: prompt is a list of messages but completion is a string")
    caught = error([{"prompt": "q", "completion": "  ", "label": True}])
    assert (caught.field, caught.reason) == ("completion", "empty completion")


def test_kto_ignores_a_margin_column() -> None:
    # A margin belongs to a pair; unpaired rows have none.
    (example,) = convert([{"prompt": "p", "completion": "c", "label": True, "margin": 1.5}])
    assert example.margin is None


# --- prompt_only -----------------------------------------------------------------------------------


def test_prompt_only_rows_convert() -> None:
    rows = [
        {"prompt": "Once upon a time"},
        {"prompt": [user("q1"), assistant("a1"), user("q2")]},
        {"prompt": [user("q")], "system": "be brief"},
    ]
    assert convert(rows) == [
        PreferenceExample("Once upon a time", None, None, source(0)),
        PreferenceExample([user("q1"), assistant("a1"), user("q2")], None, None, source(1)),
        PreferenceExample([system("be brief"), user("q")], None, None, source(2)),
    ]
    assert all(example.is_prompt_only and not example.is_pair for example in convert(rows))


@pytest.mark.parametrize(
    ("prompt", "field", "reason"),
    [
        ([user("q"), assistant("a")], "prompt", "the prompt must end with a user turn, not 'assistant'"),
        ([], "prompt", "the prompt has no messages"),
        (" ", "prompt", "empty prompt"),
        (
            [{"role": "bot", "content": "x"}],
            "prompt[0].role",
            "unknown role 'bot'; expected one of: system, user, assistant, tool",
        ),
    ],
)
def test_prompt_only_bad_prompts(prompt: object, field: str, reason: str) -> None:
    caught = error([{"prompt": prompt}])
    assert (caught.row, caught.field, caught.reason) == (0, field, reason)


# --- swift -----------------------------------------------------------------------------------------


def test_swift_rows_convert() -> None:
    rows = [
        {
            "system": "be brief",
            "history": [["hi", "hello"], ["how are you", "fine"]],
            "query": "what is two plus two",
            "response": "four",
            "rejected_response": "five",
        },
        {"query": "hi", "response": "hello", "rejected_response": "bye", "system": None, "history": None},
        # Without a rejected response the row is SFT-like.
        {"query": "hi", "response": "hello"},
    ]
    assert convert(rows) == [
        PreferenceExample(
            prompt=[
                system("be brief"),
                user("hi"),
                assistant("hello"),
                user("how are you"),
                assistant("fine"),
                user("what is two plus two"),
            ],
            chosen=[assistant("four")],
            rejected=[assistant("five")],
            source=source(0),
        ),
        PreferenceExample([user("hi")], [assistant("hello")], [assistant("bye")], source(1)),
        PreferenceExample([user("hi")], [assistant("hello")], None, source(2)),
    ]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (
            {"history": [["only a query"]]},
            "history[0]",
            "expected a [query, response] pair, got ['only a query']",
        ),
        ({"history": "hi"}, "history", "expected a list of [query, response] pairs, got string"),
        ({"history": [["q", 3]]}, "history[0][1]", "expected a string, got int"),
        ({"rejected_response": " "}, "rejected_response", "empty completion"),
        ({"response": ["a"]}, "response", "expected a string, got list of messages"),
        ({"system": 5}, "system", "expected a string, got int"),
        (
            {"images": 5},
            "images",
            "expected an image as a path, URL, bytes, base64 text, a data URI or a {bytes, path} object, got int",
        ),
    ],
)
def test_swift_bad_rows(change: dict, field: str, reason: str) -> None:
    caught = error([{"query": "q", "response": "r", "rejected_response": "x", **change}])
    assert (caught.file, caught.row, caught.field, caught.reason) == (FILE, 0, field, reason)


# --- sharegpt --------------------------------------------------------------------------------------


def gpt(value: str) -> dict[str, str]:
    return {"from": "gpt", "value": value}


def human(value: str) -> dict[str, str]:
    return {"from": "human", "value": value}


def test_sharegpt_rows_convert() -> None:
    rows = [
        {
            "conversations": [human("hi"), gpt("hello"), human("what is two plus two")],
            "chosen": gpt("four"),
            "rejected": gpt("five"),
            "system": "be brief",
            "images": [],
        },
        {
            "conversations": [{"from": "system", "value": "own"}, human("q")],
            "chosen": gpt("a"),
            "rejected": gpt("b"),
            "system": "column",
        },
    ]
    assert convert(rows) == [
        PreferenceExample(
            prompt=[system("be brief"), user("hi"), assistant("hello"), user("what is two plus two")],
            chosen=[assistant("four")],
            rejected=[assistant("five")],
            source=source(0),
            images=None,  # an empty list: a text row
        ),
        # A system turn in the conversation wins over the column, as for conversational rows.
        PreferenceExample([system("own"), user("q")], [assistant("a")], [assistant("b")], source(1)),
    ]


GOOD_SHAREGPT = {"conversations": [human("q")], "chosen": gpt("a"), "rejected": gpt("b")}


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (
            {"conversations": [human("q"), {"from": "function_call", "value": "{}"}, human("r")]},
            "conversations[1].value",
            "a tool call needs a 'name' and 'arguments', got {}",
        ),
        (
            {"conversations": [human("q"), {"from": "observation", "value": "42"}]},
            "conversations[1].role",
            "a tool's output must follow an assistant turn that calls tools",
        ),
        (
            {"conversations": [human("q"), gpt("a")]},
            "conversations",
            "the prompt must end with a user turn, not 'assistant'",
        ),
        ({"conversations": []}, "conversations", "the conversation has no messages"),
        (
            {"conversations": [{"from": "robot", "value": "q"}]},
            "conversations[0].from",
            "unknown role 'robot'; expected one of: system, user, human, assistant, gpt, bot, tool, "
            "observation, observations, tool_response, function_response, function_call, function-call, tool_call",
        ),
        ({"conversations": [{"value": "q"}]}, "conversations[0]", "message has no 'role' (keys: value)"),
        (
            {"conversations": [human("q"), human("r")]},
            "conversations[1].role",
            "roles must alternate user/assistant starting with user; got 'user' where 'assistant' was "
            "expected",
        ),
        ({"chosen": human("a")}, "chosen.from", "expected an assistant turn, got 'human'"),
        ({"rejected": gpt("")}, "rejected.value", "empty completion"),
        ({"rejected": 5}, "rejected", "expected a turn object, a list of messages or a string, got int"),
    ],
)
def test_sharegpt_bad_rows(change: dict, field: str, reason: str) -> None:
    caught = error([GOOD_SHAREGPT, {**GOOD_SHAREGPT, **change}])
    assert (caught.file, caught.row, caught.field, caught.reason) == (FILE, 1, field, reason)


# --- alpaca ----------------------------------------------------------------------------------------


def test_alpaca_rows_convert() -> None:
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 2", "chosen": "4", "rejected": "5"},
        {"instruction": "Say hi.", "input": "", "chosen": "hi", "rejected": "no", "system": "be brief"},
        {
            "instruction": "And now?",
            "chosen": "yes",
            "rejected": "no",
            "history": [["Ready?", "Ready."]],
            "margin": 2,
        },
    ]
    assert convert(rows[:2]) == [
        PreferenceExample([user("Add the numbers.\n2 and 2")], [assistant("4")], [assistant("5")], source(0)),
        PreferenceExample(
            [system("be brief"), user("Say hi.")], [assistant("hi")], [assistant("no")], source(1)
        ),
    ]
    assert convert(rows[2:]) == [
        PreferenceExample(
            [user("Ready?"), assistant("Ready."), user("And now?")],
            [assistant("yes")],
            [assistant("no")],
            source(0),
            margin=2.0,
        )
    ]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"chosen": [assistant("4")]}, "chosen", "expected a string, got list of messages"),
        ({"rejected": ""}, "rejected", "empty completion"),
        ({"input": 4}, "input", "expected a string, got int"),
        ({"instruction": None}, "instruction", "column 'instruction' is null (format: alpaca (detected))"),
    ],
)
def test_alpaca_bad_rows(change: dict, field: str, reason: str) -> None:
    caught = error([{"instruction": "i", "chosen": "a", "rejected": "b", **change}])
    assert (caught.row, caught.field, caught.reason) == (0, field, reason)


# --- margins ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "margin"),
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.25}, 0.25),
        (
            {"prompt": [user("p")], "chosen": [assistant("a")], "rejected": [assistant("b")], "margin": -3},
            -3.0,
        ),
        ({"chosen": [user("p"), assistant("a")], "rejected": [user("p"), assistant("b")], "margin": 1}, 1.0),
        ({"query": "q", "response": "a", "rejected_response": "b", "margin": 0.5}, 0.5),
        ({"conversations": [human("q")], "chosen": gpt("a"), "rejected": gpt("b"), "margin": 4.0}, 4.0),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": None}, None),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, None),
    ],
)
def test_margin_column_on_every_paired_format(row: dict, margin: float | None) -> None:
    (example,) = convert([row])
    assert example.margin == margin
    assert margin is None or type(example.margin) is float


@pytest.mark.parametrize("margin", ["wide", True, float("nan"), float("inf"), [1.0]])
def test_non_numeric_margin_names_file_row_and_field(margin: object) -> None:
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0},
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": margin},
    ]
    caught = error(rows)
    assert (caught.file, caught.row, caught.field) == (FILE, 1, "margin")
    assert caught.reason == f"expected a finite number, got {margin!r}"


def test_margins_on_some_pairs_only_fail_at_load_time() -> None:
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "c", "margin": 1.0},
    ]
    caught = error(rows)
    assert str(caught) == (
        f"{FILE}, row 0, field 'margin': row 1 has a margin but row 0 has none; "
        "give every pair a margin or none"
    )
    caught = error(rows[::-1])
    assert (caught.row, caught.reason) == (
        1,
        "row 0 has a margin but row 1 has none; give every pair a margin or none",
    )


# --- to_unpaired -----------------------------------------------------------------------------------


def test_to_unpaired_splits_pairs_and_passes_unpaired_rows_through() -> None:
    examples = [
        PreferenceExample([user("q")], [assistant("good")], [assistant("bad")], "f:row 0", margin=2.0),
        PreferenceExample("p", " yes", None, "f:row 1", label=False),
        PreferenceExample("2+2=", "4", "5", "f:row 2", images=["x.png"]),
    ]
    assert to_unpaired(examples) == [
        PreferenceExample([user("q")], [assistant("good")], None, "f:row 0", label=True),
        PreferenceExample([user("q")], [assistant("bad")], None, "f:row 0", label=False),
        PreferenceExample("p", " yes", None, "f:row 1", label=False),
        PreferenceExample("2+2=", "4", None, "f:row 2", label=True, images=["x.png"]),
        PreferenceExample("2+2=", "5", None, "f:row 2", label=False, images=["x.png"]),
    ]
    # The input is left as it was.
    assert examples[0].rejected == [assistant("bad")] and examples[0].margin == 2.0


@pytest.mark.parametrize(
    ("example", "what"),
    [
        (PreferenceExample("p", "c", None, "f:row 3"), "an SFT row (no rejected, no label)"),
        (PreferenceExample("p", None, None, "f:row 3"), "a prompt-only row"),
    ],
)
def test_to_unpaired_rejects_rows_without_label_or_pair(example: PreferenceExample, what: str) -> None:
    with pytest.raises(DataError) as caught:
        to_unpaired([example])
    assert str(caught.value) == (
        f"f:row 3: {what} cannot be used by an unpaired objective (KTO), which needs chosen/rejected pairs "
        "or prompt/completion/label rows"
    )
