"""Reading and checking one row: its columns, conversations, texts, labels, margins, tools and images.

`RowContext` is what every layout's converter reads a row through. It records which columns were read (the
rest are the row's unused columns: reported once as ignored, and passed to online-RL reward functions), maps
the names a layout reads back to the file's own names in errors (``data.columns``), and builds a `DataError`
naming file, row and field for anything wrong.
"""

from __future__ import annotations

import json
import math
import numbers
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlhf_lab.data.formats.example import DataError, Message
from rlhf_lab.data.images import IMAGE_PLACEHOLDER, ImageError, ImageLookup, ImageSource, image_source

#: A turn that calls tools: LLaMA-Factory's ``function_call``, ms-swift's ``tool_call``. It becomes an
#: assistant message with ``tool_calls``.
TOOL_CALL = "tool_call"


@dataclass(frozen=True)
class Speakers:
    """How a layout's messages name their speaker and their text.

    Attributes:
        role_keys: The key holding the speaker (the first present is used).
        content_keys: The key holding the text.
        roles: Speaker value -> ``system``, ``user``, ``assistant``, ``tool`` (a tool's output) or `TOOL_CALL`.
        pair_turns: Also read ms-swift's pair turns (``{"human": query, "assistant": response}``).
    """

    role_keys: tuple[str, ...]
    content_keys: tuple[str, ...]
    roles: Mapping[str, str]
    pair_turns: bool = False

    def expected_roles(self) -> str:
        return ", ".join(self.roles)


#: OpenAI / TRL messages: exactly these roles.
OPENAI = Speakers(
    ("role",), ("content",), {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
)
#: Every peer's speaker names: OpenAI / TRL, ShareGPT (LLaMA-Factory), ms-swift.
ANY_SPEAKER = Speakers(
    ("role", "from"),
    ("content", "value"),
    {
        "system": "system",
        "user": "user",
        "human": "user",
        "assistant": "assistant",
        "gpt": "assistant",
        "bot": "assistant",
        "tool": "tool",
        "observation": "tool",
        "observations": "tool",
        "tool_response": "tool",
        "function_response": "tool",
        "function_call": TOOL_CALL,
        "function-call": TOOL_CALL,
        "tool_call": TOOL_CALL,
    },
    pair_turns=True,
)
#: LLaMA-Factory's ``tags`` (``dataset_info.json``), and what each speaker tag names.
TAG_ROLES = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
    "observation_tag": "tool",
    "function_tag": TOOL_CALL,
}
TAGS = ("role_tag", "content_tag", *TAG_ROLES)


