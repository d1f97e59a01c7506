"""Reading and checking one row: its columns, labels, margins, tools, images and the order of its turns.

`RowContext` is what every layout's converter reads a row through. It records which columns were read (the
rest are the row's unused columns: reported once as ignored, and passed to online-RL reward functions), maps
the names a layout reads back to the file's own names in errors (``data.columns``), and builds a `DataError`
naming file, row and field for anything wrong. Its conversations are read by `turns`, the texts of a
converted row checked by `texts`.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlhf_lab.data.formats import turns
from rlhf_lab.data.formats.example import DataError, Message
from rlhf_lab.data.formats.speakers import OPENAI, Speakers
from rlhf_lab.data.formats.texts import kind
from rlhf_lab.data.images import ImageError, ImageLookup, ImageSource, image_source


@dataclass
class RowContext:
    """One row being read by a layout's converter.

    Attributes:
        row: The record, with ``data.columns`` renames applied.
        fmt: The layout's name as errors show it (``sharegpt (detected)``).
        file: The file (or hub split) the row came from.
        row_index: 0-based record index in the file.
        lookup: Where its images are found.
        renamed: Column the layout reads -> the file's own column, for the columns ``data.columns`` renamed.
        speakers: How conversations name speakers and texts (``data.tags``); None: the layout's own.
        used: The columns the converter read.
        unused_keys: Message keys nothing reads, as ``messages[].loss_weight`` (reported, like columns).
        part_images: Images carried inside content parts (``{"type": "image_url", ...}``), in order.
    """

    row: dict
    fmt: str
    file: str
    row_index: int
    lookup: ImageLookup | None = None
    renamed: Mapping[str, str] = field(default_factory=dict)
    speakers: Speakers | None = None
    used: set[str] = field(default_factory=set)
    unused_keys: set[str] = field(default_factory=set)
    part_images: list[tuple[str, Any]] = field(default_factory=list)

    # --- locations and errors -------------------------------------------------------------------------

    def file_field(self, field_name: str | None) -> str | None:
        """``field_name`` with its column named as in the file (``better[0].content`` for ``chosen[0]...``)."""
        if field_name is None or not self.renamed:
            return field_name
        head = field_name
        for stop in "[.":
            head = head.split(stop, 1)[0]
        original = self.renamed.get(head)
        return field_name if original is None else original + field_name[len(head) :]

    def error(self, message: str, field_name: str | None) -> DataError:
        return DataError(message, file=self.file, row=self.row_index, field=self.file_field(field_name))

    # --- columns -----------------------------------------------------------------------------------------

    def has(self, column: str) -> bool:
        """The row has ``column`` with a value (null reads as absent); does not count as reading it."""
        return self.row.get(column) is not None

    def get(self, column: str) -> Any:
        """The value of ``column`` (None when absent or null), counted as read."""
        if column in self.row:
            self.used.add(column)
        return self.row.get(column)

    def require(self, *columns: str) -> list[Any]:
        values = []
        for column in columns:
            if column not in self.row:
                found = ", ".join(sorted(map(str, self.row))) or "none"
                raise self.error(
                    f"missing column {self.file_field(column)!r} (found columns: {found}; format: {self.fmt})",
                    column,
                )
            value = self.get(column)
            if value is None:
                raise self.error(f"column {self.file_field(column)!r} is null (format: {self.fmt})", column)
            values.append(value)
        return values

    def one_of(self, *columns: str) -> str | None:
        """The one of ``columns`` the row has (None: none); two present is an error naming both."""
        present = [column for column in columns if self.has(column)]
        if len(present) > 1:
            raise self.error(
                f"the row has both {present[0]!r} and {present[1]!r}; give one", self.file_field(present[1])
            )
        return present[0] if present else None

    def text(self, value: Any, field_name: str) -> str:
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {kind(value)}", field_name)
        return value

    def optional_text(self, column: str) -> str | None:
        """An optional string column; null and empty read as absent."""
        value = self.get(column)
        if value is None or value == "":
            return None
        return self.text(value, column)

    def system_prefix(self) -> list[Message]:
        """The ``system`` column as a one-message prefix, or nothing."""
        system = self.optional_text("system")
        return [] if system is None else [{"role": "system", "content": system}]

    def with_system(self, messages: list[Message]) -> list[Message]:
        """``messages`` behind the ``system`` column's message, unless they begin with a system message."""
        prefix = self.system_prefix()
        if messages and messages[0]["role"] == "system":
            return messages
        return prefix + messages

    def history(self) -> list[Message]:
        """The ``history`` column (``[[query, response], ...]``, ms-swift / LLaMA-Factory) as chat turns."""
        value = self.get("history")
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(f"expected a list of [query, response] pairs, got {kind(value)}", "history")
        turns: list[Message] = []
        for position, pair in enumerate(value):
            where = f"history[{position}]"
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise self.error(f"expected a [query, response] pair, got {pair!r}", where)
            query = self.text(pair[0], f"{where}[0]")
            response = self.text(pair[1], f"{where}[1]")
            turns += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
        return turns

    def label(self, column: str) -> bool:
        """A KTO label: a boolean, 0/1, or (CSV cells are text) ``true``/``false``/``1``/``0``."""
        value = self.get(column)
        # bool is an int subclass, so True/False pass the 0/1 test as well.
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise self.error(
            f"expected a boolean label (true = desirable, false = undesirable; 0/1 also accepted), "
            f"got {value!r}",
            column,
        )

    def margin(self) -> float | None:
        """The optional ``margin`` column as a float (a number, or a CSV cell's text)."""
        value = self.get("margin")
        if value is None or value == "":
            return None
        number: Any = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = value
        if isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number):
            raise self.error(f"expected a finite number, got {value!r}", "margin")
        return float(number)

    def tools(self) -> list[dict[str, Any]] | None:
        """The ``tools`` column (a list of JSON schemas, or that list as a JSON string) as OpenAI tool schemas
        (``{"type": "function", "function": {...}}``; a bare ``{name, parameters}`` schema is wrapped)."""
        value = self.get("tools")
        if value is None or value == "" or value == []:
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise self.error(
                    f"expected a JSON list of tool schemas, got invalid JSON ({error})", "tools"
                ) from None
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise self.error(f"expected a list of tool schemas, got {kind(value)}", "tools")
        schemas = []
        for position, schema in enumerate(value):
            where = f"tools[{position}]"
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except json.JSONDecodeError:
                    raise self.error(
                        "expected a tool schema object, got a string that is not JSON", where
                    ) from None
            if not isinstance(schema, dict):
                raise self.error(f"expected a tool schema object, got {kind(schema)}", where)
            function = schema.get("function") if schema.get("type") == "function" else schema
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise self.error(
                    "a tool schema needs a 'name' (or {'type': 'function', 'function': {'name': ...}})", where
                )
            schemas.append({"type": "function", "function": function})
        return schemas

    # --- conversations -----------------------------------------------------------------------------------

    def messages(self, value: Any, field_name: str, speakers: Speakers = OPENAI) -> list[Message]:
        """A conversation checked and normalised to messages (`turns.read_messages`)."""
        return turns.read_messages(self, value, field_name, speakers)

    def turn(self, raw: Any, where: str, speakers: Speakers) -> list[Message]:
        """One raw turn as messages, a pair turn two (`turns.read_turn`)."""
        return turns.read_turn(self, raw, where, speakers)

    # --- structure checks --------------------------------------------------------------------------------

    def check_prompt(self, prompt: list[Message], field_name: str) -> None:
        if not prompt:
            raise self.error("the prompt has no messages", field_name)
        if prompt[-1]["role"] not in ("user", "tool"):
            raise self.error(f"the prompt must end with a user turn, not {prompt[-1]['role']!r}", field_name)

    def check_completion(self, completion: list[Message], field_name: str) -> None:
        if not completion:
            raise self.error("empty completion: no messages", field_name)
        if completion[0]["role"] != "assistant":
            raise self.error(
                f"the completion must start with an assistant turn, not {completion[0]['role']!r}", field_name
            )
        # A trailing user turn would be scored as if the model had written it.
        if completion[-1]["role"] != "assistant":
            raise self.error(
                f"the completion must end with an assistant turn, not {completion[-1]['role']!r}", field_name
            )
        for position, message in enumerate(completion):
            if message["role"] == "tool":
                # Everything in a completion is trained on; a tool's output is not the model's to learn.
                raise self.error(
                    "a tool's output inside the completion would be trained on; end the prompt after it",
                    f"{field_name}[{position}].role",
                )
            if (
                message["role"] == "assistant"
                and not message.get("tool_calls")
                and not message["content"].strip()
            ):
                raise self.error(
                    "empty completion: assistant content is blank", f"{field_name}[{position}].content"
                )

    def check_order(self, conversation: list[Message], field_name: str, offset: int = 0) -> None:
        """System only first, then user/assistant alternating from a user turn; a tool's output only after an
        assistant turn that calls tools (or another output).

        Args:
            conversation: Prompt followed by completion.
            field_name: Column named in the error.
            offset: Index of the column's first message in ``conversation``, to name the bad message.
        """
        previous: Message | None = None
        for position, message in enumerate(conversation):
            role = message["role"]
            where = f"{field_name}[{position - offset}].role" if position >= offset else field_name
            if role == "system":
                if position != 0:
                    raise self.error("a system message may only be the first message", where)
                previous = message
                continue
            if role == "tool":
                if previous is None or not (previous["role"] == "tool" or previous.get("tool_calls")):
                    raise self.error("a tool's output must follow an assistant turn that calls tools", where)
            else:
                expected = "assistant" if previous is not None and previous["role"] == "user" else "user"
                if previous is not None and previous["role"] == "tool":
                    expected = "assistant"
                if role != expected:
                    raise self.error(
                        f"roles must alternate user/assistant starting with user; got {role!r} where "
                        f"{expected!r} was expected",
                        where,
                    )
            previous = message

    def check_text_completion(self, text: str, field_name: str) -> None:
        if not text.strip():
            raise self.error("empty completion", field_name)

    # --- images ------------------------------------------------------------------------------------------

    def image_list(self, column: str) -> list[ImageSource] | None:
        """An image column (a list; a single image also works) read and checked; None when absent or empty."""
        value = self.get(column)
        if value is None or value == "" or (isinstance(value, list) and not value):
            return None  # an empty cell (CSV) or list: a row without images
        values = value if isinstance(value, list) else [value]
        images = []
        for position, item in enumerate(values):
            where = f"{column}[{position}]" if isinstance(value, list) else column
            images.append(self.image(item, where))
        return images

    def image(self, value: Any, where: str) -> ImageSource:
        try:
            return image_source(value, self.lookup)
        except ImageError as error:
            raise self.error(str(error), where) from None
