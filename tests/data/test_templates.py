"""Real tokenizers and chat templates: what a template renders (content parts, tools), and that prompts and
completions come out token for token as the model family's own encoder and the template itself make them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_lab.data.formats import DataError, PreferenceExample
from rlhf_lab.data.templates import render, traits
from rlhf_lab.data.tokenize import TokenizeSettings, tokenize_example
from rlhf_lab.errors import ConfigError
from rlhf_lab.models.hub import chat_template_text
from rlhf_lab.models.tiny import train_tokenizer
from tests.real_tokenizers import llama3_tokenizer, mistral_instruct_template, mistral_tokenizer, trl_template

UNLIMITED = TokenizeSettings(max_length=None, max_prompt_length=None)


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def load(folder: Path, template: Path) -> object:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = template.read_text()
    return tokenizer


@pytest.fixture(scope="module")
def mistral() -> object:
    return load(mistral_tokenizer(), mistral_instruct_template())


@pytest.fixture(scope="module")
def llama3() -> object:
    return load(llama3_tokenizer(), trl_template("llama3"))


@pytest.fixture(scope="module")
def tiny() -> object:
    return train_tokenizer(["Is a cat an animal? It is. Look it up. done"] * 8, vocab_size=320)


def pair(prompt: list[dict]) -> PreferenceExample:
    return PreferenceExample(
        prompt, [assistant("It is an animal.")], [assistant("It is a tool.")], "data.jsonl:row 0"
    )


# --- the model family's own encoders ---------------------------------------------------------------


def test_mistral_prompt_ids_equal_mistral_commons_own_encoder(mistral) -> None:
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    tokenized = tokenize_example(pair([user("Is a cat an animal?")]), mistral, UNLIMITED)
    request = ChatCompletionRequest(messages=[UserMessage(content="Is a cat an animal?")])
    assert tokenized.prompt_ids == MistralTokenizer.v1().encode_chat_completion(request).tokens
    # <s> and </s> are single tokens: BOS opens the prompt, EOS closes each completion.
    assert tokenized.prompt_ids[0] == mistral.bos_token_id == 1
    assert mistral.eos_token_id in tokenized.chosen_ids and mistral.eos_token_id in tokenized.rejected_ids


def test_llama3_prompt_and_completion_ids_equal_llama_models_own_chat_format(llama3) -> None:
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    tokenized = tokenize_example(pair([user("Is a cat an animal?")]), llama3, UNLIMITED)
    chat = ChatFormat(Tokenizer.get_instance())
    prompt = chat.encode_dialog_prompt([RawMessage(role="user", content="Is a cat an animal?")]).tokens
    assert tokenized.prompt_ids == prompt
    # The completion is the assistant message as Llama 3 encodes it, after its header: text, then <|eot_id|>.
    answer = chat.encode_message(
        RawMessage(role="assistant", content="It is an animal."), tool_prompt_format=None
    )[0]
    assert answer[-len(tokenized.chosen_ids) :] == tokenized.chosen_ids
    assert tokenized.chosen_ids[-1] == llama3.convert_tokens_to_ids("<|eot_id|>")


@pytest.mark.parametrize("name", ["mistral", "llama3"])
def test_the_completion_is_exactly_the_templates_assistant_part(
    name: str, request: pytest.FixtureRequest
) -> None:
    tokenizer = request.getfixturevalue(name)
    prompt = [user("Is a cat an animal?"), assistant("Yes."), user("And a saw?")]
    example = PreferenceExample(prompt, [assistant("A tool.")], [assistant("An animal.")], "data.jsonl:row 0")
    tokenized = tokenize_example(example, tokenizer, UNLIMITED)
    for completion, ids in (
        (example.chosen, tokenized.chosen_ids),
        (example.rejected, tokenized.rejected_ids),
    ):
        own = tokenizer.apply_chat_template(prompt + completion, tokenize=True)["input_ids"]
        assert tokenized.prompt_ids + ids == own  # the template's own tokenisation, split in two
        full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        generation_prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert (
            tokenizer.decode(ids) == full[len(generation_prompt) :]
        )  # what the template writes for the answer


def test_text_that_spells_a_real_special_token_stays_text(llama3) -> None:
    tokenized = tokenize_example(pair([user("What does <|eot_id|> mean?")]), llama3, UNLIMITED)
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    # One <|eot_id|> closes the user turn; the one in the question is text.
    assert tokenized.prompt_ids.count(eot) == 1


# --- what templates render -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "parts", "tools", "tool_calls"),
    [
        ("llava_next", True, False, False),  # llava-hf's LLaVA-1.6: content[0]['text']
        ("qwen2_5_vl", False, False, False),  # Qwen2-VL / Qwen2.5-VL: strings or parts
        ("qwen2_5", False, True, True),
        ("llama3", False, False, False),
    ],
)
def test_template_traits(tiny, template: str, parts: bool, tools: bool, tool_calls: bool) -> None:
    tokenizer = train_tokenizer(
        ["a b c"] * 4, vocab_size=300, chat_template=trl_template(template).read_text()
    )
    found = traits(tokenizer)
    assert (found.parts, found.tools, found.tool_calls) == (parts, tools, tool_calls)


def test_a_parts_only_template_renders_string_content(tiny) -> None:
    tokenizer = train_tokenizer(
        ["a b c"] * 4, vocab_size=300, chat_template=trl_template("llava_next").read_text()
    )
    text = render(
        tokenizer, [user("Is a cat an animal?"), assistant("Yes.")], generation_prompt=False, source="x"
    )
    assert text == "[INST] Is a cat an animal? [/INST] Yes.</s> "


TOOL_ROW = PreferenceExample(
    [
        user("Is a cat an animal?"),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "look_up", "arguments": {"what": "cat"}}}
            ],
        },
        {"role": "tool", "content": "cat: an animal"},
    ],
    [assistant("It is an animal.")],
    None,
    "data.jsonl:row 3",
    tools=[{"type": "function", "function": {"name": "look_up", "parameters": {"type": "object"}}}],
)


def test_tool_rows_through_a_template_without_tool_support_are_named(llama3) -> None:
    with pytest.raises(DataError) as caught:
        tokenize_example(TOOL_ROW, llama3, UNLIMITED)
    assert str(caught.value).startswith(
        "data.jsonl:row 3: this row has tools, but the chat template has no tool support"
    )


def test_tool_outputs_are_prompt_and_only_the_answer_is_trained(tiny) -> None:
    tiny_qwen = train_tokenizer(
        ["a b c"] * 4, vocab_size=300, chat_template=trl_template("qwen2_5").read_text()
    )
    for tokenizer in (tiny, tiny_qwen):  # the tiny models' own template renders tools too
        tokenized = tokenize_example(TOOL_ROW, tokenizer, UNLIMITED)
        prompt, completion = tokenizer.decode(tokenized.prompt_ids), tokenizer.decode(tokenized.chosen_ids)
        assert "cat: an animal" in prompt and '"what": "cat"' in prompt and "look_up" in prompt
        assert completion.startswith("It is an animal.")
        assert "cat: an animal" not in completion


# --- model.chat_template -----------------------------------------------------------------------------


def test_chat_template_is_a_file_or_its_text(tmp_path: Path) -> None:
    text = trl_template("llama3").read_text()
    assert chat_template_text(str(trl_template("llama3"))) == text
    assert chat_template_text(text) == text
    with pytest.raises(ConfigError, match="neither a Jinja template"):
        chat_template_text(str(tmp_path / "missing.jinja"))


def test_a_tiny_model_takes_its_vocabulary_from_a_given_tokenizer(tmp_path: Path) -> None:
    import json

    from rlhf_lab.models.tiny import TinyModel

    spec = TinyModel(tokenizer=str(mistral_tokenizer()), cache_dir=str(tmp_path))
    spec.prepare(lambda: iter(["the corpus does not matter"]))
    config = json.loads((Path(spec.name_or_path) / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (32000, 1, 2)
    # The same tokenizer on other data: the same model (the data trains no tokenizer).
    other = TinyModel(tokenizer=str(mistral_tokenizer()), cache_dir=str(tmp_path))
    other.prepare(lambda: iter(["other data"]))
    assert other.name_or_path == spec.name_or_path


def test_a_vision_language_model_takes_its_tokenizer_from_its_processor() -> None:
    from rlhf_lab.models.tiny_vlm import TinyVisionLanguageModel

    with pytest.raises(ConfigError, match="takes its tokenizer from its processor"):
        TinyVisionLanguageModel(tokenizer="somewhere")
