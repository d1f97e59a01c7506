"""Tokenisation: prompt/completion split at the token seam, EOS/BOS handling and truncation."""

from __future__ import annotations

import copy
import logging

import pytest

from rlhf_lab.data.formats import DataError, PreferenceExample
from rlhf_lab.data.tokenize import TokenizedExample, TokenizeSettings, tokenize_example, tokenize_examples
from rlhf_lab.errors import ConfigError
from rlhf_lab.models.tiny import CHAT_TEMPLATE, train_tokenizer
from tests.data.tokens import ids, with_bos

# Each string repeats so every pair reaches min_frequency; "end\n\n" puts the merge "ĊĊ" in the vocabulary.
CORPUS = [
    "hi there", "the cat sat on the mat", "abcdef abc def", "hello world", "the dog ran",
    "what is two plus two", "four", "five", "be brief", "end\n\n",
] * 4  # fmt: skip

NO_LIMITS = TokenizeSettings(max_length=None, max_prompt_length=None)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=330)


@pytest.fixture(scope="module")
def bos_tokenizer(tokenizer):
    return with_bos(tokenizer)


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def system(content: str) -> dict[str, str]:
    return {"role": "system", "content": content}


def example(prompt, chosen, rejected=None) -> PreferenceExample:
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, source="t.jsonl:row 0")


def test_conversational_ids_hand_checked(tokenizer):
    result = tokenize_example(
        example([user("hi there")], [assistant("the cat")], [assistant("the dog")]), tokenizer, NO_LIMITS
    )
    assert result == TokenizedExample(
        prompt_ids=ids(tokenizer, "<s>", "<|user|>", "Ċ", "hi", "Ġthere", "</s>", "<|assistant|>", "Ċ"),
        chosen_ids=ids(tokenizer, "the", "Ġcat", "</s>"),
        rejected_ids=ids(tokenizer, "the", "Ġdog", "</s>"),
        truncated=False,
    )


@pytest.mark.parametrize(
    ("prompt", "chosen", "rejected"),
    [
        pytest.param([user("hi there")], [assistant("the cat")], [assistant("hello")], id="single-turn"),
        pytest.param(
            [system("be brief"), user("hi there"), assistant("hello world"), user("what is two plus two")],
            [assistant("four")],
            [assistant("five")],
            id="system-and-multi-turn",
        ),
        # Leading spaces and letters that would merge with a preceding word if there were one.
        pytest.param([user("abc")], [assistant(" def")], [assistant("def")], id="leading-space"),
        pytest.param(
            [user("the")],
            [assistant("cat sat"), user("on the"), assistant("mat")],
            [assistant("dog ran")],
            id="multi-turn-completion",
        ),
    ],
)
def test_conversational_prompt_plus_completion_is_the_full_tokenization(tokenizer, prompt, chosen, rejected):
    result = tokenize_example(example(prompt, chosen, rejected), tokenizer, NO_LIMITS)
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert result.prompt_ids == tokenizer(prompt_text, add_special_tokens=False).input_ids
    for completion, completion_ids in ((chosen, result.chosen_ids), (rejected, result.rejected_ids)):
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        assert result.prompt_ids + completion_ids == tokenizer(full_text, add_special_tokens=False).input_ids
        assert completion_ids[-1] == tokenizer.eos_token_id
    assert not result.truncated


def test_token_spanning_the_seam_goes_to_the_completion(tokenizer):
    # The prompt's final "\n" and the completion's first "\n" merge into one token "ĊĊ"; tokenising the
    # prompt alone would end in "Ċ", a token the model never sees in the full sequence.
    prompt, chosen = [user("hi there")], [assistant("\n\nthe cat")]
    result = tokenize_example(example(prompt, chosen), tokenizer, NO_LIMITS)
    assert result.prompt_ids == ids(
        tokenizer, "<s>", "<|user|>", "Ċ", "hi", "Ġthere", "</s>", "<|assistant|>"
    )
    assert result.chosen_ids == ids(tokenizer, "ĊĊ", "Ċ", "the", "Ġcat", "</s>")
    assert result.rejected_ids is None
    full_text = tokenizer.apply_chat_template(prompt + chosen, tokenize=False)
    assert result.prompt_ids + result.chosen_ids == tokenizer(full_text, add_special_tokens=False).input_ids


def test_seam_differing_between_chosen_and_rejected_uses_the_common_prompt(tokenizer):
    result = tokenize_example(
        example([user("hi there")], [assistant("\n\nthe cat")], [assistant("the dog")]), tokenizer, NO_LIMITS
    )
    assert result.prompt_ids == ids(
        tokenizer, "<s>", "<|user|>", "Ċ", "hi", "Ġthere", "</s>", "<|assistant|>"
    )
    assert result.chosen_ids == ids(tokenizer, "ĊĊ", "Ċ", "the", "Ġcat", "</s>")
    assert result.rejected_ids == ids(tokenizer, "Ċ", "the", "Ġdog", "</s>")


def test_plain_adds_bos_and_appends_eos(bos_tokenizer):
    result = tokenize_example(example("what is two plus two", " four", " five"), bos_tokenizer, NO_LIMITS)
    assert result == TokenizedExample(
        prompt_ids=ids(bos_tokenizer, "<s>", "what", "Ġis", "Ġtwo", "Ġplus", "Ġtwo"),
        chosen_ids=ids(bos_tokenizer, "Ġ", "four", "</s>"),
        rejected_ids=ids(bos_tokenizer, "Ġ", "five", "</s>"),
        truncated=False,
    )


