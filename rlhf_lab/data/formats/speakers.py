"""How a layout's conversations name their speakers and texts: OpenAI / TRL roles, every peer's names, and
LLaMA-Factory's ``tags`` (``data.tags``) that rename them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
