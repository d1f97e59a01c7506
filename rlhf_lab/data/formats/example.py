"""What every layout converts a row into (`PreferenceExample`), and the error a bad row raises (`DataError`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rlhf_lab.data.images import ImageSource

#: A chat message: ``role`` (system, user, assistant, tool) and ``content`` (a string); an assistant message may
#: carry ``tool_calls`` (``[{"type": "function", "function": {"name": ..., "arguments": {...}}}]``).
Message = dict[str, Any]


@dataclass
class PreferenceExample:
    """One validated example: a prompt and a chosen (and, for preference data, a rejected) completion.

    Attributes:
        prompt: Conversational: messages ending with a user (or tool-output) turn. Plain: a string.
        chosen: Conversational: the assistant message(s). Plain: a string. None for prompt-only rows.
        rejected: Same type as ``chosen``; None for SFT, unpaired (KTO) and prompt-only rows.
        source: Where the row came from, e.g. ``data/train.jsonl:row 12``, for error messages.
        label: Unpaired (KTO) rows: True when ``chosen`` is desirable, False when undesirable; None otherwise.
        margin: Per-pair margin from a ``margin`` column (reward-model training); None when absent.
        images: The images the prompt shows, in the order of its ``<image>`` placeholders (read and checked);
            None for text rows.
        rejected_images: Images the rejected completion's row shows instead (ms-swift's ``rejected_images``:
            chosen and rejected see different images); None when both see ``images``.
        tools: The tools the conversation may call (JSON schemas, ``{"type": "function", "function": {...}}``),
            passed to the chat template; None when the row has none.
        columns: The row's columns no layout read (e.g. ``answer``), passed to online-RL reward functions as
            keyword arguments.
    """

    prompt: list[Message] | str
    chosen: list[Message] | str | None
    rejected: list[Message] | str | None
    source: str
    label: bool | None = None
    margin: float | None = None
    images: list[ImageSource] | None = None
    rejected_images: list[ImageSource] | None = None
    tools: list[dict[str, Any]] | None = None
    columns: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_conversational(self) -> bool:
        """True when the example is a list of messages to render with the chat template."""
        return isinstance(self.prompt, list)

    @property
    def is_pair(self) -> bool:
        """True for a chosen/rejected pair."""
        return self.rejected is not None

    @property
    def is_prompt_only(self) -> bool:
        """True for a row with a prompt and no completion (online RL)."""
        return self.chosen is None


class DataError(ValueError):
    """A bad input file or row; the message names the file, the 0-based row and the field.

    Attributes:
        reason: What is wrong, without the location.
        file: The file (or other source) the row came from.
        row: 0-based record index in the file, or None for file-level problems.
        field: The column (possibly with a message path such as ``chosen[0].content``), or None.
    """

    def __init__(self, message: str, *, file: str, row: int | None = None, field: str | None = None):
        self.reason = message
        self.file = str(file)
        self.row = row
        self.field = field
        location = [self.file]
        if row is not None:
            location.append(f"row {row}")
        if field is not None:
            location.append(f"field {field!r}")
        super().__init__(f"{', '.join(location)}: {message}")
