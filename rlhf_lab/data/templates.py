"""Rendering conversations with the model's own chat template, as that template expects them.

Templates differ in what they read: most take message content as a string, some only as a list of parts
(llava-hf's LLaVA-1.6 template reads ``message['content'][0]['text']``), and only some render tools and tool
calls. What a template does is found once per template by rendering a probe conversation, then every row is
rendered that way: content as parts where strings do not render, and a named error (not a silently wrong
text) for tools or tool calls given to a template that does not render them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from rlhf_lab.data.formats import DataError, Message

# Unlikely texts, to find in a probe's rendering.
_USER, _ASSISTANT, _OUTPUT = "\u2402probe-user\u2403", "\u2402probe-answer\u2403", "\u2402probe-output\u2403"
_TOOL, _ARGUMENT = "probe_tool_fn", "probe_argument"
_SCHEMA = {
    "type": "function",
    "function": {"name": _TOOL, "description": "probe", "parameters": {"type": "object", "properties": {}}},
}


@dataclass(frozen=True)
class TemplateTraits:
    """What a chat template renders.

    Attributes:
        parts: Message content must be a list of ``{"type": "text", "text": ...}`` parts (strings do not render).
        tools: It renders the ``tools`` schemas it is given.
        tool_calls: It renders assistant ``tool_calls`` and ``tool`` messages (the call's arguments and the
            tool's output both appear).
    """

    parts: bool
    tools: bool
    tool_calls: bool


_TRAITS: dict[str, TemplateTraits] = {}


def as_parts(messages: list[Message]) -> list[Message]:
    """Each string content as one text part (what part-only templates read)."""
    return [
        {**message, "content": [{"type": "text", "text": message["content"]}]}
        if isinstance(message.get("content"), str)
        else message
        for message in messages
    ]


def _try(tokenizer: Any, messages: list[Message], **kwargs: Any) -> str | None:
    try:
        return tokenizer.apply_chat_template(copy.deepcopy(messages), tokenize=False, **kwargs)
    except Exception:  # a template that cannot render the probe: the trait is absent
        return None


def traits(tokenizer: Any) -> TemplateTraits:
    """What the tokenizer's chat template renders, probed once per template text."""
    template = tokenizer.chat_template
    if not isinstance(template, str):
        template = repr(template)
    if template in _TRAITS:
        return _TRAITS[template]
    conversation: list[Message] = [
        {"role": "user", "content": _USER},
        {"role": "assistant", "content": _ASSISTANT},
    ]
    text = _try(tokenizer, conversation)
    parts = not (text is not None and _USER in text and _ASSISTANT in text)
    if parts:
        text = _try(tokenizer, as_parts(conversation))
        parts = text is not None and _USER in text and _ASSISTANT in text
    shape = as_parts if parts else list
    with_tools = _try(tokenizer, shape(conversation), tools=[_SCHEMA])
    calls: list[Message] = [
        {"role": "user", "content": _USER},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": _TOOL, "arguments": {_ARGUMENT: 7}}}],
        },
        {"role": "tool", "name": _TOOL, "content": _OUTPUT},
        {"role": "assistant", "content": _ASSISTANT},
    ]
    with_calls = _try(tokenizer, shape(calls), tools=[_SCHEMA])
    found = TemplateTraits(
        parts=parts,
        tools=with_tools is not None and _TOOL in with_tools,
        tool_calls=with_calls is not None and _ARGUMENT in with_calls and _OUTPUT in with_calls,
    )
    _TRAITS[template] = found
    return found


def render(
    tokenizer: Any,
    messages: list[Message],
    *,
    generation_prompt: bool,
    source: str,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """``messages`` (and ``tools``) rendered by the tokenizer's chat template.

    Raises:
        DataError: The row has tools or tool calls the template does not render, or the template fails on it.
    """
    found = traits(tokenizer)
    has_calls = any(message.get("tool_calls") or message["role"] == "tool" for message in messages)
    if (tools and not found.tools) or (has_calls and not found.tool_calls):
        what = "tool calls and tool outputs" if has_calls and not found.tool_calls else "tool schemas"
        raise DataError(
            f"this row has tools, but the chat template has no tool support: it does not render {what}; set "
            "model.chat_template to a template that does (Qwen2.5's, for one) or remove the tool turns",
            file=source,
        )
    shaped = as_parts(messages) if found.parts else messages
    try:
        return tokenizer.apply_chat_template(
            shaped, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as error:
        raise DataError(f"the chat template failed to render this example: {error}", file=source) from error
