"""Tokenising examples so that prompt and completion ids concatenate to the tokenisation of the full text.

Tokenising the prompt and the completion separately and concatenating the ids differs from tokenising
the whole sequence wherever a token would span the boundary (BPE merges across it). The model is trained
and evaluated on whole sequences, so the whole text is tokenised once and split by character offsets:
tokens that end inside the prompt text are prompt tokens, everything from the first token that reaches
into the completion on is completion.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rlhf_lab.data.formats import DataError, Message, PreferenceExample
from rlhf_lab.errors import ConfigError, check_choice, check_range

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("keep_end", "keep_start")


@dataclass
class TokenizedExample:
    """Token ids of one example.

    Attributes:
        prompt_ids: Prompt tokens, shared by chosen and rejected.
        chosen_ids: Chosen completion tokens only (the scored tokens); empty for prompt-only examples.
        rejected_ids: Rejected completion tokens only; None for SFT, unpaired and prompt-only examples.
        truncated: True if the prompt or either completion was truncated.
        label: Unpaired (KTO) examples: whether ``chosen_ids`` is desirable; None otherwise.
        margin: The pair's margin from the data, if any.
        mismatched_ids: Unpaired (KTO) examples served for training: the completion of this example's
            mismatched partner (another prompt's completion), set by the dataset; None otherwise.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None
    truncated: bool
    label: bool | None = None
    margin: float | None = None
    mismatched_ids: list[int] | None = None


@dataclass
class TokenizeSettings:
    """Length limits.

    Attributes:
        max_length: Longest prompt + completion, per sequence; None for no limit.
        max_prompt_length: Longest prompt; None for no limit.
        truncation_mode: For an over-long prompt: ``keep_end`` keeps its last tokens (nearest the
            completion), ``keep_start`` its first.
    """

    max_length: int | None = 512
    max_prompt_length: int | None = 256
    truncation_mode: str = "keep_end"

    def __post_init__(self) -> None:
        check_choice("data.truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        if self.max_length is not None:
            check_range("data.max_length", self.max_length, 1)
        if self.max_prompt_length is not None:
            check_range("data.max_prompt_length", self.max_prompt_length, 0)


def _split_at(
    tokenizer: Any, text: str, boundary: int, add_special_tokens: bool
) -> tuple[list[int], list[int]]:
    """Tokenise ``text`` once and split the ids where the tokens stop ending at or before ``boundary``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{type(tokenizer).__name__} is a slow tokenizer; offsets are needed to split prompt from "
            "completion, so use a fast (Rust) tokenizer"
        )
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]
    split = 0
    # Special tokens added by the tokenizer have (0, 0) offsets, so a leading BOS counts as prompt.
    while split < len(ids) and offsets[split][1] <= boundary:
        split += 1
    return ids[:split], ids[split:]


def _render(tokenizer: Any, messages: list[Message], source: str, *, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as error:
        raise DataError(f"the chat template failed to render this example: {error}", file=source) from error


def _split_conversational(
    example: PreferenceExample, completion: list[Message], tokenizer: Any
) -> tuple[list[int], list[int]]:
    prompt = example.prompt
    assert isinstance(prompt, list)
    prompt_text = _render(tokenizer, prompt, example.source, generation_prompt=True)
    full_text = _render(tokenizer, prompt + completion, example.source, generation_prompt=False)
    if not full_text.startswith(prompt_text):
        raise DataError(
            "the chat template does not render the prompt (with add_generation_prompt=True) as a prefix of "
            f"the full conversation, so the completion cannot be located; prompt renders as {prompt_text!r}, "
            f"the conversation starts {full_text[: len(prompt_text) + 20]!r}. Fix or set model.chat_template",
            file=example.source,
        )
    return _split_at(tokenizer, full_text, len(prompt_text), add_special_tokens=False)


def _split_plain(example: PreferenceExample, completion: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    prompt = example.prompt
    assert isinstance(prompt, str)
    prompt_ids, completion_ids = _split_at(
        tokenizer, prompt + completion, len(prompt), add_special_tokens=True
    )
    eos = tokenizer.eos_token_id
    # Plain text has no template to end the turn, and the model must learn to stop.
    if eos is not None and (not completion_ids or completion_ids[-1] != eos):
        completion_ids.append(eos)
    return prompt_ids, completion_ids


def _prompt_for_generation(example: PreferenceExample, tokenizer: Any) -> list[int]:
    """Prompt ids as a generation call would see them: the template's generation prompt, or the text."""
    if isinstance(example.prompt, list):
        text = _render(tokenizer, example.prompt, example.source, generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(example.prompt, add_special_tokens=True)["input_ids"])


def _common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return length


def tokenize_example(
    example: PreferenceExample, tokenizer: Any, settings: TokenizeSettings
) -> TokenizedExample | None:
    """Tokenise one example and apply the length limits.

    Args:
        example: A validated example.
        tokenizer: A fast `transformers` tokenizer (with a chat template for conversational examples).
        settings: Length limits and prompt truncation mode.

    Returns:
        The ids, or None when not even one completion token fits after the prompt within ``max_length``
        (for prompt-only examples: when the prompt leaves no room to generate).

    Raises:
        ConfigError: Conversational data but the tokenizer has no chat template, or a slow tokenizer.
        DataError: The chat template does not render the prompt as a prefix of the conversation.
    """
    if example.is_conversational:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"{example.source}: conversational data needs a chat template but the tokenizer has none; "
                "set model.chat_template (a Jinja template) or use plain-string data"
            )
        split = _split_conversational
    else:
        split = _split_plain
    if example.chosen is None:
        prompt_ids, completion_ids = _prompt_for_generation(example, tokenizer), [[]]
    else:
        completions = [example.chosen] if example.rejected is None else [example.chosen, example.rejected]
        splits = [split(example, text, tokenizer) for text in completions]  # type: ignore[arg-type]

        # The prompt's last token can merge with a completion's first characters differently for chosen and
        # rejected; the shared prompt is then the common part and the rest moves to each completion, which
        # keeps every prompt + completion equal to the tokenisation of its full text.
        shared = len(splits[0][0])
        for prompt_ids, _ in splits[1:]:
            shared = min(shared, _common_prefix_length(splits[0][0], prompt_ids))
        prompt_ids = splits[0][0][:shared]
        completion_ids = [prompt[shared:] + completion for prompt, completion in splits]

    truncated = False
    limit = settings.max_prompt_length
    if limit is not None and len(prompt_ids) > limit:
        truncated = True
        if settings.truncation_mode == "keep_end":
            prompt_ids = prompt_ids[len(prompt_ids) - limit :]
        else:
            prompt_ids = prompt_ids[:limit]
    if settings.max_length is not None:
        room = settings.max_length - len(prompt_ids)
        if room <= 0:
            return None
        if any(len(ids) > room for ids in completion_ids):
            truncated = True
            completion_ids = [ids[:room] for ids in completion_ids]
    return TokenizedExample(
        prompt_ids=prompt_ids,
        chosen_ids=completion_ids[0],
        rejected_ids=completion_ids[1] if len(completion_ids) > 1 else None,
        truncated=truncated,
        label=example.label,
        margin=example.margin,
    )


def tokenize_examples(
    examples: Iterable[PreferenceExample], tokenizer: Any, settings: TokenizeSettings
) -> tuple[list[TokenizedExample], dict[str, int]]:
    """Tokenise many examples, dropping those that cannot fit.

    Returns:
        The kept examples, in order, and ``{"examples": n_in, "truncated": t, "dropped_too_long": d}``
        where ``t`` counts kept examples with any truncation.
    """
    tokenized = []
    total = truncated = dropped = 0
    for example in examples:
        total += 1
        result = tokenize_example(example, tokenizer, settings)
        if result is None:
            dropped += 1
            continue
        truncated += result.truncated
        tokenized.append(result)
    if truncated or dropped:
        logger.warning(
            "of %d examples, %d were truncated (max_length=%s, max_prompt_length=%s) and %d dropped because "
            "the prompt leaves no room for a completion",
            total,
            truncated,
            settings.max_length,
            settings.max_prompt_length,
            dropped,
        )
    return tokenized, {"examples": total, "truncated": truncated, "dropped_too_long": dropped}
