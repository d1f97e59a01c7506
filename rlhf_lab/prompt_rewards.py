"""Reward functions that read the prompt (TRL's signature; name them in ``algo.reward_functions``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rlhf_lab.rewards import completion_text

#: The letter list of `allowed_letters`' prompts: "Use only these letters: e s y z."
LETTERS_IN_PROMPT = re.compile(r"letters:\s*((?:[a-z]\s+)*[a-z])\b")


def _prompt_text(prompt: Any) -> str:
    """A prompt's text: the string, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def allowed_letters(
    prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Any], **columns: Any
) -> list[float | None]:
    """The share of the completion's letters that the prompt allows ("Use only these letters: e s y z."):
    a reward that needs the prompt. 0.0 for a completion without letters; None for a prompt without a list."""
    scores: list[float | None] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        found = LETTERS_IN_PROMPT.search(_prompt_text(prompt))
        if found is None:
            scores.append(None)
            continue
        allowed = set(found.group(1).split())
        letters = [c for c in completion_text(completion).lower() if c.isalpha()]
        scores.append(sum(c in allowed for c in letters) / len(letters) if letters else 0.0)
    return scores