def speakers_from_tags(tags: Mapping[str, str]) -> Speakers:
    """`ANY_SPEAKER` with the keys and speaker names ``tags`` sets (``data.tags``, LLaMA-Factory's names)."""
    roles = dict(ANY_SPEAKER.roles)
    for tag, role in TAG_ROLES.items():
        if tags.get(tag):
            roles[str(tags[tag])] = role
    return Speakers(
        (str(tags["role_tag"]),) if tags.get("role_tag") else ANY_SPEAKER.role_keys,
        (str(tags["content_tag"]),) if tags.get("content_tag") else ANY_SPEAKER.content_keys,
        roles,
        pair_turns=not (tags.get("role_tag") or tags.get("content_tag")),
    )


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
        """A conversation checked and normalised to ``{"role", "content"}`` messages (``tool_calls`` on
        assistant tool calls; ``name``/``tool_call_id`` kept on tool outputs).

        Speakers are read as ``speakers`` names them (`ANY_SPEAKER`: ``role``/``content`` or
        ``from``/``value``, every peer's speaker names); content is a string or a list of parts (TRL's
        ``{"type": "text", "text"}``/``{"type": "image"}``, LLaMA-Factory v1's ``{"type", "value"}``, OpenAI's
        ``image_url``). A tool-call turn (``function_call``, ``tool_call``) becomes an assistant message with
        ``tool_calls``, merged into the assistant message right before it when there is one.
        """
        if speakers is not OPENAI and self.speakers is not None:
            speakers = self.speakers  # data.tags name the speakers of the peers' conversation layouts
        if not isinstance(value, list):
            hint = ""
            if isinstance(value, str) and value.lstrip().startswith("["):
                hint = (
                    " (JSON text, as a CSV cell holds it: keep conversations in JSON, JSONL or Parquet files)"
                )
            raise self.error(f"expected a list of messages, got {kind(value)}{hint}", field_name)
        messages: list[Message] = []
        for position, raw in enumerate(value):
            where = f"{field_name}[{position}]"
            for message in self.turn(raw, where, speakers):
                previous = messages[-1] if messages else None
                if (
                    message.get("tool_calls")
                    and message.pop("merge", False)
                    and previous is not None
                    and previous["role"] == "assistant"
                ):
                    # ms-swift: an assistant turn and the tool calls right after it are one turn.
                    previous.setdefault("tool_calls", []).extend(message["tool_calls"])
                    continue
                message.pop("merge", None)
                messages.append(message)
        return messages

    def turn(self, raw: Any, where: str, speakers: Speakers) -> list[Message]:
        """One raw turn as messages (a pair turn is two)."""
        if speakers is not OPENAI and self.speakers is not None:
            speakers = self.speakers
        if not isinstance(raw, dict):
            raise self.error(f"expected a message object, got {kind(raw)}", where)
        role_key = next((key for key in speakers.role_keys if key in raw), None)
        if role_key is None:
            pair = self._pair_turn(raw, where, speakers)
            if pair is not None:
                return pair
            keys = ", ".join(map(str, raw)) or "none"
            raise self.error(f"message has no {speakers.role_keys[0]!r} (keys: {keys})", where)
        speaker = raw[role_key]
        role = speakers.roles.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise self.error(
                f"unknown role {speaker!r}; expected one of: {speakers.expected_roles()}",
                f"{where}.{role_key}",
            )
        content_key = next((key for key in speakers.content_keys if key in raw), None)
        read = {role_key, content_key}
        message: Message
        if role == TOOL_CALL:
            message = {
                "role": "assistant",
                "content": "",
                "tool_calls": self._tool_call_content(raw, content_key, where),
                "merge": True,
            }
        else:
            has_calls = role == "assistant" and raw.get("tool_calls")
            if content_key is None and not has_calls:
                keys = ", ".join(map(str, raw))
                raise self.error(f"message has no {speakers.content_keys[0]!r} (keys: {keys})", where)
            content = raw.get(content_key) if content_key is not None else None
            calls: list[dict[str, Any]] = []
            if isinstance(content, list):
                content, calls = self._parts(content, f"{where}.{content_key}")
            if content is None and has_calls:
                content = ""
            if not isinstance(content, str):
                raise self.error(
                    f"message content must be a string, got {kind(content)}", f"{where}.{content_key}"
                )
            message = {"role": role, "content": content}
            if has_calls:
                read.add("tool_calls")
                calls += self._openai_tool_calls(raw["tool_calls"], f"{where}.tool_calls")
            if calls:
                if role != "assistant":
                    raise self.error("only an assistant turn may call tools", f"{where}.{content_key}")
                message["tool_calls"] = calls
            if role == "tool":
                for key in ("name", "tool_call_id"):
                    if isinstance(raw.get(key), str):
                        message[key] = raw[key]
                        read.add(key)
        weight = self._loss_weight(raw, where, read)
        if weight is not None and message["role"] == "assistant":
            message["loss_weight"] = weight  # checked and removed by `take_loss_weights`
        column = where.split("[", 1)[0]
        self.unused_keys.update(f"{self.file_field(column)}[].{key}" for key in raw if key not in read)
        return [message]

    def _loss_weight(self, raw: dict, where: str, read: set[str | None]) -> float | None:
        """A turn's training weight: LLaMA-Factory v1's ``loss_weight``, ms-swift's ``loss`` (true/false)."""
        if raw.get("loss_weight") is not None:
            read.add("loss_weight")
            value = raw["loss_weight"]
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not 0 <= float(value) < math.inf
            ):
                raise self.error(f"expected a weight >= 0, got {value!r}", f"{where}.loss_weight")
            return float(value)
        if raw.get("loss") is not None:
            read.add("loss")
            if not isinstance(raw["loss"], bool):
                raise self.error(f"expected true or false, got {raw['loss']!r}", f"{where}.loss")
            return 1.0 if raw["loss"] else 0.0
        read.update(key for key in ("loss_weight", "loss") if key in raw)  # null: the default
        return None

    def take_loss_weights(self, completions: Mapping[str, Any], prompt: Any) -> None:
        """Check and remove the turns' training weights: a completion's assistant turns must be trained (weight
        1: rlhf_lab trains a completion whole); an earlier assistant turn is context whatever its weight."""
        for name, completion in completions.items():
            for message in completion if isinstance(completion, list) else []:
                weight = message.pop("loss_weight", None)
                if weight == 0:
                    raise self.error(
                        "the completion's assistant turn is marked not to be trained (loss_weight 0 / loss false); "
                        "end the conversation at the turn to train on",
                        name,
                    )
                if weight not in (None, 1.0):
                    raise self.error(
                        f"loss_weight {weight} is not supported: a turn is trained (1) or not (0)", name
                    )
        for message in prompt if isinstance(prompt, list) else []:
            message.pop("loss_weight", None)

    def _pair_turn(self, raw: dict, where: str, speakers: Speakers) -> list[Message] | None:
        """ms-swift's pair turn ``{"human": query, "assistant": response}`` as two messages, or None."""
        if not speakers.pair_turns:
            return None
        users = [key for key in raw if speakers.roles.get(key) == "user"]
        assistants = [key for key in raw if speakers.roles.get(key) == "assistant"]
        if len(users) != 1 or len(assistants) != 1 or len(raw) != 2:
            return None
        return [
            {"role": "user", "content": self.text(raw[users[0]], f"{where}.{users[0]}")},
            {"role": "assistant", "content": self.text(raw[assistants[0]], f"{where}.{assistants[0]}")},
        ]

    def _parts(self, parts: list, where: str) -> tuple[str, list[dict[str, Any]]]:
        """Content parts as one string (an ``<image>`` placeholder where each image stands) and tool calls.

        Images a part carries (LLaMA-Factory v1's ``image_url`` value, OpenAI's ``image_url.url``, TRL's
        ``image``) are collected in `part_images`; a bare ``{"type": "image"}`` refers to the row's ``images``.
        """
        pieces: list[str] = []
        calls: list[dict[str, Any]] = []
        for position, part in enumerate(parts):
            at = f"{where}[{position}]"
            part_type = part.get("type") if isinstance(part, dict) else None
            text = part.get("text", part.get("value")) if isinstance(part, dict) else None
            if part_type == "text" and isinstance(text, str):
                pieces.append(text)
            elif part_type in ("image", "image_url"):
                source = part.get("image", part.get("value", part.get("url", part.get("path"))))
                if isinstance(source, dict) and "url" in source:  # OpenAI: {"image_url": {"url": ...}}
                    source = source["url"]
                if (
                    part_type == "image_url"
                    and source is None
                    and isinstance(part.get("image_url"), dict | str)
                ):
                    url = part["image_url"]
                    source = url.get("url") if isinstance(url, dict) else url
                if source is not None:
                    self.part_images.append((at, source))
                pieces.append(IMAGE_PLACEHOLDER)
            elif part_type == "tool_call" and isinstance(text, str):
                calls += self._parse_calls(text, at)
            elif part_type in ("video", "video_url", "audio", "audio_url"):
                raise self.error(
                    f"{part_type.split('_')[0]} content is not supported (images and text are)", at
                )
            elif part_type == "reasoning":
                raise self.error(
                    "reasoning content parts are not supported yet; put the reasoning in the text", at
                )
            else:
                raise self.error(
                    "expected a content part {'type': 'text', 'text': ...} (or 'value'), {'type': 'image'}, "
                    f"{{'type': 'image_url', ...}} or {{'type': 'tool_call', 'value': ...}}, got {part!r}",
                    at,
                )
        return "".join(pieces), calls

    def _tool_call_content(self, raw: dict, content_key: str | None, where: str) -> list[dict[str, Any]]:
        """A tool-call turn's calls: its content is ``{"name", "arguments"}`` (or a list), as JSON text or not."""
        value = raw.get(content_key) if content_key is not None else None
        at = f"{where}.{content_key or 'content'}"
        if isinstance(value, str):
            return self._parse_calls(value, at)
        if isinstance(value, dict | list):
            return self._calls(value, at)
        raise self.error(f"a tool call's content must be JSON {{'name', 'arguments'}}, got {kind(value)}", at)

    def _parse_calls(self, text: str, where: str) -> list[dict[str, Any]]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise self.error(
                f"a tool call must be JSON {{'name': ..., 'arguments': {{...}}}} ({error})", where
            ) from None
        return self._calls(value, where)

    def _calls(self, value: Any, where: str) -> list[dict[str, Any]]:
        items = value if isinstance(value, list) else [value]
        calls = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise self.error(f"a tool call needs a 'name' and 'arguments', got {item!r}", where)
            calls.append(self._call(item, where))
        return calls

    def _openai_tool_calls(self, value: Any, where: str) -> list[dict[str, Any]]:
        """OpenAI / TRL ``tool_calls``: ``[{"type": "function", "function": {"name", "arguments"}}]``."""
        if not isinstance(value, list):
            raise self.error(f"expected a list of tool calls, got {kind(value)}", where)
        calls = []
        for position, call in enumerate(value):
            at = f"{where}[{position}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise self.error(
                    f"expected {{'type': 'function', 'function': {{'name', 'arguments'}}}}, got {call!r}", at
                )
            calls.append(self._call(function, at))
        return calls

    def _call(self, function: dict[str, Any], where: str) -> dict[str, Any]:
        """One call ``{"name", "arguments"}`` in OpenAI's shape, its arguments an object."""
        arguments = self._arguments(function.get("arguments", {}), where)
        return {"type": "function", "function": {"name": function["name"], "arguments": arguments}}

    def _arguments(self, value: Any, where: str) -> dict[str, Any]:
        """A call's arguments as an object (chat templates render them with ``tojson``); JSON text is parsed."""
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as error:
                raise self.error(f"tool call arguments are not valid JSON ({error})", where) from None
        if not isinstance(value, dict):
            raise self.error(f"tool call arguments must be an object, got {kind(value)}", where)
        return value

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
