"""Every peer's layout, row by row: rows written from TRL's, LLaMA-Factory's and ms-swift's own documentation
(TRL ``docs/source/dataset_formats.md``; LLaMA-Factory ``data/README.md`` and its v1 converter tests;
ms-swift ``docs/source_en/Customization/Custom-dataset.md``), converted and compared with what each peer
makes of them: the prompt, the completion(s), the label, the images, the tools."""

from __future__ import annotations

import json

import pytest

from rlhf_lab.data.formats import ColumnMapping, DataError, PreferenceExample, convert_file

FILE = "data/train.jsonl"


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str, **extra: object) -> dict:
    return {"role": "assistant", "content": content, **extra}


def system(content: str) -> dict:
    return {"role": "system", "content": content}


def tool(content: str, **extra: object) -> dict:
    return {"role": "tool", "content": content, **extra}


def call(name: str, **arguments: object) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def one(row: dict, mapping: ColumnMapping | None = None, fmt: str = "auto") -> tuple[PreferenceExample, str]:
    """The row converted, and the layout it was read as."""
    conversion = convert_file([row], fmt, file=FILE, mapping=mapping)
    (example,) = conversion.examples
    return example, conversion.format


def error(row: dict, mapping: ColumnMapping | None = None) -> DataError:
    with pytest.raises(DataError) as caught:
        convert_file([row], file=FILE, mapping=mapping)
    return caught.value


# --- TRL -------------------------------------------------------------------------------------------


def test_trl_standard_implicit_prompt_splits_as_extract_prompt() -> None:
    # dataset_formats.md: {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    example, layout = one({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    assert layout == "implicit_prompt"
    # TRL's extract_prompt: the space before the first difference starts the completions.
    assert (example.prompt, example.chosen, example.rejected) == ("The sky is", " blue.", " green.")


def test_trl_standard_implicit_prompt_without_a_shared_start_is_named() -> None:
    caught = error({"chosen": "Blue.", "rejected": "Green."})
    assert (caught.row, caught.field) == (0, "chosen")
    assert "share no prefix" in caught.reason


def test_trl_language_modeling_trains_on_the_whole_text() -> None:
    example, layout = one({"text": "The sky is blue."})
    assert layout == "text"
    assert (example.prompt, example.chosen, example.rejected, example.label) == (
        "",
        "The sky is blue.",
        None,
        None,
    )


def test_trl_conversational_language_modeling_is_sft_on_the_last_turn() -> None:
    messages = [user("What color is the sky?"), assistant("It is blue.")]
    example, layout = one({"messages": messages})
    assert layout == "messages"
    assert (example.prompt, example.chosen) == ([user("What color is the sky?")], [assistant("It is blue.")])


@pytest.mark.parametrize(
    ("row", "prompt", "completion"),
    [
        ({"prompt": "The sky is", "completion": " blue."}, "The sky is", " blue."),
        (
            {"prompt": [user("What color is the sky?")], "completion": [assistant("It is blue.")]},
            [user("What color is the sky?")],
            [assistant("It is blue.")],
        ),
    ],
)
def test_trl_prompt_completion(row: dict, prompt: object, completion: object) -> None:
    example, layout = one(row)
    assert (layout, example.prompt, example.chosen, example.rejected) == ("sft", prompt, completion, None)


@pytest.mark.parametrize(
    ("row", "label"),
    [
        ({"prompt": "The sky is", "completion": " blue.", "label": True}, True),
        (
            {
                "prompt": [user("What color is the sky?")],
                "completion": [assistant("It is green.")],
                "label": False,
            },
            False,
        ),
    ],
)
def test_trl_unpaired_preference(row: dict, label: bool) -> None:
    example, layout = one(row)
    assert (layout, example.label, example.rejected) == ("kto", label, None)


def test_trl_stepwise_supervision_is_named_not_misread() -> None:
    caught = error(
        {"prompt": "Which number is larger, 9.8 or 9.11?", "completions": ["a", "b"], "labels": [True, False]}
    )
    assert "stepwise-supervision" in caught.reason


