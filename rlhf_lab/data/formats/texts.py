"""The checks every layout shares on a converted row's texts: valid Unicode, nothing blank where a text is
needed, and strings or message lists throughout; and how errors name a value's type."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf_lab.data.formats.validate import RowContext


def kind(value: Any) -> str:
    """A value's type as errors name it."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list of messages"
    return type(value).__name__


def is_blank(text: str) -> bool:
    """True when ``text`` holds nothing visible: whitespace, zero-width and other format characters only."""
    return all(
        char.isspace() or unicodedata.category(char) in ("Cf", "Cc", "Zs", "Zl", "Zp") for char in text
    )


def check_texts(
    context: RowContext,
    prompt: Any,
    completions: Mapping[str, Any],
    origin: Mapping[str, tuple[str, int | None]] | None = None,
    empty_prompt: bool = False,
) -> None:
    """Every text of a converted row: valid Unicode; a prompt and its user turns not blank; completions
    not blank (zero-width characters count as blank; a tool call needs no text).

    Args:
        context: The row.
        prompt: The converted prompt.
        completions: Completion name (``chosen``) -> the converted completion.
        origin: Where each part's messages stand in the file (`rlhf_lab.data.formats.registry.Parsed.origin`),
            so errors name ``messages[3].content``; by default each part is its own column.
        empty_prompt: The layout has no prompt (language modeling).
    """
    origin = origin or {}

    def located(part: str, index: int | None) -> str:
        column, offset = origin.get(part, (part, 0))
        if offset is None:
            return column  # the part is one value in the file (a string made a message)
        if index is not None and offset + index < 0:
            return "system"  # the system column, put before the conversation
        return column if index is None else f"{column}[{offset + index}].content"

    fields: list[tuple[str, str, str | None]] = []  # (field, text, role)
    if isinstance(prompt, str):
        fields.append((located("prompt", None), prompt, None if empty_prompt else "prompt"))
    else:
        fields += [
            (located("prompt", i), m["content"], "call" if m.get("tool_calls") else m["role"])
            for i, m in enumerate(prompt)
        ]
    for part, completion in completions.items():
        if isinstance(completion, str):
            fields.append((located(part, None), completion, "completion"))
        elif completion is not None:
            fields += [
                (located(part, i), m["content"], "call" if m.get("tool_calls") else m["role"])
                for i, m in enumerate(completion)
            ]
    for field_name, text, role in fields:
        _check_unicode(context, text, field_name)
        if role in ("prompt", "user") and is_blank(text):
            raise context.error(
                "empty prompt" if role == "prompt" else "empty user turn: the content is blank", field_name
            )
        if role in ("completion", "assistant") and is_blank(text):
            raise context.error(
                "empty completion: nothing visible (blank or zero-width characters only)", field_name
            )


def _check_unicode(context: RowContext, text: str, field_name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        raise context.error(
            f"invalid Unicode: a lone surrogate U+{code:04X} at character {error.start} (an escaped UTF-16 half "
            "with no partner); fix the text at its source",
            field_name,
        ) from None


def check_pair_types(context: RowContext, prompt: Any, completions: Mapping[str, Any]) -> None:
    """Reject rows mixing strings and message lists, with a message naming both types."""
    for column, value in completions.items():
        if isinstance(value, str | list) and isinstance(prompt, str) != isinstance(value, str):
            raise context.error(
                f"type mismatch: prompt is a {kind(prompt)} but {column} is a {kind(value)}; "
                "use strings throughout (plain) or message lists throughout (conversational)",
                column,
            )
