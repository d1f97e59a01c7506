"""Preference and SFT row formats, their detection, validation and conversion to `PreferenceExample`.

Row numbers in errors (``row N``) are 0-based indices of the records in a file, in file order, the same
index a `datasets`/pandas table would show; blank JSONL lines are not records and are not counted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_lab.data.images import IMAGE_PLACEHOLDER, ImageError, ImageSource, count_placeholders, image_source
from rlhf_lab.errors import check_choice

logger = logging.getLogger(__name__)

Message = dict[str, str]

FORMATS = (
    "conversational",
    "implicit_prompt",
    "plain",
    "sft",
    "kto",
    "prompt_only",
    "swift",
    "sharegpt",
    "alpaca",
)
ROLES = ("system", "user", "assistant")
# ShareGPT speaker names (LLaMA-Factory) -> chat roles; tool turns have no role here yet.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
SHAREGPT_TOOL_ROLES = ("observation", "function_call")

#: Every column some format reads; a row's other columns are kept in `PreferenceExample.columns`.
FORMAT_COLUMNS = frozenset(
    {
        "prompt",
        "chosen",
        "rejected",
        "completion",
        "label",
        "messages",
        "margin",
        "images",
        "image",
        "rejected_images",
        "system",
        "history",
        "query",
        "response",
        "rejected_response",
        "conversations",
        "instruction",
        "input",
    }
)

# Columns each format needs; `sft` has two layouts, checked separately.
REQUIRED_COLUMNS = {
    "conversational": ("prompt", "chosen", "rejected"),
    "implicit_prompt": ("chosen", "rejected"),
    "plain": ("prompt", "chosen", "rejected"),
}


@dataclass
class PreferenceExample:
    """One validated example: a prompt and a chosen (and, for preference data, a rejected) completion.

    Attributes:
        prompt: Conversational: messages ending with a user turn. Plain: a string.
        chosen: Conversational: the assistant message(s). Plain: a string. None for prompt-only rows.
        rejected: Same type as ``chosen``; None for SFT, unpaired (KTO) and prompt-only rows.
        source: Where the row came from, e.g. ``data/train.jsonl:row 12``, for error messages.
        label: Unpaired (KTO) rows: True when ``chosen`` is desirable, False when undesirable; None otherwise.
        margin: Per-pair margin from a ``margin`` column (reward-model training); None when absent.
        images: The images the prompt shows, in the order of its ``<image>`` placeholders (read and checked);
            None for text rows.
        rejected_images: Images the rejected completion's row shows instead (ms-swift's ``rejected_images``:
            chosen and rejected see different images); None when both see ``images``.
        columns: The row's other columns (those no format reads, e.g. ``answer``), passed through to
            online-RL reward functions as keyword arguments.
    """

    prompt: list[Message] | str
    chosen: list[Message] | str | None
    rejected: list[Message] | str | None
    source: str
    label: bool | None = None
    margin: float | None = None
    images: list[ImageSource] | None = None
    rejected_images: list[ImageSource] | None = None
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


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list of messages"
    return type(value).__name__


def detect_format(columns: Iterable[str], first_row: dict, *, file: str = "<data>") -> str:
    """Guess the format from the column names and the value types of the first row.

    The first rule that matches wins:

    1. ``prompt`` + ``chosen`` + ``rejected``: ``plain`` when all three are strings in the first row,
       else ``conversational``.
    2. ``conversations`` + ``chosen`` + ``rejected``: ``sharegpt`` (LLaMA-Factory ranking data).
    3. ``instruction`` + ``chosen`` + ``rejected``: ``alpaca`` (LLaMA-Factory ranking data).
    4. ``chosen`` + ``rejected``: ``implicit_prompt``.
    5. ``query`` + ``response``, or ``messages`` + ``rejected_response``: ``swift`` (ms-swift; paired when it
       has ``rejected_response``).
    6. ``prompt`` + ``completion`` + ``label``: ``kto`` (unpaired).
    7. ``messages``, or ``prompt`` + ``completion``: ``sft``.
    8. ``prompt`` alone (no completion column): ``prompt_only``.

    Rules 2, 3 and 5 to 8 only claim column sets that rules 1 and 4 either did not match or could not
    convert, so files that loaded before new formats were added are detected as before.

    Args:
        columns: Column names of the table.
        first_row: The first record, used to tell strings from message lists.
        file: Named in the error when no format fits.

    Returns:
        One of `FORMATS`.
    """
    names = set(columns)
    if {"chosen", "rejected"} <= names:
        if "prompt" in names:
            values = [first_row.get(key) for key in ("prompt", "chosen", "rejected")]
            # Any message list means chat data; mixed types are reported by `to_example` as a type mismatch.
            return "plain" if all(isinstance(value, str) for value in values) else "conversational"
        if "conversations" in names:
            return "sharegpt"
        if "instruction" in names:
            return "alpaca"
        return "implicit_prompt"
    if {"query", "response"} <= names or {"messages", "rejected_response"} <= names:
        return "swift"
    if {"prompt", "completion", "label"} <= names:
        return "kto"
    if "messages" in names or {"prompt", "completion"} <= names:
        return "sft"
    if "prompt" in names:
        return "prompt_only"
    raise DataError(
        f"cannot detect the data format from columns [{', '.join(sorted(names))}]; expected "
        "prompt/chosen/rejected (conversational or plain), chosen/rejected (implicit_prompt), "
        "conversations/chosen/rejected (sharegpt), instruction/chosen/rejected (alpaca), "
        "query/response[/rejected_response] (swift), prompt/completion/label (kto), "
        "prompt/completion or messages (sft), prompt (prompt_only); set data.format to override",
        file=file,
    )


class _RowContext:
    """Builds `DataError`s for one row, so validators need not thread file/row/format around."""

    def __init__(self, row: dict, fmt_label: str, file: str, row_index: int, base_dir: Path | None = None):
        self.row = row
        self.fmt = fmt_label
        self.file = file
        self.row_index = row_index
        self.base_dir = base_dir

    def error(self, message: str, field: str | None) -> DataError:
        return DataError(message, file=self.file, row=self.row_index, field=field)

    def require(self, *columns: str) -> list[Any]:
        values = []
        for column in columns:
            if column not in self.row:
                found = ", ".join(sorted(map(str, self.row))) or "none"
                raise self.error(
                    f"missing column {column!r} (found columns: {found}; format: {self.fmt})", column
                )
            if self.row[column] is None:
                raise self.error(f"column {column!r} is null (format: {self.fmt})", column)
            values.append(self.row[column])
        return values

    def messages(self, value: Any, field: str) -> list[Message]:
        """Check a message list and copy it down to role and content."""
        if not isinstance(value, list):
            raise self.error(f"expected a list of messages, got {_kind(value)}", field)
        messages = []
        for position, message in enumerate(value):
            where = f"{field}[{position}]"
            if not isinstance(message, dict):
                raise self.error(f"expected a message object, got {_kind(message)}", where)
            for key in ("role", "content"):
                if key not in message:
                    raise self.error(f"message has no {key!r} (keys: {', '.join(map(str, message))})", where)
            role, content = message["role"], message["content"]
            if isinstance(content, list):
                content = self.content_parts(content, f"{where}.content")
            if role not in ROLES:
                raise self.error(
                    f"unknown role {role!r}; expected one of: {', '.join(ROLES)}", f"{where}.role"
                )
            if not isinstance(content, str):
                raise self.error(
                    f"message content must be a string, got {_kind(content)}", f"{where}.content"
                )
            messages.append({"role": role, "content": content})
        return messages

    def content_parts(self, parts: list, field: str) -> str:
        """TRL's multimodal content (``[{"type": "image"}, {"type": "text", "text": ...}]``) as one string with
        an ``<image>`` placeholder where each image part stands."""
        pieces = []
        for position, part in enumerate(parts):
            where = f"{field}[{position}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                pieces.append(IMAGE_PLACEHOLDER)
            elif kind == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            else:
                raise self.error(
                    f"expected a content part {{'type': 'text', 'text': ...}} or {{'type': 'image'}}, got {part!r}",
                    where,
                )
        return "".join(pieces)

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {_kind(value)}", field)
        return value

    def check_prompt(self, prompt: list[Message], field: str) -> None:
        if not prompt:
            raise self.error("the prompt has no messages", field)
        if prompt[-1]["role"] != "user":
            raise self.error(f"the prompt must end with a user turn, not {prompt[-1]['role']!r}", field)

    def check_completion(self, completion: list[Message], field: str) -> None:
        if not completion:
            raise self.error("empty completion: no messages", field)
        if completion[0]["role"] != "assistant":
            raise self.error(
                f"the completion must start with an assistant turn, not {completion[0]['role']!r}", field
            )
        # A trailing user turn would be scored as if the model had written it.
        if completion[-1]["role"] != "assistant":
            raise self.error(
                f"the completion must end with an assistant turn, not {completion[-1]['role']!r}", field
            )
        for position, message in enumerate(completion):
            if message["role"] == "assistant" and not message["content"].strip():
                raise self.error(
                    "empty completion: assistant content is blank", f"{field}[{position}].content"
                )

    def check_order(self, conversation: list[Message], field: str, offset: int = 0) -> None:
        """System only first, then user/assistant alternating from a user turn.

        Args:
            conversation: Prompt followed by completion.
            field: Column named in the error.
            offset: Index of the column's first message in ``conversation``, to name the bad message.
        """
        expected = "user"
        for position, message in enumerate(conversation):
            role = message["role"]
            where = f"{field}[{position - offset}].role" if position >= offset else field
            if role == "system":
                if position != 0:
                    raise self.error("a system message may only be the first message", where)
                continue
            if role != expected:
                raise self.error(
                    f"roles must alternate user/assistant starting with user; got {role!r} where "
                    f"{expected!r} was expected",
                    where,
                )
            expected = "assistant" if role == "user" else "user"

    def check_text_completion(self, text: str, field: str) -> None:
        if not text.strip():
            raise self.error("empty completion", field)

    def optional_text(self, column: str) -> str | None:
        """An optional string column; null and empty read as absent."""
        value = self.row.get(column)
        if value is None or value == "":
            return None
        return self.text(value, column)

    def system_prefix(self) -> list[Message]:
        """The ``system`` column as a one-message prefix, or nothing."""
        system = self.optional_text("system")
        return [] if system is None else [{"role": "system", "content": system}]

    def history(self) -> list[Message]:
        """The ``history`` column (``[[query, response], ...]``, ms-swift / LLaMA-Factory) as chat turns."""
        value = self.row.get("history")
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(f"expected a list of [query, response] pairs, got {_kind(value)}", "history")
        turns: list[Message] = []
        for position, pair in enumerate(value):
            where = f"history[{position}]"
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise self.error(f"expected a [query, response] pair, got {pair!r}", where)
            query = self.text(pair[0], f"{where}[0]")
            response = self.text(pair[1], f"{where}[1]")
            turns += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
        return turns

    def label(self, value: Any) -> bool:
        """A KTO label: a boolean, or 0/1 as many exports write it."""
        # bool is an int subclass, so True/False pass the 0/1 test as well.
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        raise self.error(
            f"expected a boolean label (true = desirable, false = undesirable; 0/1 also accepted), "
            f"got {value!r}",
            "label",
        )

    def margin(self) -> float | None:
        """The optional ``margin`` column as a float."""
        value = self.row.get("margin")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise self.error(f"expected a finite number, got {value!r}", "margin")
        return float(value)

    def image_list(self, column: str) -> list[ImageSource] | None:
        """An image column (a list; TRL's ``image``: one image) read and checked; None when absent or empty."""
        value = self.row.get(column)
        if value is None or (isinstance(value, list) and not value):
            return None
        if column != "image" and not isinstance(value, list):
            raise self.error(f"expected a list of images, got {_kind(value)}", column)
        values = value if isinstance(value, list) else [value]
        images = []
        for position, item in enumerate(values):
            where = f"{column}[{position}]" if isinstance(value, list) else column
            try:
                images.append(image_source(item, self.base_dir))
            except ImageError as error:
                raise self.error(str(error), where) from None
        return images

    def images(
        self, prompt: Any, completions: dict[str, Any]
    ) -> tuple[list[ImageSource] | None, list[ImageSource] | None]:
        """The row's images (``images``, or TRL's single ``image``) and ``rejected_images``, each matched
        against the prompt's ``<image>`` placeholders."""
        if self.row.get("images") not in (None, []) and self.row.get("image") is not None:
            raise self.error("the row has both 'images' and 'image'; give one", "image")
        column = "image" if self.row.get("image") is not None else "images"
        images = self.image_list(column)
        rejected = self.image_list("rejected_images")
        if images is None and rejected is None:
            return None, None
        if images is None:
            raise self.error("the row has rejected_images but no images for its chosen completion", "images")
        expected = count_placeholders(prompt)
        for name, found in ((column, images), ("rejected_images", rejected)):
            if found is not None and len(found) != expected:
                raise self.error(
                    f"{len(found)} image(s) but {expected} {IMAGE_PLACEHOLDER} placeholder(s) in the prompt; put "
                    f"one {IMAGE_PLACEHOLDER} where each image belongs",
                    name,
                )
        for name, completion in completions.items():
            parts = [completion] if isinstance(completion, str) else [m["content"] for m in completion or []]
            if any(IMAGE_PLACEHOLDER in part for part in parts):
                raise self.error(
                    f"a completion contains {IMAGE_PLACEHOLDER}; images may only appear in the prompt", name
                )
        return images, rejected


def to_example(row: dict, fmt: str, *, file: str, row_index: int) -> PreferenceExample:
    """Validate one row of a known format and convert it.

    Args:
        row: The record.
        fmt: One of `FORMATS` (not ``auto``).
        file: Source file, for errors and ``source``.
        row_index: 0-based record index in the file.

    Raises:
        DataError: The row does not fit the format; the message names file, row and field.
    """
    check_choice("data.format", fmt, FORMATS)
    return _to_example(row, fmt, file=file, row_index=row_index, fmt_label=fmt, base_dir=image_dir(file))


def image_dir(file: str) -> Path | None:
    """Where a data file's relative image paths point from: the file's own directory (None: not a file)."""
    path = Path(file)
    return path.parent if path.is_file() else None


def _to_example(
    row: dict, fmt: str, *, file: str, row_index: int, fmt_label: str, base_dir: Path | None = None
) -> PreferenceExample:
    context = _RowContext(row, fmt_label, file, row_index, base_dir)
    if not isinstance(row, dict):
        raise context.error(f"expected an object (column -> value), got {type(row).__name__}", None)
    label = None
    if fmt == "kto":
        prompt, chosen, rejected, label = _kto(context)
    elif fmt == "prompt_only":
        prompt, chosen, rejected = _prompt_only(context), None, None
    elif fmt == "sft":
        (prompt, chosen), rejected = _sft(context), None
    else:
        prompt, chosen, rejected = PAIRED_CONVERTERS[fmt](context)
    completions = (
        {"chosen": chosen, "rejected": rejected} if fmt not in ("sft", "kto") else {"completion": chosen}
    )
    _check_texts(context, prompt, completions)
    images, rejected_images = context.images(prompt, completions)
    if rejected_images is not None and rejected is None:
        raise context.error("rejected_images needs a rejected completion to show them to", "rejected_images")
    return PreferenceExample(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        source=f"{file}:row {row_index}",
        label=label,
        # A margin belongs to a pair; SFT, KTO and prompt-only rows have nothing to put it on.
        margin=context.margin() if rejected is not None else None,
        images=images,
        rejected_images=rejected_images,
        columns={key: value for key, value in row.items() if key not in FORMAT_COLUMNS},
    )


def is_blank(text: str) -> bool:
    """True when ``text`` holds nothing visible: whitespace, zero-width and other format characters only."""
    return all(
        char.isspace() or unicodedata.category(char) in ("Cf", "Cc", "Zs", "Zl", "Zp") for char in text
    )


def _check_unicode(context: _RowContext, text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        raise context.error(
            f"invalid Unicode: a lone surrogate U+{code:04X} at character {error.start} (an escaped UTF-16 half "
            "with no partner); fix the text at its source",
            field,
        ) from None


def _check_texts(context: _RowContext, prompt: Any, completions: dict[str, Any]) -> None:
    """Every text of a converted row: valid Unicode; a prompt and its user turns not blank; completions
    not blank (zero-width characters count as blank). Fields are named in the canonical layout
    (``prompt[1].content``)."""
    fields: list[tuple[str, str, str | None]] = []  # (field, text, role)
    if isinstance(prompt, str):
        fields.append(("prompt", prompt, "prompt"))
    else:
        fields += [(f"prompt[{i}].content", m["content"], m["role"]) for i, m in enumerate(prompt)]
    for column, completion in completions.items():
        if isinstance(completion, str):
            fields.append((column, completion, "completion"))
        elif completion is not None:
            fields += [(f"{column}[{i}].content", m["content"], m["role"]) for i, m in enumerate(completion)]
    for field, text, role in fields:
        _check_unicode(context, text, field)
        if role in ("prompt", "user") and is_blank(text):
            raise context.error(
                "empty prompt" if role == "prompt" else "empty user turn: the content is blank", field
            )
        if role in ("completion", "assistant") and is_blank(text):
            raise context.error(
                "empty completion: nothing visible (blank or zero-width characters only)", field
            )


def _check_pair_types(context: _RowContext, prompt: Any, completions: dict[str, Any]) -> None:
    """Reject rows mixing strings and message lists, with a message naming both types."""
    for column, value in completions.items():
        if isinstance(value, str | list) and isinstance(prompt, str) != isinstance(value, str):
            raise context.error(
                f"type mismatch: prompt is a {_kind(prompt)} but {column} is a {_kind(value)}; "
                "use strings throughout (plain) or message lists throughout (conversational)",
                column,
            )


def _conversational(context: _RowContext) -> tuple[list[Message], list[Message], list[Message]]:
    raw_prompt, raw_chosen, raw_rejected = context.require("prompt", "chosen", "rejected")
    if not isinstance(raw_prompt, list):
        raise context.error(
            f"type mismatch: prompt is a {_kind(raw_prompt)} but the conversational format needs a list "
            "of messages (plain-string rows need prompt, chosen and rejected all strings)",
            "prompt",
        )
    _check_pair_types(context, raw_prompt, {"chosen": raw_chosen, "rejected": raw_rejected})
    prompt = context.messages(raw_prompt, "prompt")
    system = context.row.get("system")
    if system is not None and system != "":
        if not isinstance(system, str):
            raise context.error(f"expected a string, got {_kind(system)}", "system")
        if not any(message["role"] == "system" for message in prompt):
            prompt = [{"role": "system", "content": system}, *prompt]
    context.check_prompt(prompt, "prompt")
    context.check_order(prompt, "prompt")
    completions = []
    for column, raw in (("chosen", raw_chosen), ("rejected", raw_rejected)):
        completion = context.messages(raw, column)
        context.check_completion(completion, column)
        context.check_order(prompt + completion, column, offset=len(prompt))
        completions.append(completion)
    return prompt, completions[0], completions[1]


def _implicit_prompt(context: _RowContext) -> tuple[list[Message], list[Message], list[Message]]:
    raw_chosen, raw_rejected = context.require("chosen", "rejected")
    chosen = context.messages(raw_chosen, "chosen")
    rejected = context.messages(raw_rejected, "rejected")
    for column, conversation in (("chosen", chosen), ("rejected", rejected)):
        if not conversation:
            raise context.error("empty completion: no messages", column)
        context.check_order(conversation, column)
    if chosen == rejected:
        # Keep identical pairs convertible so `convert_rows` can count them as dropped rather than fail.
        assistant_turns = [i for i, message in enumerate(chosen) if message["role"] == "assistant"]
        split = assistant_turns[-1] if assistant_turns else len(chosen)
        return chosen[:split], chosen[split:], rejected[split:]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    prompt = chosen[:shared]
    if not prompt or prompt[-1]["role"] != "user":
        last = "no messages" if not prompt else f"a {prompt[-1]['role']} turn"
        raise context.error(
            f"the common prefix of chosen and rejected (the implicit prompt, {shared} messages) ends with "
            f"{last}; it must end with a user turn",
            "chosen",
        )
    for column, conversation in (("chosen", chosen), ("rejected", rejected)):
        context.check_completion(conversation[shared:], column)
    return prompt, chosen[shared:], rejected[shared:]


def _plain(context: _RowContext) -> tuple[str, str, str]:
    prompt, chosen, rejected = context.require("prompt", "chosen", "rejected")
    if not isinstance(prompt, str):
        raise context.error(
            f"type mismatch: prompt is a {_kind(prompt)} but the plain format needs strings", "prompt"
        )
    _check_pair_types(context, prompt, {"chosen": chosen, "rejected": rejected})
    for column, value in (("chosen", chosen), ("rejected", rejected)):
        context.text(value, column)
        context.check_text_completion(value, column)
    return prompt, chosen, rejected


def _sft(context: _RowContext) -> tuple[list[Message] | str, list[Message] | str]:
    if "messages" in context.row and "completion" not in context.row:
        (raw,) = context.require("messages")
        messages = context.messages(raw, "messages")
        context.check_order(messages, "messages")
        if not messages or messages[-1]["role"] != "assistant":
            raise context.error("the conversation must end with an assistant turn to train on", "messages")
        prompt, completion = messages[:-1], messages[-1:]
        context.check_prompt(prompt, "messages")
        context.check_completion(completion, "messages")
        return prompt, completion
    prompt, completion = context.require("prompt", "completion")
    return _prompt_completion(context, prompt, completion)


def _prompt_completion(
    context: _RowContext, prompt: Any, completion: Any
) -> tuple[list[Message] | str, list[Message] | str]:
    """A prompt and one completion, both strings or both message lists (sft and kto rows)."""
    if isinstance(prompt, str):
        _check_pair_types(context, prompt, {"completion": completion})
        context.check_text_completion(context.text(completion, "completion"), "completion")
        return prompt, completion
    _check_pair_types(context, prompt, {"completion": completion})
    prompt_messages = context.messages(prompt, "prompt")
    context.check_prompt(prompt_messages, "prompt")
    context.check_order(prompt_messages, "prompt")
    completion_messages = context.messages(completion, "completion")
    context.check_completion(completion_messages, "completion")
    context.check_order(prompt_messages + completion_messages, "completion", offset=len(prompt_messages))
    return prompt_messages, completion_messages


def _kto(context: _RowContext) -> tuple[list[Message] | str, list[Message] | str, None, bool]:
    prompt, completion, raw_label = context.require("prompt", "completion", "label")
    label = context.label(raw_label)
    prompt, completion = _prompt_completion(context, prompt, completion)
    return prompt, completion, None, label


def _prompt_only(context: _RowContext) -> list[Message] | str:
    (raw,) = context.require("prompt")
    if isinstance(raw, str):
        if not raw.strip():
            raise context.error("empty prompt", "prompt")
        return raw
    prompt = context.messages(raw, "prompt")
    if not any(message["role"] == "system" for message in prompt):
        prompt = context.system_prefix() + prompt
    context.check_prompt(prompt, "prompt")
    context.check_order(prompt, "prompt")
    return prompt


def _assistant_turn(context: _RowContext, column: str) -> list[Message]:
    text = context.text(context.row[column], column)
    context.check_text_completion(text, column)
    return [{"role": "assistant", "content": text}]


def _swift(context: _RowContext) -> tuple[list[Message], list[Message], list[Message] | None]:
    if "messages" in context.row and "query" not in context.row:
        # ms-swift's messages layout: the conversation ends with the chosen assistant turn.
        (raw,) = context.require("messages")
        messages = context.messages(raw, "messages")
        context.check_order(messages, "messages")
        if not messages or messages[-1]["role"] != "assistant":
            raise context.error("the conversation must end with the chosen assistant turn", "messages")
        prompt, chosen = messages[:-1], messages[-1:]
        context.check_prompt(prompt, "messages")
        context.check_completion(chosen, "messages")
        rejected = (
            None
            if context.row.get("rejected_response") is None
            else _assistant_turn(context, "rejected_response")
        )
        return prompt, chosen, rejected
    (query, _) = context.require("query", "response")
    user = {"role": "user", "content": context.text(query, "query")}
    prompt = [*context.system_prefix(), *context.history(), user]
    chosen = _assistant_turn(context, "response")
    rejected = (
        None
        if context.row.get("rejected_response") is None
        else _assistant_turn(context, "rejected_response")
    )
    return prompt, chosen, rejected


def _sharegpt_turn(context: _RowContext, turn: Any, where: str) -> Message:
    if not isinstance(turn, dict):
        raise context.error(f"expected a turn object with 'from' and 'value', got {_kind(turn)}", where)
    for key in ("from", "value"):
        if key not in turn:
            raise context.error(f"turn has no {key!r} (keys: {', '.join(map(str, turn))})", where)
    speaker = turn["from"]
    if speaker in SHAREGPT_TOOL_ROLES:
        raise context.error(
            f"tool turns ({speaker!r}) are not supported yet; remove observation/function_call turns",
            f"{where}.from",
        )
    if speaker not in SHAREGPT_ROLES:
        raise context.error(
            f"unknown speaker {speaker!r}; expected one of: {', '.join(SHAREGPT_ROLES)}", f"{where}.from"
        )
    return {"role": SHAREGPT_ROLES[speaker], "content": context.text(turn["value"], f"{where}.value")}


def _sharegpt(context: _RowContext) -> tuple[list[Message], list[Message], list[Message]]:
    raw_conversation, _, _ = context.require("conversations", "chosen", "rejected")
    if not isinstance(raw_conversation, list):
        raise context.error(f"expected a list of turns, got {_kind(raw_conversation)}", "conversations")
    conversation = [
        _sharegpt_turn(context, turn, f"conversations[{position}]")
        for position, turn in enumerate(raw_conversation)
    ]
    prefix = [] if any(m["role"] == "system" for m in conversation) else context.system_prefix()
    prompt = prefix + conversation
    context.check_order(prompt, "conversations", offset=len(prefix))
    if not conversation or conversation[-1]["role"] != "user":
        last = "no turns" if not conversation else f"a {raw_conversation[-1]['from']!r} turn"
        raise context.error(f"the conversation must end with a 'human' turn, not {last}", "conversations")
    completions = []
    for column in ("chosen", "rejected"):
        turn = _sharegpt_turn(context, context.row[column], column)
        if turn["role"] != "assistant":
            raise context.error(
                f"expected a 'gpt' turn, got {context.row[column]['from']!r}", f"{column}.from"
            )
        context.check_text_completion(turn["content"], f"{column}.value")
        completions.append([turn])
    return prompt, completions[0], completions[1]


def _alpaca(context: _RowContext) -> tuple[list[Message], list[Message], list[Message]]:
    (instruction, _, _) = context.require("instruction", "chosen", "rejected")
    content = context.text(instruction, "instruction")
    extra = context.optional_text("input")
    if extra is not None:
        # LLaMA-Factory's alpaca converter joins instruction and input with one newline.
        content = f"{content}\n{extra}"
    prompt = [*context.system_prefix(), *context.history(), {"role": "user", "content": content}]
    return prompt, _assistant_turn(context, "chosen"), _assistant_turn(context, "rejected")


PAIRED_CONVERTERS = {
    "conversational": _conversational,
    "implicit_prompt": _implicit_prompt,
    "plain": _plain,
    "swift": _swift,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
}


def to_unpaired(examples: Iterable[PreferenceExample]) -> list[PreferenceExample]:
    """Split pairs into labelled completions for unpaired objectives (KTO).

    Each pair becomes ``(prompt, chosen, label=True)`` followed by ``(prompt, rejected, label=False)``;
    rows that are already unpaired (a label and no rejected) pass through. The per-pair ``margin`` is
    dropped, since it belongs to neither completion alone.

    Raises:
        DataError: A row is neither a pair nor labelled (SFT or prompt-only rows).
    """
    unpaired = []
    for example in examples:
        if example.chosen is not None and example.rejected is not None:
            unpaired.append(
                dataclasses.replace(example, rejected=None, label=True, margin=None, rejected_images=None)
            )
            unpaired.append(
                dataclasses.replace(
                    example,
                    chosen=example.rejected,
                    rejected=None,
                    label=False,
                    margin=None,
                    images=example.rejected_images or example.images,
                    rejected_images=None,
                )
            )
        elif example.chosen is not None and example.label is not None:
            unpaired.append(example)
        else:
            what = "a prompt-only row" if example.chosen is None else "an SFT row (no rejected, no label)"
            raise DataError(
                f"{what} cannot be used by an unpaired objective (KTO), which needs chosen/rejected pairs "
                "or prompt/completion/label rows",
                file=example.source,
            )
    return unpaired


def _identical(example: PreferenceExample) -> bool:
    """Chosen and rejected say and show the same: a pair with nothing to prefer."""
    if example.chosen != example.rejected:
        return False
    if example.rejected_images is None:
        return True
    return [image.digest for image in example.rejected_images] == [
        image.digest for image in example.images or []
    ]


def convert_rows(
    rows: Iterable[dict], fmt: str = "auto", *, file: str, row_numbers: Sequence[int] | None = None
) -> tuple[list[PreferenceExample], dict[str, int]]:
    """Detect the format (unless given), validate and convert every row, dropping identical pairs.

    Args:
        rows: Records, e.g. from `rlhf_lab.data.io.read_rows`.
        fmt: ``auto`` or one of `FORMATS`.
        file: Source file, named in errors and in each example's ``source``.
        row_numbers: Each row's 0-based position in ``file`` when ``rows`` is a subset of it (e.g. a
            split carved out of one file); by default the position in ``rows``.

    Returns:
        The examples and counts ``{"rows": n, "identical_dropped": k}``.

    Raises:
        ConfigError: ``fmt`` is not ``auto`` or a known format.
        DataError: A row is invalid.
    """
    check_choice("data.format", fmt, ("auto", *FORMATS))
    rows = list(rows)
    if row_numbers is None:
        row_numbers = range(len(rows))
    elif len(row_numbers) != len(rows):
        raise ValueError(f"{file}: {len(row_numbers)} row numbers given for {len(rows)} rows")
    label = f"{fmt} (configured)"
    if fmt == "auto" and rows:
        first = rows[0]
        if not isinstance(first, dict):
            raise DataError(
                f"expected an object (column -> value), got {type(first).__name__}",
                file=file,
                row=row_numbers[0],
            )
        fmt = detect_format(first.keys(), first, file=file)
        # Saying the format was guessed explains a "missing column" error on an unexpected layout.
        label = f"{fmt} (detected)"
    examples = []
    dropped = 0
    # (row number, has a margin) of the first pair, to report a file that gives margins to some pairs only.
    first_pair: tuple[int, bool] | None = None
    base_dir = image_dir(file)
    for row_number, row in zip(row_numbers, rows, strict=True):
        example = _to_example(row, fmt, file=file, row_index=row_number, fmt_label=label, base_dir=base_dir)
        if example.rejected is not None:
            has_margin = example.margin is not None
            if first_pair is None:
                first_pair = (row_number, has_margin)
            elif has_margin != first_pair[1]:
                # A batch needs a margin for every pair or for none; fail here rather than mid-training.
                with_, without = (row_number, first_pair[0]) if has_margin else (first_pair[0], row_number)
                raise DataError(
                    f"row {with_} has a margin but row {without} has none; give every pair a margin or none",
                    file=file,
                    row=without,
                    field="margin",
                )
        if example.rejected is not None and _identical(example):
            dropped += 1
            continue
        examples.append(example)
    if dropped:
        logger.warning(
            "%s: dropped %d of %d rows whose chosen and rejected are identical", file, dropped, len(rows)
        )
    return examples, {"rows": len(rows), "identical_dropped": dropped}