def test_trl_tool_calling_rows_keep_calls_tool_outputs_and_tools() -> None:
    # dataset_formats.md "Tool Calling"
    schema = {"type": "function", "function": {"name": "control_light", "parameters": {"type": "object"}}}
    messages = [
        user("Turn on the living room lights."),
        {"role": "assistant", "tool_calls": [call("control_light", room="living room", state="on")]},
        {"role": "tool", "name": "control_light", "content": "The lights in the living room are now on."},
        assistant("Done!"),
    ]
    example, layout = one({"messages": messages, "tools": [schema]})
    assert layout == "messages"
    assert example.prompt == [
        user("Turn on the living room lights."),
        assistant("", tool_calls=[call("control_light", room="living room", state="on")]),
        tool("The lights in the living room are now on.", name="control_light"),
    ]
    # The tool's output is prompt: only the final answer is trained on.
    assert example.chosen == [assistant("Done!")]
    assert example.tools == [schema]


def test_trl_tools_as_a_json_string_and_bare_schemas_are_wrapped() -> None:
    bare = {"name": "start_timer", "parameters": {"type": "object"}}
    example, _ = one(
        {"prompt": [user("Set a timer.")], "completion": [assistant("Set.")], "tools": json.dumps([bare])}
    )
    assert example.tools == [{"type": "function", "function": bare}]


def test_trl_string_arguments_are_parsed() -> None:
    messages = [
        user("Timer for 10 minutes."),
        {
            "role": "assistant",
            "tool_calls": [{"type": "function", "function": {"name": "t", "arguments": '{"s": 600}'}}],
        },
        tool("600"),
        assistant("Set."),
    ]
    example, _ = one({"messages": messages})
    assert example.prompt[1]["tool_calls"] == [call("t", s=600)]


def test_a_tool_output_inside_a_completion_is_refused() -> None:
    row = {
        "prompt": [user("q")],
        "completion": [{"role": "assistant", "tool_calls": [call("f")]}, tool("out"), assistant("a")],
    }
    caught = error(row)
    assert (caught.field, caught.reason) == (
        "completion[1].role",
        "a tool's output inside the completion would be trained on; end the prompt after it",
    )


# --- LLaMA-Factory ---------------------------------------------------------------------------------


def test_llamafactory_alpaca_sft_with_system_and_history() -> None:
    row = {
        "instruction": "Solve the math problem.",
        "input": "3 + 4",
        "output": "7",
        "system": "You are a calculator.",
        "history": [["Hi", "Hello! Ready."]],
    }
    example, layout = one(row)
    assert layout == "alpaca"
    assert example.prompt == [
        system("You are a calculator."),
        user("Hi"),
        assistant("Hello! Ready."),
        user("Solve the math problem.\n3 + 4"),  # LLaMA-Factory joins instruction and input with "\n"
    ]
    assert (example.chosen, example.rejected, example.label) == ([assistant("7")], None, None)


def test_llamafactory_alpaca_ranking_kto_and_prompt_only() -> None:
    pair, _ = one({"instruction": "Say hi.", "input": "", "chosen": "hi", "rejected": "no"})
    assert (pair.prompt, pair.chosen, pair.rejected) == (
        [user("Say hi.")],
        [assistant("hi")],
        [assistant("no")],
    )
    kto, _ = one({"instruction": "Say hi.", "output": "no", "kto_tag": False})
    assert (kto.chosen, kto.label) == ([assistant("no")], False)
    prompt, _ = one({"instruction": "Say hi."})
    assert prompt.is_prompt_only


