"""LLaMA-Factory's alpaca layout (also ms-swift's ``instruction``/``input``/``output``).

The user turn is ``instruction`` and ``input`` joined by one newline (an empty one is left out), after the
``system`` column and the ``history`` (``[[query, response], ...]``) turns. Then ``output`` makes it SFT data,
``output`` with a boolean ``kto_tag`` (or ``label``) an unpaired KTO row, ``chosen`` and ``rejected`` (strings)
a pair (LLaMA-Factory's ``ranking``), and no answer at all a prompt for online RL.
"""

from __future__ import annotations

from rlhf_lab.data.formats.conversation import LABEL_COLUMNS
from rlhf_lab.data.formats.example import Message
from rlhf_lab.data.formats.registry import Layout, Parsed, register
from rlhf_lab.data.formats.validate import RowContext

#: Errors name the columns the texts came from (the user turn: instruction and input).
ORIGIN: dict[str, tuple[str, int | None]] = {
    "prompt": ("instruction", None),
    "chosen": ("chosen", None),
    "rejected": ("rejected", None),
    "completion": ("output", None),
}


def assistant_turn(context: RowContext, column: str) -> list[Message]:
    """A string column as a one-message completion."""
    text = context.text(context.get(column), column)
    context.check_text_completion(text, column)
    return [{"role": "assistant", "content": text}]


def _alpaca(context: RowContext) -> Parsed:
    instruction = context.text(context.require("instruction")[0], "instruction")
    extra = context.optional_text("input")
    # LLaMA-Factory (v0) and ms-swift join instruction and input with one newline, leaving out an empty one.
    content = "\n".join(part for part in (instruction, extra) if part)
    prompt = [*context.system_prefix(), *context.history(), {"role": "user", "content": content}]
    context.check_order(prompt, "instruction")
    label_column = context.one_of(*LABEL_COLUMNS)
    if context.has("chosen") or context.has("rejected"):
        if label_column is not None or context.has("output"):
            other = label_column or "output"
            raise context.error(f"the row has chosen/rejected (a pair) and {other!r}; give one", other)
        context.require("chosen", "rejected")
        return Parsed(
            prompt, assistant_turn(context, "chosen"), assistant_turn(context, "rejected"), origin=ORIGIN
        )
    if not context.has("output"):
        if label_column is not None:
            raise context.error(f"{label_column!r} labels an 'output', but the row has none", "output")
        return Parsed(prompt, origin=ORIGIN)
    completion = assistant_turn(context, "output")
    label = None if label_column is None else context.label(label_column)
    return Parsed(prompt, completion, label=label, origin=ORIGIN)


register(
    Layout(
        "alpaca",
        "instruction [+ input] + output | chosen + rejected",
        "LLaMA-Factory: alpaca; ms-swift: instruction/input/output",
        ("instruction", "input", "output", "chosen", "rejected", "system", "history", *LABEL_COLUMNS),
        lambda names, row: "instruction" in names,
        _alpaca,
        priority=25,
        aliases={"prompt": "instruction", "query": "input", "response": "output"},
    )
)
