"""Tokenising a rendered example once and splitting its ids at the prompt/completion boundary.

Tokenising the prompt and the completion separately and concatenating the ids differs from tokenising
the whole sequence wherever a token would span the boundary (BPE merges across it). So the whole text is
tokenised once, with character offsets, and split there: tokens that end inside the prompt text are prompt
tokens, everything from the first token that reaches into the completion on is completion. Special-token
strings inside the data's own text stay text (`encode_text`).
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.data.formats import DataError, Message, PreferenceExample
from rlhf_lab.data.templates import render
from rlhf_lab.errors import ConfigError


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


def split_conversational(
    example: PreferenceExample, completion: list[Message], tokenizer: Any, carve: list[str]
) -> tuple[list[int], list[int]]:
    """Prompt ids and ``completion`` ids of a conversation, from one tokenisation of its rendered text.

    Args:
        example: The example, its prompt messages (their images already shown as image tokens).
        completion: The completion's messages.
        tokenizer: A fast tokenizer with a chat template.
        carve: Image-token texts inserted in the data's own text, which must stay special tokens.
    """
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


def split_plain(
    example: PreferenceExample, completion: str, tokenizer: Any, carve: list[str]
) -> tuple[list[int], list[int]]:
    """Prompt ids and ``completion`` ids of plain text (prompt + completion tokenised once), ending in EOS."""
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


def prompt_for_generation(example: PreferenceExample, tokenizer: Any, carve: list[str]) -> list[int]:
    """Prompt ids as a generation call would see them: the template's generation prompt, or the text."""
    if isinstance(example.prompt, list):
        text = _render(example, tokenizer, example.prompt, generation_prompt=True)
        protected = _carve(text, _protected(text, example.prompt, tokenizer, example), carve)
        return encode_text(tokenizer, text, False, protected)[0]
    text = example.prompt
    return encode_text(tokenizer, text, True, _carve(text, [(0, len(text))], carve))[0]