def test_llamafactory_sharegpt_sft_ranking_and_kto() -> None:
    conversation = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    sft, layout = one({"conversations": conversation, "system": "Be brief."})
    assert layout == "sharegpt"
    assert (sft.prompt, sft.chosen) == ([system("Be brief."), user("Hi")], [assistant("Hello")])
    ranking, _ = one(
        {
            "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"}],
            "chosen": {"from": "gpt", "value": "Hello!"},
            "rejected": {"from": "gpt", "value": "Go away."},
        }
    )
    assert (ranking.prompt, ranking.chosen, ranking.rejected) == (
        [system("Be kind."), user("Hi")],
        [assistant("Hello!")],
        [assistant("Go away.")],
    )
    kto, _ = one({"conversations": conversation, "kto_tag": True})
    assert (kto.chosen, kto.label) == ([assistant("Hello")], True)


def test_llamafactory_function_call_and_observation_turns() -> None:
    # data/glaive_toolcall_en_demo.json, row 0, shortened
    row = {
        "conversations": [
            {"from": "human", "value": "I have chicken and rice."},
            {
                "from": "function_call",
                "value": '{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "rice"]}}',
            },
            {"from": "observation", "value": '{"recipes": ["Stir Fry"]}'},
            {"from": "gpt", "value": "Try a stir fry."},
        ],
        "tools": '[{"name": "search_recipes", "description": "Search recipes", "parameters": {"type": "object"}}]',
    }
    example, _ = one(row)
    assert example.prompt == [
        user("I have chicken and rice."),
        assistant("", tool_calls=[call("search_recipes", ingredients=["chicken", "rice"])]),
        tool('{"recipes": ["Stir Fry"]}'),
    ]
    assert example.chosen == [assistant("Try a stir fry.")]
    assert example.tools[0]["function"]["name"] == "search_recipes"


def test_llamafactory_parallel_function_calls() -> None:
    calls = '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]'
    row = {
        "conversations": [
            {"from": "human", "value": "q"},
            {"from": "function_call", "value": calls},
            {"from": "observation", "value": "out"},
            {"from": "gpt", "value": "done"},
        ]
    }
    example, _ = one(row)
    assert example.prompt[1]["tool_calls"] == [call("a"), call("b", x=1)]


def test_llamafactory_openai_tags_with_custom_names() -> None:
    # A dataset_info.json entry's tags: other keys and speaker names.
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "customer", "assistant_tag": "agent"}
    row = {"dialog": [{"speaker": "customer", "text": "Hi"}, {"speaker": "agent", "text": "Hello"}], "ok": 1}
    mapping = ColumnMapping(columns={"messages": "dialog", "kto_tag": "ok"}, tags=tags)
    example, layout = one(row, mapping)
    assert (layout, example.prompt, example.chosen, example.label) == (
        "messages",
        [user("Hi")],
        [assistant("Hello")],
        True,
    )


def test_llamafactory_v1_content_parts_tool_calls_and_pairs() -> None:
    # v1 converter tests: {"type": "text" | "image_url" | "tool_call", "value": ...}
    sft = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "hi"}], "loss_weight": 0.0},
            {
                "role": "assistant",
                "content": [{"type": "tool_call", "value": '{"name": "f", "arguments": {"x": 1}}'}],
                "loss_weight": 0.0,
            },
            {"role": "tool", "content": [{"type": "text", "value": "2"}]},
            {"role": "assistant", "content": [{"type": "text", "value": "Two."}], "loss_weight": 1.0},
        ]
    }
    example, layout = one(sft)
    assert layout == "llamafactory_v1"
    assert example.prompt == [user("hi"), assistant("", tool_calls=[call("f", x=1)]), tool("2")]
    assert example.chosen == [assistant("Two.")]
    prompt = [
        {"role": "user", "content": [{"type": "text", "value": "Translate: bonjour"}], "loss_weight": 0.0}
    ]
    pair = {
        "chosen_messages": [
            *prompt,
            {"role": "assistant", "content": [{"type": "text", "value": "hello"}], "loss_weight": 1.0},
        ],
        "rejected_messages": [
            *prompt,
            {"role": "assistant", "content": [{"type": "text", "value": "bye"}], "loss_weight": 1.0},
        ],
    }
    example, layout = one(pair)
    assert (layout, example.prompt, example.chosen, example.rejected) == (
        "llamafactory_v1",
        [user("Translate: bonjour")],
        [assistant("hello")],
        [assistant("bye")],
    )


