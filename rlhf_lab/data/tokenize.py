"""Tokenising examples so that prompt and completion ids concatenate to the tokenisation of the full text.

Each example is rendered (its chat template, or plain text), tokenised once and split by character offsets
(`rlhf_lab.data.offsets`); a vision-language model's images are shown as their tokens first. The length
limits then cut the prompt and the completions, or drop an example that cannot fit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rlhf_lab.data.formats import DataError, Message, PreferenceExample
from rlhf_lab.data.images import IMAGE_PLACEHOLDER, ImageProcessing, ImageSource, count_placeholders
from rlhf_lab.data.offsets import prompt_for_generation, split_conversational, split_plain
from rlhf_lab.errors import ConfigError, check_choice, check_range

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("keep_end", "keep_start")

#: Characters one token stands for, at most, in the vocabularies we know (Llama 3's longest token is a run of 128
#: spaces): a text field longer than ``max_length`` times this holds more tokens than can fit, so it is cut to
#: that many characters before it is tokenised (a megabyte-long "word" then costs what a long row costs).
CHARS_PER_TOKEN = 128

#: Prompt ids and a completion's ids of an example (`split_conversational` or `split_plain`), given the
#: image-token texts shown in its prompt.
Split = Callable[[PreferenceExample, Any, Any, list[str]], tuple[list[int], list[int]]]

#: Per completion row (``chosen``, ``rejected``) that shows images: the example with them shown in its prompt,
#: and the image-token texts inserted.
Shown = dict[str, tuple[PreferenceExample, list[str]]]


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
        chars_per_token: Each text field is cut to ``max_length * chars_per_token`` characters before it is
            tokenised (`field_limit`); None: not cut (a benchmark's "before").
    """

    max_length: int | None = 512
    max_prompt_length: int | None = 256
    truncation_mode: str = "keep_end"
    chars_per_token: int | None = CHARS_PER_TOKEN

    def __post_init__(self) -> None:
        check_choice("data.truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        if self.max_length is not None:
            check_range("data.max_length", self.max_length, 1)
        if self.max_prompt_length is not None:
            check_range("data.max_prompt_length", self.max_prompt_length, 0)
        if self.chars_per_token is not None:
            check_range("chars_per_token", self.chars_per_token, 1)


def field_limit(settings: TokenizeSettings) -> int | None:
    """The most characters of one text field that are tokenised (None: no limit)."""
    if settings.max_length is None or settings.chars_per_token is None:
        return None
    return settings.max_length * settings.chars_per_token


def _cut(value: Any, limit: int, keep_end: bool) -> Any:
    """A text (or each message's content) cut to ``limit`` characters, keeping its end or its start; the value
    itself when nothing is cut."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return value[len(value) - limit :] if keep_end else value[:limit]
    if isinstance(value, list) and any(len(message["content"]) > limit for message in value):
        return [{**message, "content": _cut(message["content"], limit, keep_end)} for message in value]
    return value


def bound_example(
    example: PreferenceExample, settings: TokenizeSettings
) -> tuple[PreferenceExample, bool, bool]:
    """``example`` with every text field cut to `field_limit` characters, on the side truncation keeps: the
    prompt's start or end (``truncation_mode``), a completion's start.

    A field that long holds more tokens than fit, so its row is truncated (or dropped) whether it is cut or
    not; cutting first keeps tokenising it linear in the limit, not in the field (a byte-level BPE on one
    huge pre-token is not). Rows within the limit are returned as they are.

    Returns:
        The example, whether any field was cut, and whether the row is to be dropped: its prompt was cut and
        has no limit of its own (``max_prompt_length`` null: it leaves no room for a completion), or the cut
        removed an image placeholder (an image is never shown in part).
    """
    limit = field_limit(settings)
    if limit is None:
        return example, False, False
    prompt = _cut(example.prompt, limit, settings.truncation_mode == "keep_end")
    chosen = _cut(example.chosen, limit, False)
    rejected = _cut(example.rejected, limit, False)
    if prompt is example.prompt and chosen is example.chosen and rejected is example.rejected:
        return example, False, False
    drop = prompt is not example.prompt and (
        settings.max_prompt_length is None or count_placeholders(prompt) != count_placeholders(example.prompt)
    )
    return dataclasses.replace(example, prompt=prompt, chosen=chosen, rejected=rejected), True, drop


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


def _splitter(example: PreferenceExample, tokenizer: Any) -> Split:
    """How the example splits: by the tokenizer's chat template (conversational data), or as plain text."""
    if example.is_conversational:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"{example.source}: conversational data needs a chat template but the tokenizer has none; "
                "set model.chat_template (a Jinja template) or use plain-string data"
            )
        return split_conversational
    return split_plain


