"""Rewards for online RL: reward functions named by import path, reward models, and their weighted sum.

A reward function has TRL's signature, so a user's function works unchanged::

    def my_reward(prompts, completions, completion_ids, **columns) -> list[float | None]: ...

``prompts`` are the rows' prompts as data (strings, or message lists for conversational data),
``completions`` the decoded completions (strings, or ``[{"role": "assistant", "content": ...}]`` for
conversational prompts), ``completion_ids`` their token ids (EOS excluded), and ``columns`` the rows' other
columns (e.g. ``answer``), each a list aligned with the completions. ``None`` means "not applicable": that
function is left out of the row's weighted sum and of its mean. ``algo.reward_functions`` names them
(import paths, or ``{_target_: ..., ...}`` mappings for configurable ones such as `RegexMatch`),
``algo.reward_models`` adds sequence classifiers (an ``algo=reward`` export), and ``algo.reward_weights``
weighs them all, functions first.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhf_lab.errors import ConfigError

RewardFunction = Callable[..., list[float | None]]


def completion_text(completion: Any) -> str:
    """The text of a completion (a string, or the assistant messages of a conversational one)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


def _normalised(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .!?")


#: The columns `exact_match` compares against, in order of preference.
ANSWER_COLUMNS = ("answer", "solution")


def exact_match(
    prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Any], **columns: Any
) -> list[float | None]:
    """1.0 where the completion equals the row's ``answer`` (or ``solution``, ms-swift's and TRL's name) (case,
    spacing and end punctuation aside), else 0.0; None for rows without one."""
    answers = next((columns[name] for name in ANSWER_COLUMNS if columns.get(name) is not None), None)
    if answers is None:
        raise ConfigError(
            "rlhf_lab.rewards.exact_match needs an 'answer' (or 'solution') column in the data (e.g. "
            "data=synthetic_rl)"
        )
    return [
        None
        if answer is None
        else float(_normalised(completion_text(completion)) == _normalised(str(answer)))
        for completion, answer in zip(completions, answers, strict=True)
    ]


class RegexMatch:
    """1.0 where the whole completion matches ``pattern`` (``re.fullmatch``, DOTALL), else 0.0.

    Args:
        pattern: The regular expression.
        name: The name its metrics carry (``rewards/<name>/mean``).
    """

    def __init__(self, pattern: str, name: str = "regex_match") -> None:
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as error:
            raise ConfigError(f"reward pattern {pattern!r} is not a regular expression: {error}") from None
        self.__name__ = name

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any],
        **columns: Any,
    ) -> list[float | None]:
        return [float(self.pattern.fullmatch(completion_text(c).strip()) is not None) for c in completions]


#: DeepSeek-R1's format reward: reasoning in ``<think>`` tags, then the answer in ``<answer>`` tags.
think_format = RegexMatch(r"<think>.*?</think>\s*<answer>.*?</answer>", name="think_format")


class LengthTarget:
    """``max(0, 1 - |length - target| / target)``: 1.0 at ``target`` tokens, falling linearly to 0 at 0 and
    ``2 * target`` tokens.

    Args:
        target: The wanted completion length in tokens (EOS excluded).
        name: The name its metrics carry.
    """

    def __init__(self, target: int = 16, name: str = "length_target") -> None:
        if target < 1:
            raise ConfigError(f"LengthTarget target={target} must be at least 1 token")
        self.target = target
        self.__name__ = name

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any],
        **columns: Any,
    ) -> list[float | None]:
        return [max(0.0, 1.0 - abs(len(ids) - self.target) / self.target) for ids in completion_ids]


length_target = LengthTarget()


def reward_name(function: Any) -> str:
    """The name a reward's metrics carry: its ``__name__`` (a function's, or one a callable sets)."""
    return str(getattr(function, "__name__", type(function).__name__))


def resolve_reward_functions(entries: Sequence[Any]) -> list[RewardFunction]:
    """Import paths (``pkg.module.fn``), ``{_target_: ...}`` mappings, or callables Hydra already built from
    such a mapping (``instantiate`` builds nested targets of ``cfg.algo``) -> callables.

    Raises:
        ConfigError: An entry cannot be imported, is not callable, or two rewards share a name.
    """
    from hydra.utils import get_object, instantiate

    functions = []
    for position, entry in enumerate(entries):
        key = f"algo.reward_functions[{position}]"
        try:
            if isinstance(entry, str):
                function = get_object(entry)
            elif callable(entry):
                function = entry
            else:
                function = instantiate(entry)
        except Exception as error:
            raise ConfigError(f"{key}={entry!r} cannot be loaded: {error}") from None
        if not callable(function):
            raise ConfigError(
                f"{key}={entry!r} is not callable (a reward function takes prompts, completions...)"
            )
        functions.append(function)
    names = [reward_name(function) for function in functions]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"algo.reward_functions: two rewards are named {duplicates[0]!r}; give them a name")
    return functions


def call_reward_function(
    function: RewardFunction,
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
) -> torch.Tensor:
    """``[N]`` rewards of one function (None -> NaN), checked for length and type."""
    values = function(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
    name = reward_name(function)
    if not isinstance(values, (list, tuple)) or len(values) != len(completions):
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"reward function {name} returned {got} values for {len(completions)} completions")
    out = []
    for value in values:
        if value is None:
            out.append(math.nan)
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"reward function {name} returned {value!r}; rewards are floats (or None)")
        else:
            out.append(float(value))
    return torch.tensor(out, dtype=torch.float32)


def combine_rewards(per_reward: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[N, R]`` rewards (NaN: not applicable) -> ``[N]`` weighted sums over the applicable ones (as TRL's
    ``nansum``: a row no reward applies to gets 0)."""
    return torch.nansum(per_reward * weights.to(per_reward), dim=1)


def check_reward_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """One weight per reward (functions, then reward models); None: all 1."""
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ConfigError(
            f"algo.reward_weights has {len(weights)} weights for {count} rewards (algo.reward_functions then "
            "algo.reward_models); give one weight per reward, or null for all 1"
        )
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"algo.reward_weights: {weight!r} is not a finite number")
    return [float(weight) for weight in weights]
