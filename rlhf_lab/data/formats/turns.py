"""Reading a row's conversations: raw turns checked and normalised to messages.

Speakers are named as a layout's `Speakers` say; content is a string or a list of parts (text, images,
tool calls); tool-call turns and OpenAI ``tool_calls`` become assistant messages with ``tool_calls``; a
turn's training weight (``loss_weight``, ``loss``) is read and then checked by `take_loss_weights`. Every
function reads through a `RowContext`, whose ``messages`` and ``turn`` are the layouts' way in.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rlhf_lab.data.formats.example import Message
from rlhf_lab.data.formats.speakers import OPENAI, TOOL_CALL, Speakers
from rlhf_lab.data.formats.texts import kind
from rlhf_lab.data.images import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    from rlhf_lab.data.formats.validate import RowContext


def read_messages(
    context: RowContext, value: Any, field_name: str, speakers: Speakers = OPENAI
) -> list[Message]:
    """A conversation checked and normalised to ``{"role", "content"}`` messages (``tool_calls`` on
    assistant tool calls; ``name``/``tool_call_id`` kept on tool outputs).

    Speakers are read as ``speakers`` names them (`ANY_SPEAKER`: ``role``/``content`` or
    ``from``/``value``, every peer's speaker names); content is a string or a list of parts (TRL's
    ``{"type": "text", "text"}``/``{"type": "image"}``, LLaMA-Factory v1's ``{"type", "value"}``, OpenAI's
    ``image_url``). A tool-call turn (``function_call``, ``tool_call``) becomes an assistant message with
    ``tool_calls``, merged into the assistant message right before it when there is one.
    """
    if speakers is not OPENAI and context.speakers is not None:
        speakers = context.speakers  # data.tags name the speakers of the peers' conversation layouts
    if not isinstance(value, list):
        hint = ""
        if isinstance(value, str) and value.lstrip().startswith("["):
            hint = " (JSON text, as a CSV cell holds it: keep conversations in JSON, JSONL or Parquet files)"
        raise context.error(f"expected a list of messages, got {kind(value)}{hint}", field_name)
    messages: list[Message] = []
    for position, raw in enumerate(value):
        where = f"{field_name}[{position}]"
        for message in read_turn(context, raw, where, speakers):
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


def read_turn(context: RowContext, raw: Any, where: str, speakers: Speakers) -> list[Message]:
    """One raw turn as messages (a pair turn is two)."""
    if speakers is not OPENAI and context.speakers is not None:
        speakers = context.speakers
    if not isinstance(raw, dict):
        raise context.error(f"expected a message object, got {kind(raw)}", where)
    role_key = next((key for key in speakers.role_keys if key in raw), None)
    if role_key is None:
        pair = _pair_turn(context, raw, where, speakers)
        if pair is not None:
            return pair
        keys = ", ".join(map(str, raw)) or "none"
        raise context.error(f"message has no {speakers.role_keys[0]!r} (keys: {keys})", where)
    speaker = raw[role_key]
    role = speakers.roles.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        raise context.error(
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
            "tool_calls": _tool_call_content(context, raw, content_key, where),
            "merge": True,
        }
    else:
        message = _spoken_message(context, raw, role, content_key, where, speakers, read)
    weight = _loss_weight(context, raw, where, read)
    if weight is not None and message["role"] == "assistant":
        message["loss_weight"] = weight  # checked and removed by `take_loss_weights`
    column = where.split("[", 1)[0]
    context.unused_keys.update(f"{context.file_field(column)}[].{key}" for key in raw if key not in read)
    return [message]


def _spoken_message(
    context: RowContext,
    raw: dict,
    role: str,
    content_key: str | None,
    where: str,
    speakers: Speakers,
    read: set[str | None],
) -> Message:
    """A turn with a speaker (not a tool-call turn) as a message; the keys it reads are added to ``read``."""
    has_calls = role == "assistant" and raw.get("tool_calls")
    if content_key is None and not has_calls:
        keys = ", ".join(map(str, raw))
        raise context.error(f"message has no {speakers.content_keys[0]!r} (keys: {keys})", where)
    content = raw.get(content_key) if content_key is not None else None
    calls: list[dict[str, Any]] = []
    if isinstance(content, list):
        content, calls = _parts(context, content, f"{where}.{content_key}")
    if content is None and has_calls:
        content = ""
    if not isinstance(content, str):
        raise context.error(
            f"message content must be a string, got {kind(content)}", f"{where}.{content_key}"
        )
    message: Message = {"role": role, "content": content}
    if has_calls:
        read.add("tool_calls")
        calls += _openai_tool_calls(context, raw["tool_calls"], f"{where}.tool_calls")
    if calls:
        if role != "assistant":
            raise context.error("only an assistant turn may call tools", f"{where}.{content_key}")
        message["tool_calls"] = calls
    if role == "tool":
        for key in ("name", "tool_call_id"):
            if isinstance(raw.get(key), str):
                message[key] = raw[key]
                read.add(key)
    return message


def take_loss_weights(context: RowContext, completions: Mapping[str, Any], prompt: Any) -> None:
    """Check and remove the turns' training weights: a completion's assistant turns must be trained (weight
    1: rlhf_lab trains a completion whole); an earlier assistant turn is context whatever its weight."""
    for name, completion in completions.items():
        for message in completion if isinstance(completion, list) else []:
            weight = message.pop("loss_weight", None)
            if weight == 0:
                raise context.error(
                    "the completion's assistant turn is marked not to be trained (loss_weight 0 / loss false); "
                    "end the conversation at the turn to train on",
                    name,
                )
            if weight not in (None, 1.0):
                raise context.error(
                    f"loss_weight {weight} is not supported: a turn is trained (1) or not (0)", name
                )
    for message in prompt if isinstance(prompt, list) else []:
        message.pop("loss_weight", None)


def _loss_weight(context: RowContext, raw: dict, where: str, read: set[str | None]) -> float | None:
    """A turn's training weight: LLaMA-Factory v1's ``loss_weight``, ms-swift's ``loss`` (true/false)."""
    if raw.get("loss_weight") is not None:
        read.add("loss_weight")
        value = raw["loss_weight"]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < math.inf:
            raise context.error(f"expected a weight >= 0, got {value!r}", f"{where}.loss_weight")
        return float(value)
    if raw.get("loss") is not None:
        read.add("loss")
        if not isinstance(raw["loss"], bool):
            raise context.error(f"expected true or false, got {raw['loss']!r}", f"{where}.loss")
        return 1.0 if raw["loss"] else 0.0
    read.update(key for key in ("loss_weight", "loss") if key in raw)  # null: the default
    return None