def _show_row_images(
    example: PreferenceExample, images: ImageProcessing | None
) -> tuple[frozenset[int], Shown]:
    """The image token ids (none for a text model) and, for each row (chosen, rejected) that shows images,
    the example with its images' tokens in place of the prompt's placeholders (`Shown`)."""
    image_token_ids: frozenset[int] = frozenset()
    shown: Shown = {}
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
    return image_token_ids, shown


def _example_ids(
    example: PreferenceExample, tokenizer: Any, split: Split, shown: Shown
) -> tuple[list[list[int]], list[list[int]]]:
    """The example's prompt ids and completion ids, before the length limits.

    Returns:
        The prompts: one, or two when the rejected row shows its own images (its prompt second); and the
        completions: chosen then rejected, or one empty completion for a prompt-only example.
    """
    chosen_example, chosen_carve = shown.get("chosen", (example, []))
    rejected_example, rejected_carve = shown.get("rejected", (chosen_example, chosen_carve))
    if example.chosen is None:
        return [prompt_for_generation(chosen_example, tokenizer, chosen_carve)], [[]]
    if "rejected" in shown:
        # Chosen and rejected show different images: each row has its own prompt.
        prompt_ids, chosen_ids = split(chosen_example, example.chosen, tokenizer, chosen_carve)
        rejected_prompt_ids, rejected_ids = split(
            rejected_example, example.rejected, tokenizer, rejected_carve
        )
        return [prompt_ids, rejected_prompt_ids], [chosen_ids, rejected_ids]
    completions = [example.chosen] if example.rejected is None else [example.chosen, example.rejected]
    splits = [split(chosen_example, text, tokenizer, chosen_carve) for text in completions]

    # The prompt's last token can merge with a completion's first characters differently for chosen and
    # rejected; the shared prompt is then the common part and the rest moves to each completion, which
    # keeps every prompt + completion equal to the tokenisation of its full text.
    shared = len(splits[0][0])
    for prompt_ids, _ in splits[1:]:
        shared = min(shared, _common_prefix_length(splits[0][0], prompt_ids))
    return [splits[0][0][:shared]], [prompt[shared:] + completion for prompt, completion in splits]


def _fit(
    prompts: list[list[int]],
    completions: list[list[int]],
    settings: TokenizeSettings,
    image_token_ids: frozenset[int],
) -> tuple[list[list[int]], list[list[int]], bool] | None:
    """The prompts and completions cut to the length limits, and whether anything was cut; None when not even
    one completion token fits after a prompt, or a prompt's cut would go through an image's tokens."""
    truncated = False
    fitted = []
    for ids in prompts:
        result = _truncate_prompt(ids, settings, image_token_ids)
        if result is None:
            return None
        fitted.append(result[0])
        truncated |= result[1]
    if settings.max_length is not None:
        rooms = [settings.max_length - len(fitted[0])] * len(completions)
        if len(fitted) > 1:
            rooms[1] = settings.max_length - len(fitted[1])
        if min(rooms) <= 0:
            return None
        if any(len(ids) > room for ids, room in zip(completions, rooms, strict=True)):
            truncated = True
            completions = [ids[:room] for ids, room in zip(completions, rooms, strict=True)]
    return fitted, completions, truncated


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
        would cut through an image's tokens. A text field longer than `field_limit` characters is cut to it
        first (`bound_example`), and its row counts as truncated (or is dropped, as an over-long prompt is).

    Raises:
        ConfigError: Conversational data but the tokenizer has no chat template, a slow tokenizer, or images
            for a text model.
        DataError: The chat template does not render the prompt as a prefix of the conversation, or the
            placeholders do not match the images.
    """
    split = _splitter(example, tokenizer)
    example, cut, drop = bound_example(example, settings)
    image_token_ids, shown = _show_row_images(example, images)
    if drop:
        return None
    prompts, completions = _example_ids(example, tokenizer, split, shown)
    fit = _fit(prompts, completions, settings, image_token_ids)
    if fit is None:
        return None
    fitted, completion_ids, truncated = fit
    truncated |= cut
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
        rejected_images=example.rejected_images if "rejected" in shown else None,
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
    total = truncated = dropped = cut = 0
    limit = field_limit(settings)
    for example in examples:
        total += 1
        cut += limit is not None and bound_example(example, settings)[1]
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
    if cut:
        logger.warning(
            "%d examples have a text field longer than %d characters (data.max_length x %d), more than fits: "
            "each was cut to that length before tokenising (and the example truncated or dropped as above)",
            cut,
            limit,
            settings.chars_per_token,
        )
    return tokenized, {"examples": total, "truncated": truncated, "dropped_too_long": dropped}
