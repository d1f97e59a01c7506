"""Reward functions (TRL's signature) and an advantage estimator a user would bring, named by import path in tests;
and reward functions that fail in each way a user's can (tests/test_reward_failures.py)."""

from __future__ import annotations

import math
import os
import time
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


# --- reward functions that fail -----------------------------------------------------------------------------


def _text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else " ".join(message["content"] for message in prompt)


def raises(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """Raises on every call."""
    raise ValueError("the grader is down")


def too_few(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """One value fewer than completions."""
    return [0.0] * (len(completions) - 1)


def not_a_list(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> int:
    """An int instead of a list."""
    return 1


def strings(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[str]:
    """Strings instead of numbers."""
    return ["1.0"] * len(completions)


def all_none(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[None]:
    """Applies to no completion, ever."""
    return [None] * len(completions)


def nan_rewards(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """NaN for every completion."""
    return [math.nan] * len(completions)


def inf_on_last(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """0.0, and inf for the last completion."""
    return [0.0] * (len(completions) - 1) + [math.inf]


def slow(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """Takes 2 s."""
    time.sleep(2.0)
    return [0.0] * len(completions)


def raises_on_cat(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """`even_tokens`, but raises when any of its prompts mentions a cat."""
    if any("cat" in _text(prompt) for prompt in prompts):
        raise KeyError("cat")
    return even_tokens(prompts, completions, completion_ids)


def nan_on_first_prompt(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """`even_tokens`, but NaN for the completions of the call's first prompt: one prompt per rollout fails."""
    scores = even_tokens(prompts, completions, completion_ids)
    return [
        math.nan if prompt == prompts[0] else score for prompt, score in zip(prompts, scores, strict=True)
    ]


class RaisesFromCall:
    """`even_tokens` until call ``call`` (1-based), from which on it raises: a run that fails mid-training.

    Args:
        call: The first call that raises.
    """

    def __init__(self, call: int = 3) -> None:
        self.call = call
        self.calls = 0
        self.__name__ = "raises_from_call"

    def __call__(
        self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
    ) -> list[float]:
        self.calls += 1
        if self.calls >= self.call:
            raise RuntimeError("the grader went down")
        return even_tokens(prompts, completions, completion_ids)


def raises_on_process_1(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """`even_tokens` on process 0, raises on process 1 (``LOCAL_RANK``): ranks must agree to stop."""
    if os.environ.get("LOCAL_RANK") == "1":
        raise ValueError("only process 1 fails")
    return even_tokens(prompts, completions, completion_ids)


def nan_on_process_1(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """`even_tokens` on process 0, NaN for every completion on process 1: its every prompt is dropped."""
    scores = even_tokens(prompts, completions, completion_ids)
    return [math.nan] * len(scores) if os.environ.get("LOCAL_RANK") == "1" else scores


# --- rewards that script which groups agree (tests/test_dynamic_sampling.py) -------------------------------

#: One entry per call of `scripted_groups`, consumed in order: True where that call's group is constant.
SCRIPT: list[list[bool]] = []


def scripted_groups(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """0.0 for every completion of a group the call's `SCRIPT` entry marks constant, else 0, 1, 0, 1... by
    row (the groups differ); no entry left: every group differs."""
    constant = SCRIPT.pop(0) if SCRIPT else []
    size = len(completions) // max(len(constant), 1)
    return [0.0 if constant and constant[row // size] else float(row % 2) for row in range(len(completions))]


def constant(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """1.0 for every completion: every group agrees."""
    return [1.0] * len(completions)


def even_tokens_on_odd_prompts(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **columns: Any
) -> list[float]:
    """`even_tokens` on prompts whose text has an odd length, 0.0 on the rest: about half the groups agree
    whatever the policy samples, so dynamic sampling draws extra rounds (tests/test_ddp.py,
    tests/test_kill_resume.py). With ``RLHF_LAB_REWARD_CALLS`` set, each call appends a line
    ``<LOCAL_RANK> <completions>`` to that file: the rounds each process scored."""
    if log := os.environ.get("RLHF_LAB_REWARD_CALLS"):
        with open(log, "a") as file:
            file.write(f"{os.environ.get('LOCAL_RANK', '0')} {len(completions)}\n")
    scores = even_tokens(prompts, completions, completion_ids)
    return [score if len(_text(prompt)) % 2 else 0.0 for prompt, score in zip(prompts, scores, strict=True)]
