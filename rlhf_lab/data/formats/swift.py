"""ms-swift's query/response layout (older than its ``messages`` layout, which `conversation` reads).

``query`` is the user turn, after the ``system`` column and the ``history`` turns; ``response`` the chosen
answer. ``rejected_response`` (a string or assistant messages) makes a pair, as does ``rejected_images``
alone (the same answer, another image); a boolean ``label`` an unpaired KTO row; no ``response`` a prompt.
"""

from __future__ import annotations

from rlhf_lab.data.formats.alpaca import assistant_turn
from rlhf_lab.data.formats.conversation import completion_turns, read_conversation
from rlhf_lab.data.formats.registry import Layout, Parsed, register
from rlhf_lab.data.formats.validate import RowContext

#: Errors name the columns the texts came from.
ORIGIN: dict[str, tuple[str, int | None]] = {
    "prompt": ("query", None),
    "chosen": ("response", None),
    "completion": ("response", None),
    "rejected": ("response", None),
}


def read_query_response(context: RowContext) -> Parsed:
    if context.has("messages") and not context.has("query"):
        return read_conversation(context)  # data.format=swift on ms-swift's messages layout
    query = context.text(context.require("query")[0], "query")
    prompt = [*context.system_prefix(), *context.history(), {"role": "user", "content": query}]
    context.check_order(prompt, "query")
    if not context.has("response"):
        for column in ("rejected_response", "label", "rejected_images"):
            if context.has(column):
                raise context.error(f"{column!r} needs a 'response' to go with", column)
        return Parsed(prompt, tools=context.tools(), origin=ORIGIN)
    chosen = assistant_turn(context, "response")
    tools = context.tools()
    if context.has("rejected_response"):
        if context.has("label"):
            raise context.error(
                "the row has both 'label' (unpaired) and 'rejected_response' (paired)", "label"
            )
        rejected_text = isinstance(context.get("rejected_response"), str)
        rejected = completion_turns(context, "rejected_response", prompt)
        origin = {**ORIGIN, "rejected": ("rejected_response", None if rejected_text else 0)}
        return Parsed(prompt, chosen, rejected, tools=tools, origin=origin)
    if context.has("label"):
        return Parsed(prompt, chosen, label=context.label("label"), tools=tools, origin=ORIGIN)
    if context.has("rejected_images"):
        return Parsed(prompt, chosen, [dict(message) for message in chosen], tools=tools, origin=ORIGIN)
    return Parsed(prompt, chosen, tools=tools, origin=ORIGIN)


register(
    Layout(
        "swift",
        "query [+ response + rejected_response | label]",
        "ms-swift: query/response/history",
        ("query", "response", "rejected_response", "label", "system", "history", "tools"),
        lambda names, row: "query" in names,
        read_query_response,
        priority=30,
    )
)
