"""Token ids of the kto, prompt_only, swift, sharegpt and alpaca formats, row -> ids, checked by hand."""

from __future__ import annotations

import pytest

from rlhf_lab.data.formats import PreferenceExample, convert_rows
from rlhf_lab.data.tokenize import TokenizedExample, TokenizeSettings, tokenize_example, tokenize_examples
from rlhf_lab.models.tiny import train_tokenizer
from tests.data.tokens import ids, with_bos

CORPUS = [
    "hi there", "hello", "be brief", "what is two plus two", "four", "five", "Add the numbers.\n2 and 2",
    "Once upon a time", "go away",
] * 4  # fmt: skip

NO_LIMITS = TokenizeSettings(max_length=None, max_prompt_length=None)

# The Zephyr-style template renders every turn as "<|role|>\n{content}</s>" after a leading "<s>".
SYSTEM = ["<|system|>", "Ċ", "be", "Ġbrief", "</s>"]
HI_THERE = ["<|user|>", "Ċ", "hi", "Ġthere", "</s>"]
HELLO = ["<|assistant|>", "Ċ", "hello", "</s>"]
TWO_PLUS_TWO = ["<|user|>", "Ċ", "what", "Ġis", "Ġtwo", "Ġplus", "Ġtwo", "</s>"]
GENERATION_PROMPT = ["<|assistant|>", "Ċ"]
ADD_TWO_AND_TWO = ["<|user|>", "Ċ", "Add", "Ġthe", "Ġnumbers", ".", "Ċ", "2", "Ġand", "Ġ2", "</s>"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def bos_tokenizer(tokenizer):
    return with_bos(tokenizer)


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def convert(row: dict) -> PreferenceExample:
    (example,), _ = convert_rows([row], file="t.jsonl")
    return example


def test_kto_plain_and_conversational_rows(tokenizer):
    plain = tokenize_example(
        convert({"prompt": "Once upon", "completion": " a time", "label": 1}), tokenizer, NO_LIMITS
    )
    assert plain == TokenizedExample(
        prompt_ids=ids(tokenizer, "Once", "Ġupon"),
        chosen_ids=ids(tokenizer, "Ġa", "Ġtime", "</s>"),
        rejected_ids=None,
        truncated=False,
        label=True,
    )
    row = {
        "prompt": [{"role": "user", "content": "hi there"}],
        "completion": [{"role": "assistant", "content": "go away"}],
        "label": False,
    }
    chat = tokenize_example(convert(row), tokenizer, NO_LIMITS)
    assert chat == TokenizedExample(
        prompt_ids=ids(tokenizer, "<s>", *HI_THERE, *GENERATION_PROMPT),
        chosen_ids=ids(tokenizer, "go", "Ġaway", "</s>"),
        rejected_ids=None,
        truncated=False,
        label=False,
    )
    assert chat.prompt_ids + chat.chosen_ids == text_ids(
        tokenizer, "<s><|user|>\nhi there</s><|assistant|>\ngo away</s>"
    )


def test_prompt_only_conversational_is_the_generation_prompt(tokenizer):
    example = convert({"prompt": [{"role": "user", "content": "hi there"}], "system": "be brief"})
    result = tokenize_example(example, tokenizer, NO_LIMITS)
    assert result == TokenizedExample(
        prompt_ids=ids(tokenizer, "<s>", *SYSTEM, *HI_THERE, *GENERATION_PROMPT),
        chosen_ids=[],
        rejected_ids=None,
        truncated=False,
        # The prompt as data and the row's other columns, for reward functions.
        prompt=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
        columns={},
    )
    assert result.prompt_ids == text_ids(
        tokenizer, "<s><|system|>\nbe brief</s><|user|>\nhi there</s><|assistant|>\n"
    )


def test_prompt_only_plain_adds_special_tokens_and_no_eos(tokenizer, bos_tokenizer):
    example = convert({"prompt": "Once upon a time"})
    assert tokenize_example(example, tokenizer, NO_LIMITS) == TokenizedExample(
        ids(tokenizer, "Once", "Ġupon", "Ġa", "Ġtime"), [], None, False, prompt="Once upon a time", columns={}
    )
    assert tokenize_example(example, bos_tokenizer, NO_LIMITS) == TokenizedExample(
        ids(bos_tokenizer, "<s>", "Once", "Ġupon", "Ġa", "Ġtime"),
        [],
        None,
        False,
        prompt="Once upon a time",
        columns={},
    )


def test_prompt_only_limits(tokenizer):
    example = convert({"prompt": "Once upon a time"})
    keep_end = TokenizeSettings(max_length=8, max_prompt_length=2)
    assert tokenize_example(example, tokenizer, keep_end) == TokenizedExample(
        ids(tokenizer, "Ġa", "Ġtime"), [], None, True, prompt="Once upon a time", columns={}
    )
    # A prompt that fills max_length leaves no room to generate: dropped like an over-long pair.
    examples, stats = tokenize_examples(
        [example], tokenizer, TokenizeSettings(max_length=4, max_prompt_length=None)
    )
    assert (examples, stats) == ([], {"examples": 1, "truncated": 0, "dropped_too_long": 1})


def test_swift_row_with_system_and_history(tokenizer):
    row = {
        "system": "be brief",
        "history": [["hi there", "hello"]],
        "query": "what is two plus two",
        "response": "four",
        "rejected_response": "five",
        "margin": 0.5,
    }
    result = tokenize_example(convert(row), tokenizer, NO_LIMITS)
    assert result == TokenizedExample(
        prompt_ids=ids(tokenizer, "<s>", *SYSTEM, *HI_THERE, *HELLO, *TWO_PLUS_TWO, *GENERATION_PROMPT),
        chosen_ids=ids(tokenizer, "four", "</s>"),
        rejected_ids=ids(tokenizer, "five", "</s>"),
        truncated=False,
        margin=0.5,
    )
    rendered = (
        "<s><|system|>\nbe brief</s><|user|>\nhi there</s><|assistant|>\nhello</s>"
        "<|user|>\nwhat is two plus two</s>"
    )
    assert result.prompt_ids + result.chosen_ids == text_ids(tokenizer, rendered + "<|assistant|>\nfour</s>")
    assert result.prompt_ids + result.rejected_ids == text_ids(
        tokenizer, rendered + "<|assistant|>\nfive</s>"
    )


def test_swift_row_without_rejected_is_sft(tokenizer):
    result = tokenize_example(convert({"query": "hi there", "response": "hello"}), tokenizer, NO_LIMITS)
    assert result == TokenizedExample(
        ids(tokenizer, "<s>", *HI_THERE, *GENERATION_PROMPT), ids(tokenizer, "hello", "</s>"), None, False
    )


def test_sharegpt_row(tokenizer):
    row = {
        "conversations": [
            {"from": "human", "value": "hi there"},
            {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "what is two plus two"},
        ],
        "chosen": {"from": "gpt", "value": "four"},
        "rejected": {"from": "gpt", "value": "five"},
        "system": "be brief",
    }
    assert tokenize_example(convert(row), tokenizer, NO_LIMITS) == TokenizedExample(
        prompt_ids=ids(tokenizer, "<s>", *SYSTEM, *HI_THERE, *HELLO, *TWO_PLUS_TWO, *GENERATION_PROMPT),
        chosen_ids=ids(tokenizer, "four", "</s>"),
        rejected_ids=ids(tokenizer, "five", "</s>"),
        truncated=False,
    )


def test_alpaca_row_joins_instruction_and_input_with_a_newline(tokenizer):
    row = {"instruction": "Add the numbers.", "input": "2 and 2", "chosen": "four", "rejected": "five"}
    result = tokenize_example(convert(row), tokenizer, NO_LIMITS)
    assert result == TokenizedExample(
        prompt_ids=ids(tokenizer, "<s>", *ADD_TWO_AND_TWO, *GENERATION_PROMPT),
        chosen_ids=ids(tokenizer, "four", "</s>"),
        rejected_ids=ids(tokenizer, "five", "</s>"),
        truncated=False,
    )
    assert result.prompt_ids == text_ids(
        tokenizer, "<s><|user|>\nAdd the numbers.\n2 and 2</s><|assistant|>\n"
    )
