"""Conversation layouts: one conversation column, plus what makes it a pair, an unpaired row or a prompt.

One reader serves the peers' conversation layouts, which differ in names more than in meaning:

- ``messages`` (OpenAI roles; TRL's conversational language modeling, ms-swift's standard layout,
  LLaMA-Factory's ``openai`` formatting): ending with an assistant turn it is SFT data; with
  ``rejected_response`` (a string or assistant messages: it replaces what follows the last user turn),
  ``rejected_messages`` (a whole conversation) or only ``rejected_images`` (the same text, another image) a
  pair; with a boolean ``label`` (or ``kto_tag``) an unpaired KTO row; ending with a user turn, a prompt for
  online RL (ms-swift's GRPO layout: the other columns, such as ``solution``, go to the reward functions).
- ``sharegpt`` (LLaMA-Factory: ``conversations`` of ``{"from", "value"}`` turns, ``human``/``gpt``/``system``/
  ``function_call``/``observation``; ms-swift's ``conversation``/``conversations``): the same, plus
  LLaMA-Factory's ranking rows (``chosen`` and ``rejected`` as single turns after a conversation ending with
  a human turn). ``data.tags`` renames keys and speakers.
- ``llamafactory_v1`` (LLaMA-Factory v1: content as parts ``{"type": "text" | "image_url" | "tool_call",
  "value"}``; pairs as ``chosen_messages`` / ``rejected_messages``).

Tool calls (``function_call`` / ``tool_call`` turns, OpenAI ``tool_calls``) become assistant messages with
``tool_calls``; tool outputs (``observation``, ``tool_response``, ``tool``) are ``tool`` messages, always in
the prompt, never trained on. A ``tools`` column (a JSON string or a list of schemas) goes to the template.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlhf_lab.data.formats.example import Message
from rlhf_lab.data.formats.registry import Layout, Parsed, register
from rlhf_lab.data.formats.speakers import ANY_SPEAKER
from rlhf_lab.data.formats.texts import is_blank, kind
from rlhf_lab.data.formats.trl import split_pair
from rlhf_lab.data.formats.validate import RowContext

CONVERSATION_COLUMNS = ("messages", "conversations", "conversation")
LABEL_COLUMNS = ("label", "kto_tag")


def _conversation(context: RowContext, column: str) -> tuple[list[Message], int]:
    """The column's conversation (behind the ``system`` column's message) and the index in the file of its
    first message (-1: the system column's)."""
    given = context.messages(context.get(column), column, ANY_SPEAKER)
    messages = context.with_system(given)
    if not messages:
        raise context.error("the conversation has no messages", column)
    context.check_order(messages, column)
    return messages, len(given) - len(messages)


def _origin(
    column: str, first: int, prompt: list[Message], *parts: str, **others: tuple[str, int | None]
) -> dict[str, tuple[str, int | None]]:
    """Where the prompt and the completion ``parts`` of a conversation stand in the file (`Parsed.origin`)."""
    return {"prompt": (column, first), **{part: (column, first + len(prompt)) for part in parts}, **others}


def _after_last_user(messages: list[Message]) -> int:
    """Where the completion starts: after the last user or tool-output turn."""
    users = [i for i, message in enumerate(messages) if message["role"] in ("user", "tool")]
    return users[-1] + 1 if users else 0


def _split(context: RowContext, messages: list[Message], column: str) -> tuple[list[Message], list[Message]]:
    """A conversation ending with an assistant turn -> (prompt, the last assistant turn)."""
    start = _after_last_user(messages)
    prompt, completion = messages[:start], messages[start:]
    if not completion:
        raise context.error("the conversation must end with an assistant turn to train on", column)
    context.check_prompt(prompt, column)
    context.check_completion(completion, column)
    return prompt, completion


def completion_turns(context: RowContext, column: str, prompt: list[Message]) -> list[Message]:
    """A completion column: one turn object (LLaMA-Factory's ``chosen``), a list of messages, or a string."""
    raw = context.get(column)
    if isinstance(raw, str):
        context.check_text_completion(raw, column)
        completion = [{"role": "assistant", "content": raw}]
    elif isinstance(raw, dict):
        completion = context.turn(raw, column, ANY_SPEAKER)
        speakers = context.speakers or ANY_SPEAKER
        role_key = next((key for key in speakers.role_keys if key in raw), speakers.role_keys[0])
        content_key = next((key for key in speakers.content_keys if key in raw), speakers.content_keys[0])
        if completion[0]["role"] != "assistant":
            raise context.error(
                f"expected an assistant turn, got {raw.get(role_key)!r}", f"{column}.{role_key}"
            )
        if not completion[0].get("tool_calls") and is_blank(completion[0]["content"]):
            raise context.error("empty completion", f"{column}.{content_key}")
    elif isinstance(raw, list):
        completion = context.messages(raw, column, ANY_SPEAKER)
    else:
        raise context.error(
            f"expected a turn object, a list of messages or a string, got {kind(raw)}", column
        )
    if any(message["role"] == "user" for message in completion):
        raise context.error("a completion may not contain a user turn", column)
    context.check_completion(completion, column)
    context.check_order(prompt + completion, column, offset=len(prompt))
    return completion


def _pair_images(
    chosen: list[tuple[str, Any]], rejected: list[tuple[str, Any]]
) -> tuple[list[tuple[str, Any]] | None, list[tuple[str, Any]] | None]:
    """Images found in the parts of two whole conversations: the chosen side's, and the rejected side's when
    they differ from them (an image-level pair)."""
    if not chosen and not rejected:
        return None, None
    same = [value for _, value in chosen] == [value for _, value in rejected]
    return chosen or None, None if same or not rejected else rejected


def _whole_pair(context: RowContext, chosen_column: str, tools: list[dict[str, Any]] | None) -> Parsed:
    """Two whole conversations, ``chosen_column`` and ``rejected_messages``: the prompt is their shared start
    (LLaMA-Factory v1's ``chosen_messages``, ms-swift's ``messages``); images in their content parts are the
    chosen side's, and the rejected side's where they differ."""
    start = len(context.part_images)
    given = context.messages(context.get(chosen_column), chosen_column, ANY_SPEAKER)
    chosen = context.with_system(given)
    middle = len(context.part_images)
    rejected = context.with_system(
        context.messages(context.get("rejected_messages"), "rejected_messages", ANY_SPEAKER)
    )
    images, rejected_images = _pair_images(context.part_images[start:middle], context.part_images[middle:])
    shift = len(given) - len(chosen)  # -1: a system message from the system column
    prompt, chosen, rejected = split_pair(context, chosen, rejected, chosen_column, "rejected_messages")
    origin = _origin(
        chosen_column, shift, prompt, "chosen", rejected=("rejected_messages", shift + len(prompt))
    )
    return Parsed(
        prompt, chosen, rejected, tools=tools, images=images, rejected_images=rejected_images, origin=origin
    )


def read_conversation(context: RowContext) -> Parsed:
    """Any conversation row (see the module docstring)."""
    tools = context.tools()
    if context.has("chosen_messages") or (
        context.has("rejected_messages") and not context.one_of(*CONVERSATION_COLUMNS)
    ):
        context.require("chosen_messages", "rejected_messages")
        return _whole_pair(context, "chosen_messages", tools)  # LLaMA-Factory v1

    column = context.one_of(*CONVERSATION_COLUMNS)
    if column is None:
        if context.has("query"):
            from rlhf_lab.data.formats.swift import read_query_response

            return read_query_response(context)  # ms-swift files may mix its two layouts
        context.require(CONVERSATION_COLUMNS[0])
        raise AssertionError("unreachable")  # require raised
    rejected_kind = context.one_of("chosen", "rejected_response", "rejected_messages")
    label_column = context.one_of(*LABEL_COLUMNS)
    if rejected_kind is not None and label_column is not None:
        raise context.error(
            f"the row has both a {label_column!r} (unpaired) and a {rejected_kind!r} (paired); give one",
            label_column,
        )
    if rejected_kind == "rejected_messages":
        return _whole_pair(context, column, tools)  # ms-swift
    return _one_conversation(context, column, rejected_kind, label_column, tools)


def _one_conversation(
    context: RowContext,
    column: str,
    rejected_kind: str | None,
    label_column: str | None,
    tools: list[dict[str, Any]] | None,
) -> Parsed:
    """A row whose one conversation is in ``column``: a ranking row, a pair with a ``rejected_response``, a
    prompt, or a conversation ending with its completion (SFT, KTO, or a pair by ``rejected_images``)."""
    start = len(context.part_images)
    messages, first = _conversation(context, column)
    images = context.part_images[start:] or None
    if rejected_kind == "chosen" or (context.has("rejected") and rejected_kind is None):
        # LLaMA-Factory's ranking rows: the conversation is the prompt; chosen and rejected are single turns.
        context.check_prompt(messages, column)
        context.require("chosen", "rejected")
        chosen = completion_turns(context, "chosen", messages)
        rejected = completion_turns(context, "rejected", messages)
        origin = _origin(column, first, messages)
        return Parsed(messages, chosen, rejected, tools=tools, images=images, origin=origin)

    if rejected_kind == "rejected_response":
        # ms-swift: the rejected response replaces everything after the last user turn.
        prompt, chosen = _split(context, messages, column)
        as_text = isinstance(context.get("rejected_response"), str)
        rejected = completion_turns(context, "rejected_response", prompt)
        origin = _origin(
            column, first, prompt, "chosen", rejected=("rejected_response", None if as_text else 0)
        )
        return Parsed(prompt, chosen, rejected, tools=tools, images=images, origin=origin)

    if messages[-1]["role"] in ("user", "tool"):
        if label_column is not None or context.has("rejected_images"):
            what = label_column or "rejected_images"
            raise context.error(
                f"the conversation ends with a user turn, so {what!r} has no completion to go with", column
            )
        context.check_prompt(messages, column)
        # ms-swift's GRPO rows: a prompt to generate from.
        return Parsed(messages, tools=tools, images=images, origin=_origin(column, first, messages))

    prompt, completion = _split(context, messages, column)
    origin = _origin(column, first, prompt, "completion", "chosen", "rejected")
    if label_column is not None:
        label = context.label(label_column)
        return Parsed(prompt, completion, label=label, tools=tools, images=images, origin=origin)
    if context.has("rejected_images"):
        # ms-swift: only rejected_images given: the same conversation, shown another image.
        rejected = [dict(message) for message in completion]
        return Parsed(prompt, completion, rejected, tools=tools, images=images, origin=origin)
    return Parsed(prompt, completion, tools=tools, images=images, origin=origin)


def _first_turn(row: Mapping[str, Any], column: str) -> Any:
    value = row.get(column)
    return value[0] if isinstance(value, list) and value else None


def _v1_parts(row: Mapping[str, Any]) -> bool:
    """Content given as LLaMA-Factory v1 parts (``{"type", "value"}``)."""
    turn = _first_turn(row, "messages") or _first_turn(row, "chosen_messages")
    content = turn.get("content") if isinstance(turn, dict) else None
    return isinstance(content, list) and any(isinstance(part, dict) and "value" in part for part in content)


def _sharegpt_turns(row: Mapping[str, Any]) -> bool:
    turn = _first_turn(row, "messages")
    return isinstance(turn, dict) and "from" in turn


COLUMNS = (
    *CONVERSATION_COLUMNS,
    "system",
    "tools",
    "chosen",
    "rejected",
    "rejected_response",
    "rejected_messages",
    "chosen_messages",
    *LABEL_COLUMNS,
)
register(
    Layout(
        "llamafactory_v1",
        "chosen_messages + rejected_messages, or messages of {type, value} parts",
        "LLaMA-Factory v1",
        COLUMNS,
        lambda names, row: "chosen_messages" in names or ("messages" in names and _v1_parts(row)),
        read_conversation,
        priority=5,
    )
)
register(
    Layout(
        "sharegpt",
        "conversations (from/value turns) [+ chosen + rejected | kto_tag]",
        "LLaMA-Factory: sharegpt; ms-swift: conversation(s)",
        COLUMNS,
        lambda names, row: (
            bool({"conversations", "conversation"} & names) or ("messages" in names and _sharegpt_turns(row))
        ),
        read_conversation,
        priority=20,
        aliases={"messages": "conversations"},
    )
)
register(
    Layout(
        "messages",
        "messages [+ rejected_response | rejected_messages | rejected_images | label]",
        "TRL: conversational language modeling; ms-swift: messages; LLaMA-Factory: openai",
        COLUMNS,
        lambda names, row: "messages" in names,
        read_conversation,
        priority=21,
    )
)
