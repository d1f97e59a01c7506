"""Reward functions (TRL's signature) and an advantage estimator a user would bring, named by import path in tests."""

from __future__ import annotations

from typing import Any

import torch

from rlhf_lab.losses.advantages import Advantages


def even_tokens(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """The share of the completion's tokens with an even id: a dense signal even an untrained model varies on."""
    return [sum(1 for token in ids if token % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


#: What `record_call` was called with, one dict per call (tests inspect it).
CALLS: list[dict[str, Any]] = []


def record_call(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[None]:
    """Records its arguments and applies to no row (None: left out of every row's reward)."""
    CALLS.append(
        {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **columns}
    )
    return [None] * len(completions)


def mean_baseline(scores: torch.Tensor, num_generations: int) -> Advantages:
    """A user's advantage estimator, named by import path: the reward minus its group's mean."""
    grouped = scores.view(-1, num_generations)
    return Advantages((grouped - grouped.mean(1, keepdim=True)).reshape(-1))