def test_llamafactory_v1_a_completion_marked_untrained_is_named() -> None:
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "hi"}]},
            {"role": "assistant", "content": [{"type": "text", "value": "hello"}], "loss_weight": 0.0},
        ]
    }
    caught = error(row)
    assert caught.field == "completion"
    assert "marked not to be trained" in caught.reason


def test_reasoning_parts_are_named_not_dropped() -> None:
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "q"}]},
            {
                "role": "assistant",
                "content": [{"type": "reasoning", "value": "think"}, {"type": "text", "value": "a"}],
            },
        ]
    }
    caught = error(row)
    assert caught.field == "messages[1].content[0]"
    assert "reasoning" in caught.reason


# --- ms-swift --------------------------------------------------------------------------------------


SWIFT_MESSAGES = [
    system("You are a useful and harmless assistant"),
    user("Tell me tomorrow's weather"),
    assistant("Tomorrow's weather will be sunny"),
]


def test_swift_rejected_response_as_string_and_as_messages() -> None:
    example, layout = one({"messages": SWIFT_MESSAGES, "rejected_response": "I don't know"})
    assert layout == "messages"
    assert (example.prompt, example.chosen, example.rejected) == (
        SWIFT_MESSAGES[:2],
        [SWIFT_MESSAGES[2]],
        [assistant("I don't know")],
    )
    example, _ = one({"messages": SWIFT_MESSAGES, "rejected_response": [assistant("Rain.")]})
    assert example.rejected == [assistant("Rain.")]


def test_swift_rejected_messages_is_a_whole_conversation() -> None:
    example, _ = one(
        {"messages": SWIFT_MESSAGES, "rejected_messages": [*SWIFT_MESSAGES[:2], assistant("Rain.")]}
    )
    assert (example.prompt, example.chosen, example.rejected) == (
        SWIFT_MESSAGES[:2],
        [SWIFT_MESSAGES[2]],
        [assistant("Rain.")],
    )


def test_swift_kto_label_and_grpo_prompt_with_reward_columns() -> None:
    kto, _ = one({"messages": [*SWIFT_MESSAGES[:2], assistant("I don't know")], "label": False})
    assert (kto.prompt, kto.chosen, kto.label) == (SWIFT_MESSAGES[:2], [assistant("I don't know")], False)
    grpo_messages = [
        system("You are a useful and harmless math calculator"),
        user("What is 1 + 1?"),
        assistant("It equals 2"),
        user("What about adding 1?"),
    ]
    grpo, layout = one({"messages": grpo_messages, "solution": "3"})
    assert (layout, grpo.prompt, grpo.chosen) == ("messages", grpo_messages, None)
    # Columns no layout reads go to the reward functions (ms-swift passes them to its ORM).
    assert grpo.columns == {"solution": "3"}


def test_swift_agent_rows_tool_call_and_tool_response_roles() -> None:
    # Custom-dataset.md, agent format: parallel calls are consecutive tool_call messages.
    row = {
        "tools": '[{"type": "function", "function": {"name": "realtime_aqi", "parameters": {"type": "object"}}}]',
        "messages": [
            user("What is the weather like in Beijing and Shanghai today?"),
            {"role": "tool_call", "content": '{"name": "realtime_aqi", "arguments": {"city": "Beijing"}}'},
            {"role": "tool_call", "content": '{"name": "realtime_aqi", "arguments": {"city": "Shanghai"}}'},
            {"role": "tool_response", "content": '{"city": "Beijing", "aqi": "10"}'},
            {"role": "tool_response", "content": '{"city": "Shanghai", "aqi": "72"}'},
            assistant("Beijing 10, Shanghai 72."),
        ],
    }
    example, _ = one(row)
    assert example.prompt == [
        user("What is the weather like in Beijing and Shanghai today?"),
        assistant(
            "", tool_calls=[call("realtime_aqi", city="Beijing"), call("realtime_aqi", city="Shanghai")]
        ),
        tool('{"city": "Beijing", "aqi": "10"}'),
        tool('{"city": "Shanghai", "aqi": "72"}'),
    ]
    assert example.chosen == [assistant("Beijing 10, Shanghai 72.")]


