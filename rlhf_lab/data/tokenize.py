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
        prompt: Prompt-only examples (online RL): the prompt as data (a string or messages), for reward
            functions; None otherwise.
        columns: Prompt-only examples: the row's extra columns (`PreferenceExample.columns`); None otherwise.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None
    truncated: bool
    label: bool | None = None
    margin: float | None = None
    mismatched_ids: list[int] | None = None
    prompt: Any = None
    columns: dict[str, Any] | None = None


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


def _inside(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    return any(low <= start and end <= high for low, high in spans)


def encode_text(
    tokenizer: Any, text: str, add_special_tokens: bool, protected: list[tuple[int, int]]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text``, where special-token strings that occur inside the
    ``protected`` character spans (the data's own text: message contents, plain prompts and completions) are
    encoded as the text they are, not as the special tokens they spell.

    A tokenizer splits its input at every added-token match and encodes the pieces between them apart. So the
    text is encoded once as usual; only where a protected span holds such a match is the piece between the
    nearest real (template) special tokens encoded again, as text (``split_special_tokens``): everything
    else, and every row without such text, is tokenised exactly as the tokenizer tokenises the whole string.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{type(tokenizer).__name__} is a slow tokenizer; offsets are needed to split prompt from "
            "completion, so use a fast (Rust) tokenizer"
        )
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]
    added = set(getattr(tokenizer, "added_tokens_decoder", {}))
    spelled = [
        i
        for i, (t, (a, b)) in enumerate(zip(ids, offsets, strict=True))
        if t in added and b > a and _inside(protected, a, b)
    ]
    if not spelled:
        return ids, offsets
    # Boundaries the tokenizer keeps: template special tokens and those its post-processor adds (empty span).
    boundary = [
        (t in added and not _inside(protected, a, b)) or a == b
        for t, (a, b) in zip(ids, offsets, strict=True)
    ]
    out_ids: list[int] = []
    out_offsets: list[tuple[int, int]] = []
    position = 0
    while position < len(ids):
        if boundary[position]:
            out_ids.append(ids[position])
            out_offsets.append(offsets[position])
            position += 1
            continue
        end = position
        while end < len(ids) and not boundary[end]:
            end += 1
        if any(position <= i < end for i in spelled):
            start_char, end_char = offsets[position][0], offsets[end - 1][1]
            piece = tokenizer(
                text[start_char:end_char],
                add_special_tokens=False,
                split_special_tokens=True,
                return_offsets_mapping=True,
            )
            out_ids += list(piece["input_ids"])
            out_offsets += [(a + start_char, b + start_char) for a, b in piece["offset_mapping"]]
        else:
            out_ids += ids[position:end]
            out_offsets += offsets[position:end]
        position = end
    return out_ids, out_offsets


def _split_at(
    tokenizer: Any, text: str, boundary: int, add_special_tokens: bool, protected: list[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Tokenise ``text`` once and split the ids where the tokens stop ending at or before ``boundary``."""
    ids, offsets = encode_text(tokenizer, text, add_special_tokens, protected)
    split = 0
    # Special tokens added by the tokenizer have (0, 0) offsets, so a leading BOS counts as prompt.
    while split < len(ids) and offsets[split][1] <= boundary:
        split += 1
    return ids[:split], ids[split:]


def content_spans(text: str, messages: list[Message]) -> list[tuple[int, int]]:
    """Where each message's content stands in the rendered ``text`` (templates insert it verbatim, in order).

    Raises:
        LookupError: A content is not found verbatim (a template that rewrites contents).
    """
    spans, cursor = [], 0
    for message in messages:
        content = message["content"]
        start = text.find(content, cursor)
        if start < 0:
            raise LookupError(content)
        spans.append((start, start + len(content)))
        cursor = start + len(content)
    return spans


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
    return _split_at(
        tokenizer,
        full_text,
        len(prompt_text),
        False,
        _protected(full_text, prompt + completion, tokenizer, example),
    )


def _split_plain(example: PreferenceExample, completion: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    prompt = example.prompt
    assert isinstance(prompt, str)
    text = prompt + completion
    prompt_ids, completion_ids = _split_at(tokenizer, text, len(prompt), True, [(0, len(text))])
    eos = tokenizer.eos_token_id
    # Plain text has no template to end the turn, and the model must learn to stop.
    if eos is not None and (not completion_ids or completion_ids[-1] != eos):
        completion_ids.append(eos)
    return prompt_ids, completion_ids


def _protected(
    text: str, messages: list[Message], tokenizer: Any, example: PreferenceExample
) -> list[tuple[int, int]]:
    """The message contents' spans in the rendered text; a template that rewrites contents gets none, and
    if the data then spells a special token the row is refused (it could not stay text)."""
    try:
        return content_spans(text, messages)
    except LookupError:
        added = [token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values()]
        for message in messages:
            spelled = [token for token in added if token and token in message["content"]]
            if spelled:
                raise DataError(
                    f"the text contains the tokenizer's special token {spelled[0]!r}, and this chat template "
                    "rewrites message contents, so it cannot be kept as text; remove it from the data",
                    file=example.source,
                ) from None
        return []


def _prompt_for_generation(example: PreferenceExample, tokenizer: Any) -> list[int]:
    """Prompt ids as a generation call would see them: the template's generation prompt, or the text."""
    if isinstance(example.prompt, list):
        text = _render(tokenizer, example.prompt, example.source, generation_prompt=True)
        return encode_text(tokenizer, text, False, _protected(text, example.prompt, tokenizer, example))[0]
    return encode_text(tokenizer, example.prompt, True, [(0, len(example.prompt))])[0]


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
        prompt=example.prompt if example.chosen is None else None,
        columns=dict(example.columns) if example.chosen is None else None,
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
