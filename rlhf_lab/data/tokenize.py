"""Tokenising examples so that prompt and completion ids concatenate to the tokenisation of the full text.

Tokenising the prompt and the completion separately and concatenating the ids differs from tokenising
the whole sequence wherever a token would span the boundary (BPE merges across it). The model is trained
and evaluated on whole sequences, so the whole text is tokenised once and split by character offsets:
tokens that end inside the prompt text are prompt tokens, everything from the first token that reaches
into the completion on is completion.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rlhf_lab.data.formats import DataError, Message, PreferenceExample
from rlhf_lab.data.images import IMAGE_PLACEHOLDER, ImageProcessing, ImageSource, count_placeholders
from rlhf_lab.data.templates import render
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
        images: The images the prompt shows (their tokens are in ``prompt_ids``); None for text.
        rejected_images: The images the rejected row shows instead, with ``rejected_prompt_ids`` their prompt
            (image-level pairs); None when the rejected row shows ``images`` after ``prompt_ids``.
        rejected_prompt_ids: The rejected row's prompt when it shows ``rejected_images``; None otherwise.
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
    images: list[ImageSource] | None = None
    rejected_images: list[ImageSource] | None = None
    rejected_prompt_ids: list[int] | None = None


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


def _carve(text: str, spans: list[tuple[int, int]], pieces: list[str]) -> list[tuple[int, int]]:
    """``spans`` without the places where one of ``pieces`` stands (image tokens inserted in the data's own
    text, which must stay special tokens)."""
    if not pieces:
        return spans
    carved = []
    for low, high in spans:
        cursor = low
        while cursor < high:
            found = [(text.find(piece, cursor, high), piece) for piece in pieces]
            found = [(start, piece) for start, piece in found if start >= 0]
            if not found:
                break
            start, piece = min(found)
            if start > cursor:
                carved.append((cursor, start))
            cursor = start + len(piece)
        if cursor < high:
            carved.append((cursor, high))
    return carved


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


def _render(
    example: PreferenceExample, tokenizer: Any, messages: list[Message], *, generation_prompt: bool
) -> str:
    return render(
        tokenizer, messages, generation_prompt=generation_prompt, source=example.source, tools=example.tools
    )


def _split_conversational(
    example: PreferenceExample, completion: list[Message], tokenizer: Any, carve: list[str]
) -> tuple[list[int], list[int]]:
    prompt = example.prompt
    assert isinstance(prompt, list)
    prompt_text = _render(example, tokenizer, prompt, generation_prompt=True)
    full_text = _render(example, tokenizer, prompt + completion, generation_prompt=False)
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
        _carve(full_text, _protected(full_text, prompt + completion, tokenizer, example), carve),
    )


def _split_plain(
    example: PreferenceExample, completion: str, tokenizer: Any, carve: list[str]
) -> tuple[list[int], list[int]]:
    prompt = example.prompt
    assert isinstance(prompt, str)
    text = prompt + completion
    prompt_ids, completion_ids = _split_at(
        tokenizer, text, len(prompt), True, _carve(text, [(0, len(text))], carve)
    )
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


def _prompt_for_generation(example: PreferenceExample, tokenizer: Any, carve: list[str]) -> list[int]:
    """Prompt ids as a generation call would see them: the template's generation prompt, or the text."""
    if isinstance(example.prompt, list):
        text = _render(example, tokenizer, example.prompt, generation_prompt=True)
        protected = _carve(text, _protected(text, example.prompt, tokenizer, example), carve)
        return encode_text(tokenizer, text, False, protected)[0]
    text = example.prompt
    return encode_text(tokenizer, text, True, _carve(text, [(0, len(text))], carve))[0]


def _show_images(
    prompt: list[Message] | str, images: list[ImageSource], processing: ImageProcessing, source: str
) -> tuple[list[Message] | str, list[str]]:
    """The prompt with its ``k``-th ``<image>`` replaced by image ``k``'s tokens, and the texts inserted."""
    spelled = [
        processing.image_token,
        *processing.tokenizer.convert_ids_to_tokens(sorted(processing.image_token_ids)),
    ]
    inserted: list[str] = []
    position = 0

    def replace(text: str) -> str:
        nonlocal position
        pieces = text.split(IMAGE_PLACEHOLDER)
        for piece in pieces:
            token = next((token for token in spelled if token and token in piece), None)
            if token is not None:
                raise DataError(
                    f"the text spells the model's image token {token!r}; write {IMAGE_PLACEHOLDER} where an image "
                    "stands",
                    file=source,
                )
        out = pieces[0]
        for piece in pieces[1:]:
            expansion = processing.expansion(images[position])
            inserted.append(expansion)
            position += 1
            out += expansion + piece
        return out

    if isinstance(prompt, str):
        return replace(prompt), inserted
    return [{**message, "content": replace(message["content"])} for message in prompt], inserted


def _truncate_prompt(
    prompt_ids: list[int], settings: TokenizeSettings, image_token_ids: frozenset[int]
) -> tuple[list[int], bool] | None:
    """The prompt cut to ``max_prompt_length``, whether it was cut, or None when the cut would remove an image
    token (an image is never shown in part)."""
    limit = settings.max_prompt_length
    if limit is None or len(prompt_ids) <= limit:
        return prompt_ids, False
    if settings.truncation_mode == "keep_end":
        kept, removed = prompt_ids[len(prompt_ids) - limit :], prompt_ids[: len(prompt_ids) - limit]
    else:
        kept, removed = prompt_ids[:limit], prompt_ids[limit:]
    if image_token_ids and any(token in image_token_ids for token in removed):
        return None
    return kept, True