def test_swift_query_response_history_and_pair_turn_conversations() -> None:
    example, layout = one(
        {"system": "s", "history": [["q1", "r1"]], "query": "q2", "response": "r2", "rejected_response": "x"}
    )
    assert (layout, example.prompt) == ("swift", [system("s"), user("q1"), assistant("r1"), user("q2")])
    assert (example.chosen, example.rejected) == ([assistant("r2")], [assistant("x")])
    # ms-swift's own "ShareGPT": one {"human": ..., "assistant": ...} object per round.
    example, layout = one(
        {
            "system": "s",
            "conversation": [{"human": "q1", "assistant": "r1"}, {"human": "q2", "assistant": "r2"}],
        }
    )
    assert (layout, example.prompt, example.chosen) == (
        "sharegpt",
        [system("s"), user("q1"), assistant("r1"), user("q2")],
        [assistant("r2")],
    )


def test_swift_rejected_images_alone_makes_an_image_level_pair(tmp_path) -> None:
    from PIL import Image

    for name, colour in (("kitten.png", (200, 100, 0)), ("puppy.png", (0, 100, 200))):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    row = {
        "messages": [user("<image>What is this?"), assistant("This is a kitten.")],
        "images": ["kitten.png"],
        "rejected_images": ["puppy.png"],
    }
    (tmp_path / "data.jsonl").write_text(json.dumps(row))
    conversion = convert_file([row], file=str(tmp_path / "data.jsonl"))
    (example,) = conversion.examples
    assert example.chosen == example.rejected == [assistant("This is a kitten.")]
    assert example.images[0].digest != example.rejected_images[0].digest


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (
            {"messages": SWIFT_MESSAGES, "rejected_response": "x", "label": True},
            "label",
            "the row has both a 'label' (unpaired) and a 'rejected_response' (paired); give one",
        ),
        (
            {"messages": SWIFT_MESSAGES, "rejected_response": "x", "rejected_messages": SWIFT_MESSAGES},
            "rejected_messages",
            "the row has both 'rejected_response' and 'rejected_messages'; give one",
        ),
        (
            {"messages": SWIFT_MESSAGES, "rejected_response": [user("no")]},
            "rejected_response",
            "a completion may not contain a user turn",
        ),
        (
            {"messages": SWIFT_MESSAGES, "conversations": SWIFT_MESSAGES},
            "conversations",
            "the row has both 'messages' and 'conversations'; give one",
        ),
        (
            {"messages": SWIFT_MESSAGES, "videos": ["a.mp4"]},
            "videos",
            "videos are not supported (images and text are)",
        ),
    ],
)
def test_contradictory_rows_are_named(row: dict, field: str, reason: str) -> None:
    caught = error(row)
    assert (caught.file, caught.row, caught.field, caught.reason) == (FILE, 0, field, reason)


# --- mapping ---------------------------------------------------------------------------------------


def test_columns_mapping_renames_and_errors_name_the_files_own_column() -> None:
    mapping = ColumnMapping(columns={"prompt": "question", "chosen": "better", "rejected": "worse"})
    example, layout = one({"question": "2 + 2 =", "better": " 4", "worse": " 5"}, mapping)
    assert (layout, example.prompt, example.chosen, example.rejected) == ("plain", "2 + 2 =", " 4", " 5")
    caught = error({"question": "2 + 2 =", "better": " ", "worse": " 5"}, mapping)
    assert (caught.field, caught.reason) == ("better", "empty completion")


def test_a_mapped_column_the_file_lacks_is_named() -> None:
    mapping = ColumnMapping(columns={"chosen": "better"})
    with pytest.raises(DataError) as caught:
        convert_file([{"prompt": "p", "chosen": "a", "rejected": "b"}], file=FILE, mapping=mapping)
    assert str(caught.value) == (
        f"{FILE}: data.columns maps 'chosen' to column 'better', which the file does not have (its columns: "
        "chosen, prompt, rejected)"
    )


