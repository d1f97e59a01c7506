"""TRL's layouts (``docs/source/dataset_formats.md``): preference with an explicit or implicit prompt,
unpaired preference, prompt-completion, language modeling and prompt-only, each as strings ("standard") or
message lists ("conversational"). A ``tools`` column goes to the chat template; a ``system`` column
prefixes conversational prompts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlhf_lab.data.formats.example import Message
from rlhf_lab.data.formats.registry import Layout, Parsed, register
from rlhf_lab.data.formats.texts import check_pair_types, kind
from rlhf_lab.data.formats.validate import RowContext


def _conversational_prompt(context: RowContext, raw: Any, column: str = "prompt") -> list[Message]:
    prompt = context.messages(raw, column)
    if not any(message["role"] == "system" for message in prompt):
        prompt = context.system_prefix() + prompt
    context.check_prompt(prompt, column)
    context.check_order(prompt, column)
    return prompt


def _completion(context: RowContext, prompt: list[Message], raw: Any, column: str) -> list[Message]:
    completion = context.messages(raw, column)
    context.check_completion(completion, column)
    context.check_order(prompt + completion, column, offset=len(prompt))
    return completion


def _preference(context: RowContext) -> Parsed:
    """``prompt`` + ``chosen`` + ``rejected``: message lists (conversational) or strings (plain)."""
    raw_prompt, raw_chosen, raw_rejected = context.require("prompt", "chosen", "rejected")
    if isinstance(raw_prompt, str):
        check_pair_types(context, raw_prompt, {"chosen": raw_chosen, "rejected": raw_rejected})
        for column, value in (("chosen", raw_chosen), ("rejected", raw_rejected)):
            context.check_text_completion(context.text(value, column), column)
        return Parsed(raw_prompt, raw_chosen, raw_rejected)
    if not isinstance(raw_prompt, list):
        raise context.error(
            f"type mismatch: prompt is a {kind(raw_prompt)} but the conversational format needs a list of "
            "messages (plain-string rows need prompt, chosen and rejected all strings)",
            "prompt",
        )
    check_pair_types(context, raw_prompt, {"chosen": raw_chosen, "rejected": raw_rejected})
    prompt = _conversational_prompt(context, raw_prompt)
    chosen = _completion(context, prompt, raw_chosen, "chosen")
    rejected = _completion(context, prompt, raw_rejected, "rejected")
    return Parsed(prompt, chosen, rejected, tools=context.tools())


def _plain(context: RowContext) -> Parsed:
    prompt = context.require("prompt")[0]
    if not isinstance(prompt, str):
        raise context.error(
            f"type mismatch: prompt is a {kind(prompt)} but the plain format needs strings", "prompt"
        )
    return _preference(context)


def _conversational(context: RowContext) -> Parsed:
    prompt = context.require("prompt")[0]
    if not isinstance(prompt, list):
        raise context.error(
            f"type mismatch: prompt is a {kind(prompt)} but the conversational format needs a list of messages "
            "(plain-string rows need prompt, chosen and rejected all strings)",
            "prompt",
        )
    return _preference(context)


def common_text_prefix(chosen: str, rejected: str) -> int:
    """Where TRL's ``extract_prompt`` splits two strings: their longest common prefix, moved back one when the
    character before the split is a space (the space then starts both completions)."""
    split = 0
    while split < min(len(chosen), len(rejected)) and chosen[split] == rejected[split]:
        split += 1
    if 0 < split < min(len(chosen), len(rejected)) and chosen[split - 1] == " ":
        split -= 1
    return split


def _implicit_prompt(context: RowContext) -> Parsed:
    """``chosen`` + ``rejected`` holding the prompt too: full conversations (the prompt is their longest common
    run of messages) or strings (their longest common prefix, split as TRL's ``extract_prompt`` does)."""
    raw_chosen, raw_rejected = context.require("chosen", "rejected")
    if isinstance(raw_chosen, str) or isinstance(raw_rejected, str):
        chosen_text = context.text(raw_chosen, "chosen")
        rejected_text = context.text(raw_rejected, "rejected")
        if chosen_text == rejected_text:
            # Identical: counted and dropped, not an error.
            return Parsed(chosen_text, chosen_text, rejected_text)
        split = common_text_prefix(chosen_text, rejected_text)
        if split == 0:
            raise context.error(
                "chosen and rejected share no prefix, so there is no prompt; give a 'prompt' column", "chosen"
            )
        for column, text in (("chosen", chosen_text), ("rejected", rejected_text)):
            if not text[split:].strip():
                raise context.error(
                    f"empty completion: {column} is the shared prompt with nothing after it", column
                )
        return Parsed(chosen_text[:split], chosen_text[split:], rejected_text[split:])
    prompt, chosen, rejected = split_conversations(context, raw_chosen, raw_rejected, "chosen", "rejected")
    return Parsed(prompt, chosen, rejected, tools=context.tools())


def split_conversations(
    context: RowContext, raw_chosen: Any, raw_rejected: Any, chosen_column: str, rejected_column: str
) -> tuple[list[Message], list[Message], list[Message]]:
    """Two full conversations (TRL's message roles) -> their shared prompt and the two completions."""
    chosen = context.with_system(context.messages(raw_chosen, chosen_column))
    rejected = context.with_system(context.messages(raw_rejected, rejected_column))
    return split_pair(context, chosen, rejected, chosen_column, rejected_column)


def split_pair(
    context: RowContext,
    chosen: list[Message],
    rejected: list[Message],
    chosen_column: str,
    rejected_column: str,
) -> tuple[list[Message], list[Message], list[Message]]:
    """Two full conversations -> their shared prompt (their longest common run of messages, which must end
    with a user or tool-output turn) and the two completions."""
    for column, conversation in ((chosen_column, chosen), (rejected_column, rejected)):
        if not conversation:
            raise context.error("empty completion: no messages", column)
        context.check_order(conversation, column)
    if chosen == rejected:
        # Keep identical pairs convertible so they are counted as dropped rather than fail.
        assistant_turns = [i for i, message in enumerate(chosen) if message["role"] == "assistant"]
        split = assistant_turns[-1] if assistant_turns else len(chosen)
        return chosen[:split], chosen[split:], rejected[split:]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    prompt = chosen[:shared]
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        last = "no messages" if not prompt else f"a {prompt[-1]['role']} turn"
        raise context.error(
            f"the common prefix of {chosen_column} and {rejected_column} (the implicit prompt, {shared} messages) "
            f"ends with {last}; it must end with a user turn",
            chosen_column,
        )
    for column, conversation in ((chosen_column, chosen), (rejected_column, rejected)):
        context.check_completion(conversation[shared:], column)
    return prompt, chosen[shared:], rejected[shared:]


def prompt_completion(
    context: RowContext, prompt: Any, completion: Any
) -> tuple[list[Message] | str, list[Message] | str]:
    """A prompt and one completion, both strings or both message lists (sft and kto rows)."""
    check_pair_types(context, prompt, {"completion": completion})
    if isinstance(prompt, str):
        context.check_text_completion(context.text(completion, "completion"), "completion")
        return prompt, completion
    prompt_messages = _conversational_prompt(context, prompt)
    return prompt_messages, _completion(context, prompt_messages, completion, "completion")


def _unpaired(context: RowContext) -> Parsed:
    """``prompt`` + ``completion`` + ``label`` (KTO)."""
    prompt, completion = context.require("prompt", "completion")
    context.require("label")
    label = context.label("label")
    prompt, completion = prompt_completion(context, prompt, completion)
    return Parsed(prompt, completion, label=label, tools=context.tools())


def _prompt_completion(context: RowContext) -> Parsed:
    """``prompt`` + ``completion`` (SFT); ``messages`` rows are read by the ``messages`` layout."""
    if context.has("messages") and not context.has("completion"):
        from rlhf_lab.data.formats.conversation import read_conversation

        parsed = read_conversation(context)
        if parsed.chosen is None:
            raise context.error("the conversation must end with an assistant turn to train on", "messages")
        return parsed
    prompt, completion = context.require("prompt", "completion")
    prompt, completion = prompt_completion(context, prompt, completion)
    return Parsed(prompt, completion, tools=context.tools())


def _language_modeling(context: RowContext) -> Parsed:
    """``text`` (TRL's standard language modeling): every token is trained on."""
    text = context.text(context.require("text")[0], "text")
    context.check_text_completion(text, "text")
    return Parsed("", text, empty_prompt=True)


def _prompt_only(context: RowContext) -> Parsed:
    (raw,) = context.require("prompt")
    if isinstance(raw, str):
        if not raw.strip():
            raise context.error("empty prompt", "prompt")
        return Parsed(raw)
    return Parsed(_conversational_prompt(context, raw), tools=context.tools())


def _stepwise(context: RowContext) -> Parsed:
    raise context.error(
        "this is TRL's stepwise-supervision layout (prompt, completions, labels: process reward models), "
        "which no rlhf_lab objective trains on",
        "completions",
    )


def _has(*columns: str):
    return lambda names, row: set(columns) <= names


def _all_strings(row: Mapping[str, Any], *columns: str) -> bool:
    return all(isinstance(row.get(column), str) for column in columns)


PREFERENCE = ("prompt", "chosen", "rejected", "system", "tools")
register(
    Layout(
        "plain",
        "prompt + chosen + rejected, strings",
        "TRL: preference, explicit prompt, standard",
        PREFERENCE,
        lambda names, row: (
            {"prompt", "chosen", "rejected"} <= names and _all_strings(row, "prompt", "chosen", "rejected")
        ),
        _plain,
        priority=10,
    )
)
register(
    Layout(
        "conversational",
        "prompt + chosen + rejected, messages",
        "TRL: preference, explicit prompt, conversational",
        PREFERENCE,
        _has("prompt", "chosen", "rejected"),
        _conversational,
        priority=11,
    )
)
register(
    Layout(
        "implicit_prompt",
        "chosen + rejected",
        "TRL: preference, implicit prompt (standard or conversational)",
        ("chosen", "rejected", "system", "tools"),
        _has("chosen", "rejected"),
        _implicit_prompt,
        priority=50,
    )
)
register(
    Layout(
        "stepwise",
        "prompt + completions + labels",
        "TRL: stepwise supervision (not trainable here)",
        ("prompt", "completions", "labels"),
        _has("prompt", "completions", "labels"),
        _stepwise,
        priority=70,
    )
)
register(
    Layout(
        "kto",
        "prompt + completion + label",
        "TRL: unpaired preference",
        ("prompt", "completion", "label", "system", "tools"),
        _has("prompt", "completion", "label"),
        _unpaired,
        priority=71,
    )
)
register(
    Layout(
        "sft",
        "prompt + completion",
        "TRL: prompt-completion",
        ("prompt", "completion", "system", "tools"),
        _has("prompt", "completion"),
        _prompt_completion,
        priority=72,
    )
)
register(
    Layout(
        "text",
        "text",
        "TRL: language modeling, standard",
        ("text",),
        _has("text"),
        _language_modeling,
        priority=90,
    )
)
register(
    Layout(
        "prompt_only",
        "prompt",
        "TRL: prompt-only",
        ("prompt", "system", "tools"),
        _has("prompt"),
        _prompt_only,
        priority=95,
    )
)