def _common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return length


def tokenize_example(
    example: PreferenceExample,
    tokenizer: Any,
    settings: TokenizeSettings,
    images: ImageProcessing | None = None,
) -> TokenizedExample | None:
    """Tokenise one example and apply the length limits.

    Args:
        example: A validated example.
        tokenizer: A fast `transformers` tokenizer (with a chat template for conversational examples).
        settings: Length limits and prompt truncation mode.
        images: A vision-language model's image processing: each ``<image>`` placeholder becomes that image's
            tokens (which count toward the limits); None for a text model.

    Returns:
        The ids, or None when not even one completion token fits after the prompt within ``max_length``
        (for prompt-only examples: when the prompt leaves no room to generate), or when fitting the prompt
        would cut through an image's tokens.

    Raises:
        ConfigError: Conversational data but the tokenizer has no chat template, a slow tokenizer, or images
            for a text model.
        DataError: The chat template does not render the prompt as a prefix of the conversation, or the
            placeholders do not match the images.
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
    image_token_ids: frozenset[int] = frozenset()
    shown: dict[str, tuple[PreferenceExample, list[str]]] = {}
    if images is not None:
        image_token_ids = images.image_token_ids
        count = count_placeholders(example.prompt)
        if count and not example.images:
            raise DataError(
                f"the prompt has {count} {IMAGE_PLACEHOLDER} placeholder(s) but the row has no images",
                file=example.source,
            )
        for name, row_images in (("chosen", example.images), ("rejected", example.rejected_images)):
            if row_images:
                prompt, inserted = _show_images(example.prompt, row_images, images, example.source)
                shown[name] = (dataclasses.replace(example, prompt=prompt), inserted)
    elif example.images:
        raise ConfigError(
            f"{example.source}: this row has images but the model is a text model; use a vision-language model "
            "(model=tiny_vlm, qwen2_vl_2b, llava1_6_mistral_7b...) or data without images"
        )
    chosen_example, chosen_carve = shown.get("chosen", (example, []))
    rejected_example, rejected_carve = shown.get("rejected", (chosen_example, chosen_carve))
    own_rejected_prompt = "rejected" in shown
    rejected_prompt_ids = None
    if example.chosen is None:
        prompt_ids, completion_ids = _prompt_for_generation(chosen_example, tokenizer, chosen_carve), [[]]
    elif own_rejected_prompt:
        # Chosen and rejected show different images: each row has its own prompt.
        prompt_ids, chosen_ids = split(chosen_example, example.chosen, tokenizer, chosen_carve)  # type: ignore[arg-type]
        rejected_prompt_ids, rejected_ids = split(
            rejected_example, example.rejected, tokenizer, rejected_carve
        )  # type: ignore[arg-type]
        completion_ids = [chosen_ids, rejected_ids]
    else:
        completions = [example.chosen] if example.rejected is None else [example.chosen, example.rejected]
        splits = [split(chosen_example, text, tokenizer, chosen_carve) for text in completions]  # type: ignore[arg-type]

        # The prompt's last token can merge with a completion's first characters differently for chosen and
        # rejected; the shared prompt is then the common part and the rest moves to each completion, which
        # keeps every prompt + completion equal to the tokenisation of its full text.
        shared = len(splits[0][0])
        for prompt_ids, _ in splits[1:]:
            shared = min(shared, _common_prefix_length(splits[0][0], prompt_ids))
        prompt_ids = splits[0][0][:shared]
        completion_ids = [prompt[shared:] + completion for prompt, completion in splits]

    prompts = [prompt_ids] if rejected_prompt_ids is None else [prompt_ids, rejected_prompt_ids]
    truncated = False
    fitted = []
    for ids in prompts:
        result = _truncate_prompt(ids, settings, image_token_ids)
        if result is None:
            return None
        fitted.append(result[0])
        truncated |= result[1]
    if settings.max_length is not None:
        rooms = [settings.max_length - len(fitted[0])] * len(completion_ids)
        if len(fitted) > 1:
            rooms[1] = settings.max_length - len(fitted[1])
        if min(rooms) <= 0:
            return None
        if any(len(ids) > room for ids, room in zip(completion_ids, rooms, strict=True)):
            truncated = True
            completion_ids = [ids[:room] for ids, room in zip(completion_ids, rooms, strict=True)]
    return TokenizedExample(
        prompt_ids=fitted[0],
        chosen_ids=completion_ids[0],
        rejected_ids=completion_ids[1] if len(completion_ids) > 1 else None,
        truncated=truncated,
        label=example.label,
        margin=example.margin,
        prompt=example.prompt if example.chosen is None else None,
        columns=dict(example.columns) if example.chosen is None else None,
        images=example.images,
        rejected_images=example.rejected_images if own_rejected_prompt else None,
        rejected_prompt_ids=fitted[1] if len(fitted) > 1 else None,
    )


def tokenize_examples(
    examples: Iterable[PreferenceExample],
    tokenizer: Any,
    settings: TokenizeSettings,
    images: ImageProcessing | None = None,
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
        result = tokenize_example(example, tokenizer, settings, images)
        if result is None:
            dropped += 1
            continue
        truncated += result.truncated
        tokenized.append(result)
    if truncated or dropped:
        logger.warning(
            "of %d examples, %d were truncated (max_length=%s, max_prompt_length=%s) and %d dropped because "
            "the prompt leaves no room for a completion (or would lose image tokens)",
            total,
            truncated,
            settings.max_length,
            settings.max_prompt_length,
            dropped,
        )
    return tokenized, {"examples": total, "truncated": truncated, "dropped_too_long": dropped}