def test_special_token_text_in_the_data_stays_text(tokenizer):
    """A completion spelling "</s>" is text, not the EOS token (data cannot inject special tokens); the
    real EOS still ends it."""
    result = tokenize_example(example("hi", " there</s>"), tokenizer, NO_LIMITS)
    as_text = tokenizer(" there</s>", add_special_tokens=False, split_special_tokens=True).input_ids
    assert result.chosen_ids == [*as_text, tokenizer.eos_token_id]
    assert result.chosen_ids.count(tokenizer.eos_token_id) == 1


def test_plain_boundary_mid_word(tokenizer, bos_tokenizer):
    # "abc" + "def" is the single token "abcdef": the whole word becomes completion, none of it prompt.
    result = tokenize_example(example("abc", "def", " def"), tokenizer, NO_LIMITS)
    assert result.prompt_ids == []
    assert result.chosen_ids == ids(tokenizer, "abcdef", "</s>")
    assert result.rejected_ids == ids(tokenizer, "abc", "Ġdef", "</s>")
    for completion, completion_ids in (("def", result.chosen_ids), (" def", result.rejected_ids)):
        expected = [*tokenizer("abc" + completion, add_special_tokens=True).input_ids, tokenizer.eos_token_id]
        assert result.prompt_ids + completion_ids == expected

    with_bos = tokenize_example(example("abc", "def"), bos_tokenizer, NO_LIMITS)
    assert with_bos.prompt_ids == ids(bos_tokenizer, "<s>")
    assert with_bos.chosen_ids == ids(bos_tokenizer, "abcdef", "</s>")


LONG_PROMPT = "hello world the cat sat on the mat"  # hello Ġworld Ġthe Ġcat Ġsat Ġon Ġthe Ġmat


def test_truncation_keep_end(tokenizer):
    settings = TokenizeSettings(max_length=5, max_prompt_length=3, truncation_mode="keep_end")
    result = tokenize_example(example(LONG_PROMPT, " the dog ran", " the cat"), tokenizer, settings)
    assert result == TokenizedExample(
        prompt_ids=ids(tokenizer, "Ġon", "Ġthe", "Ġmat"),
        chosen_ids=ids(tokenizer, "Ġthe", "Ġdog"),
        rejected_ids=ids(tokenizer, "Ġthe", "Ġcat"),
        truncated=True,
    )


def test_truncation_keep_start(tokenizer):
    settings = TokenizeSettings(max_length=7, max_prompt_length=3, truncation_mode="keep_start")
    result = tokenize_example(example(LONG_PROMPT, " the dog ran", " the cat"), tokenizer, settings)
    assert result == TokenizedExample(
        prompt_ids=ids(tokenizer, "hello", "Ġworld", "Ġthe"),
        chosen_ids=ids(tokenizer, "Ġthe", "Ġdog", "Ġran", "</s>"),
        rejected_ids=ids(tokenizer, "Ġthe", "Ġcat", "</s>"),
        truncated=True,
    )


def test_exact_fit_is_not_truncated(tokenizer):
    settings = TokenizeSettings(max_length=12, max_prompt_length=8)
    result = tokenize_example(example(LONG_PROMPT, " the dog ran"), tokenizer, settings)
    assert len(result.prompt_ids) + len(result.chosen_ids) == 12
    assert not result.truncated


def test_too_long_returns_none_and_is_counted(tokenizer, caplog):
    settings = TokenizeSettings(max_length=8, max_prompt_length=None)
    too_long = example(LONG_PROMPT, " the dog ran")
    assert tokenize_example(too_long, tokenizer, settings) is None

    fits = example("hi", " there")
    truncated = example("hi", " the cat sat on the mat the dog ran")
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.data.tokenize"):
        tokenized, stats = tokenize_examples([fits, too_long, truncated], tokenizer, settings)
    assert stats == {"examples": 3, "truncated": 1, "dropped_too_long": 1}
    assert tokenized == [
        TokenizedExample(ids(tokenizer, "hi"), ids(tokenizer, "Ġthere", "</s>"), None, False),
        TokenizedExample(
            ids(tokenizer, "hi"),
            ids(tokenizer, "Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", "Ġthe"),
            None,
            True,
        ),
    ]
    assert "of 3 examples, 1 were truncated" in caplog.text and "1 dropped" in caplog.text


def test_missing_chat_template_suggests_config(tokenizer):
    without = copy.deepcopy(tokenizer)
    without.chat_template = None
    with pytest.raises(ConfigError, match=r"model\.chat_template"):
        tokenize_example(example([user("hi")], [assistant("yo")]), without, NO_LIMITS)


def test_template_that_does_not_prefix_the_prompt(tokenizer):
    odd = copy.deepcopy(tokenizer)
    odd.chat_template = CHAT_TEMPLATE.replace("<|assistant|>\n{% endif %}", "<|assistant|>\n\n{% endif %}")
    with pytest.raises(DataError, match="does not render the prompt") as caught:
        tokenize_example(example([user("hi")], [assistant("yo")]), odd, NO_LIMITS)
    assert str(caught.value).startswith("t.jsonl:row 0: ")


def test_unknown_truncation_mode():
    with pytest.raises(ConfigError, match=r"data\.truncation_mode"):
        TokenizeSettings(truncation_mode="middle")