def _pair_turn(context: RowContext, raw: dict, where: str, speakers: Speakers) -> list[Message] | None:
    """ms-swift's pair turn ``{"human": query, "assistant": response}`` as two messages, or None."""
    if not speakers.pair_turns:
        return None
    users = [key for key in raw if speakers.roles.get(key) == "user"]
    assistants = [key for key in raw if speakers.roles.get(key) == "assistant"]
    if len(users) != 1 or len(assistants) != 1 or len(raw) != 2:
        return None
    return [
        {"role": "user", "content": context.text(raw[users[0]], f"{where}.{users[0]}")},
        {"role": "assistant", "content": context.text(raw[assistants[0]], f"{where}.{assistants[0]}")},
    ]


def _parts(context: RowContext, parts: list, where: str) -> tuple[str, list[dict[str, Any]]]:
    """Content parts as one string (an ``<image>`` placeholder where each image stands) and tool calls.

    Images a part carries (LLaMA-Factory v1's ``image_url`` value, OpenAI's ``image_url.url``, TRL's
    ``image``) are collected in `RowContext.part_images`; a bare ``{"type": "image"}`` refers to the row's ``images``.
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
            if part_type == "image_url" and source is None and isinstance(part.get("image_url"), dict | str):
                url = part["image_url"]
                source = url.get("url") if isinstance(url, dict) else url
            if source is not None:
                context.part_images.append((at, source))
            pieces.append(IMAGE_PLACEHOLDER)
        elif part_type == "tool_call" and isinstance(text, str):
            calls += _parse_calls(context, text, at)
        elif part_type in ("video", "video_url", "audio", "audio_url"):
            raise context.error(
                f"{part_type.split('_')[0]} content is not supported (images and text are)", at
            )
        elif part_type == "reasoning":
            raise context.error(
                "reasoning content parts are not supported yet; put the reasoning in the text", at
            )
        else:
            raise context.error(
                "expected a content part {'type': 'text', 'text': ...} (or 'value'), {'type': 'image'}, "
                f"{{'type': 'image_url', ...}} or {{'type': 'tool_call', 'value': ...}}, got {part!r}",
                at,
            )
    return "".join(pieces), calls


def _tool_call_content(
    context: RowContext, raw: dict, content_key: str | None, where: str
) -> list[dict[str, Any]]:
    """A tool-call turn's calls: its content is ``{"name", "arguments"}`` (or a list), as JSON text or not."""
    value = raw.get(content_key) if content_key is not None else None
    at = f"{where}.{content_key or 'content'}"
    if isinstance(value, str):
        return _parse_calls(context, value, at)
    if isinstance(value, dict | list):
        return _calls(context, value, at)
    raise context.error(f"a tool call's content must be JSON {{'name', 'arguments'}}, got {kind(value)}", at)


def _parse_calls(context: RowContext, text: str, where: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise context.error(
            f"a tool call must be JSON {{'name': ..., 'arguments': {{...}}}} ({error})", where
        ) from None
    return _calls(context, value, where)


def _calls(context: RowContext, value: Any, where: str) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise context.error(f"a tool call needs a 'name' and 'arguments', got {item!r}", where)
        calls.append(_call(context, item, where))
    return calls


def _openai_tool_calls(context: RowContext, value: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI / TRL ``tool_calls``: ``[{"type": "function", "function": {"name", "arguments"}}]``."""
    if not isinstance(value, list):
        raise context.error(f"expected a list of tool calls, got {kind(value)}", where)
    calls = []
    for position, call in enumerate(value):
        at = f"{where}[{position}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise context.error(
                f"expected {{'type': 'function', 'function': {{'name', 'arguments'}}}}, got {call!r}", at
            )
        calls.append(_call(context, function, at))
    return calls


def _call(context: RowContext, function: dict[str, Any], where: str) -> dict[str, Any]:
    """One call ``{"name", "arguments"}`` in OpenAI's shape, its arguments an object."""
    arguments = _arguments(context, function.get("arguments", {}), where)
    return {"type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _arguments(context: RowContext, value: Any, where: str) -> dict[str, Any]:
    """A call's arguments as an object (chat templates render them with ``tojson``); JSON text is parsed."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as error:
            raise context.error(f"tool call arguments are not valid JSON ({error})", where) from None
    if not isinstance(value, dict):
        raise context.error(f"tool call arguments must be an object, got {kind(value)}", where)
    return value