def test_an_unknown_mapping_key_is_named() -> None:
    from rlhf_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="'answer' is not a column any layout reads"):
        convert_file([{"prompt": "p"}], file=FILE, mapping=ColumnMapping(columns={"answer": "a"}))
    with pytest.raises(ConfigError, match="unknown tag 'speaker_tag'"):
        ColumnMapping(tags={"speaker_tag": "from"})


def test_llamafactory_alpaca_column_names_are_understood_with_the_format() -> None:
    # A dataset_info.json entry: {"prompt": "question", "query": "context", "response": "answer"}.
    mapping = ColumnMapping(
        columns={"prompt": "question", "query": "context", "response": "answer"}, format="alpaca"
    )
    example, layout = one({"question": "Add.", "context": "2 and 2", "answer": "4"}, mapping)
    assert (layout, example.prompt, example.chosen) == ("alpaca", [user("Add.\n2 and 2")], [assistant("4")])


def test_unused_columns_and_message_keys_are_reported() -> None:
    rows = [
        {
            "messages": [{"role": "user", "content": "q", "id": 3}, assistant("a")],
            "source": "web",
            "score": 0.5,
        }
    ]
    conversion = convert_file(rows, file=FILE)
    assert conversion.unused_columns == ["score", "source"]
    assert conversion.unused_keys == ["messages[].id"]
    hidden = convert_file(
        [{"prompt": "p", "chosen": "a", "better": "c", "rejected": "b"}],
        file=FILE,
        mapping=ColumnMapping(columns={"chosen": "better"}),
    )
    assert hidden.unused_columns == ["chosen"]  # the file's own 'chosen', which the mapping replaced
    assert hidden.examples[0].chosen == "c"


def test_images_without_placeholders_go_first_in_the_first_user_turn(tmp_path) -> None:
    # TRL's zen-image layout: string content and one `image` column.
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    row = {
        "prompt": [user("What is better than ugly?")],
        "chosen": [assistant("Beautiful.")],
        "rejected": [assistant("Acceptable.")],
        "image": "a.png",
    }
    (tmp_path / "data.jsonl").write_text(json.dumps(row))
    conversion = convert_file([row], file=str(tmp_path / "data.jsonl"))
    (example,) = conversion.examples
    assert example.prompt == [user("<image>What is better than ugly?")]
    assert conversion.images_placed == 1


@pytest.mark.parametrize(
    ("chosen", "rejected"),
    [
        ("The sky is blue.", "The sky is green."),
        ("A cat is an animal.", "A cat is a tool."),  # TRL splits inside the word: so does rlhf_lab
        ("2 + 2 = 4", "2 + 2 = 5"),
        ("ab cd", "ab ce"),
    ],
)
def test_implicit_string_prompts_split_as_trls_extract_prompt(chosen: str, rejected: str) -> None:
    from trl.data_utils import extract_prompt

    theirs = extract_prompt({"chosen": chosen, "rejected": rejected})
    example, _ = one({"chosen": chosen, "rejected": rejected})
    assert (example.prompt, example.chosen, example.rejected) == (
        theirs["prompt"],
        theirs["chosen"],
        theirs["rejected"],
    )


def test_implicit_conversations_split_as_trls_extract_prompt() -> None:
    from trl.data_utils import extract_prompt

    chosen = [system("Be brief."), user("Hi"), assistant("Hello"), user("Cat?"), assistant("An animal.")]
    rejected = [*chosen[:4], assistant("A tool.")]
    theirs = extract_prompt({"chosen": chosen, "rejected": rejected})
    example, _ = one({"chosen": chosen, "rejected": rejected})
    assert (example.prompt, example.chosen, example.rejected) == (
        theirs["prompt"],
        theirs["chosen"],
        theirs["rejected"],
    )
