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

A function that fails (raises, returns the wrong number of values, a value that is not a number, NaN or
inf, ``None`` for every completion of a batch, or takes longer than ``algo.reward_timeout``) is reported
as a `RewardFailure` naming it, what went wrong and the completions it went wrong on (`reward_values`);
the online objective then stops the run (`RewardError`) or drops those prompts (``algo.reward_errors``).
"""

from __future__ import annotations

import math
import numbers
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_lab.errors import ConfigError, RunStopped, check_choice, check_range

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


#: What ``algo.reward_errors`` may say: stop the run, or drop the offending prompts and train on.
REWARD_ERRORS = ("stop", "skip")


class RewardError(RunStopped):
    """A reward function or model failed under ``algo.reward_errors=stop``: the one-line message names it, the
    step and the first offending prompt (the run's last state is kept in ``checkpoints/last.ckpt``)."""


class RewardTimeout(Exception):
    """A reward function did not return within ``algo.reward_timeout`` seconds."""


def check_reward_settings(reward_errors: str, reward_timeout: float | None) -> None:
    """``algo.reward_errors`` is a known choice and ``algo.reward_timeout`` a positive number of seconds (or
    None: no limit)."""
    check_choice("algo.reward_errors", reward_errors, REWARD_ERRORS)
    if reward_timeout is not None:
        check_range("algo.reward_timeout", reward_timeout, 0.0, low_inclusive=False)


@dataclass
class RewardFailure:
    """A reward that failed on some completions of a batch.

    Attributes:
        reward: What failed, as messages name it (``reward function pkg.module.fn``).
        problem: What went wrong (``raised ValueError: ...``, ``returned 3 values for 4 completions``).
        rows: The completions it failed on, in order (the first names the prompt in messages).
    """

    reward: str
    problem: str
    rows: list[int]


def reward_path(function: Any) -> str:
    """The import path of a reward function (``pkg.module.fn``), or of a callable's class with its name
    (``rlhf_lab.rewards.RegexMatch (think_format)``)."""
    if hasattr(function, "__qualname__") and hasattr(function, "__module__"):
        return f"{function.__module__}.{function.__qualname__}"
    kind = type(function)
    path = f"{kind.__module__}.{kind.__qualname__}"
    name = reward_name(function)
    return path if name == kind.__name__ else f"{path} ({name})"


def call_with_timeout(call: Callable[[], Any], timeout: float | None) -> Any:
    """``call()``, or `RewardTimeout` once ``timeout`` seconds have passed (None: wait for ever).

    With a timeout the call runs in a daemon thread and the caller stops waiting for it: Python cannot stop
    a thread, so a function that never returns keeps its thread (and whatever it holds) until the process
    ends. The main thread keeps training, which is what a signal-based timeout could not promise.
    """
    if timeout is None:
        return call()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the caller, which reports it
            outcome["error"] = error

    thread = threading.Thread(target=target, name="rlhf_lab-reward-function", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RewardTimeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _raised(error: BaseException) -> str:
    message = _one_line(str(error))
    return f"raised {type(error).__name__}" + (f": {message}" if message else "")


def _checked_call(
    function: RewardFunction,
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
    timeout: float | None,
) -> tuple[list[Any] | None, str, bool]:
    """The function's values for these completions, or None, what went wrong with the call as a whole and
    whether a retry on fewer completions may tell more (not after a timeout: each could take as long)."""

    def call() -> Any:
        return function(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)

    try:
        values = call_with_timeout(call, timeout)
    except RewardTimeout:
        return (
            None,
            f"did not return within algo.reward_timeout={timeout:g} s (its thread is left running)",
            False,
        )
    except Exception as error:
        return None, _raised(error), True
    if not isinstance(values, (list, tuple)):
        return None, f"returned {type(values).__name__}, not a list of {len(completions)} rewards", True
    if len(values) != len(completions):
        return None, f"returned {len(values)} values for {len(completions)} completions", True
    return list(values), "", True


#: Rows of a batch and a call's values for them.
Chunk = tuple[range, list[Any]]


def _calls(
    function: RewardFunction,
    batch: tuple[list[Any], list[Any], list[list[int]], dict[str, list[Any]]],
    timeout: float | None,
    group_size: int | None,
) -> tuple[list[Chunk], dict[str, list[int]]]:
    """The function's values by rows, and the rows of each way its calls failed (`reward_values`)."""
    prompts, completions, ids, columns = batch
    count = len(completions)
    values, problem, retry = _checked_call(function, prompts, completions, ids, columns, timeout)
    if values is not None:
        return [(range(count), values)], {}
    everything = {problem: list(range(count))}
    if not (retry and group_size and group_size < count):
        return [], everything
    chunks: list[Chunk] = []
    failed: dict[str, list[int]] = {}
    for start in range(0, count, group_size):
        rows = range(start, min(start + group_size, count))
        part = slice(rows.start, rows.stop)
        group = {name: column[part] for name, column in columns.items()}
        group_values, group_problem, _ = _checked_call(
            function, prompts[part], completions[part], ids[part], group, timeout
        )
        if group_values is None:
            failed.setdefault(group_problem, []).extend(rows)
        else:
            chunks.append((rows, group_values))
    # Every group fails too (the call's own problem says it best), or none does (the failure belongs to the
    # batch as a whole): every completion failed.
    return (chunks, failed) if chunks and failed else ([], everything)


def _checked_values(chunks: list[Chunk], out: torch.Tensor) -> dict[str, list[int]]:
    """Write the numbers of ``chunks`` into ``out``; returns the rows of each kind of value that is not one."""
    bad_type: dict[int, Any] = {}
    non_finite: dict[int, float] = {}
    for rows, chunk in chunks:
        for row, value in zip(rows, chunk, strict=True):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                bad_type[row] = value
            elif not math.isfinite(float(value)):
                non_finite[row] = float(value)
            else:
                out[row] = float(value)
    failed = {}
    if bad_type:
        first = _one_line(repr(next(iter(bad_type.values()))), 60)
        failed[f"returned {first} for a completion; a reward is a number (or None)"] = sorted(bad_type)
    if non_finite:
        first = str(next(iter(non_finite.values())))
        failed[f"returned {first} for a completion; a reward must be finite (None: not applicable)"] = sorted(
            non_finite
        )
    return failed


def reward_values(
    function: RewardFunction,
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
    *,
    timeout: float | None = None,
    group_size: int | None = None,
) -> tuple[torch.Tensor, list[RewardFailure]]:
    """``[N]`` rewards of one function (None -> NaN: not applicable), and how it failed, if it did.

    A call that fails as a whole (raises, returns no list of N values) is retried one prompt's group of
    ``group_size`` completions at a time, so the failure is pinned to the prompts it fails on and the other
    groups keep their rewards; a timeout is not retried (each group could take as long again). A value that
    is not a number, or not finite, fails its completion; ``None`` for every completion of the batch fails
    them all (no reward would reach any of them: the batch would train on made-up zeros).

    Args:
        timeout: Seconds one call may take (None: no limit; see `call_with_timeout`).
        group_size: Completions per prompt (consecutive rows); None: the batch is one group.
    """
    count = len(completions)
    out = torch.full((count,), math.nan, dtype=torch.float32)
    chunks, failed = _calls(function, (prompts, completions, completion_ids, columns), timeout, group_size)
    failed.update(_checked_values(chunks, out))
    if count and not failed and all(value is None for _, chunk in chunks for value in chunk):
        failed["returned None for every completion of the batch (no reward would reach any of them)"] = list(
            range(count)
        )
    what = f"reward function {reward_path(function)}"
    return out, [RewardFailure(what, problem, rows) for problem, rows in failed.items()]


def call_reward_function(
    function: RewardFunction,
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
    timeout: float | None = None,
) -> torch.Tensor:
    """``[N]`` rewards of one function (None -> NaN); a ValueError naming the first failure (`reward_values`)."""
    values, failures = reward_values(function, prompts, completions, completion_ids, columns, timeout=timeout)
    if failures:
        raise ValueError(f"{failures[0].reward} {failures[0].problem}")
    return values


def prompt_text(prompt: Any, limit: int = 60) -> str:
    """A prompt as messages quote it: its text (a conversation's last message), on one line, shortened."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        content = prompt[-1].get("content", "")
        if isinstance(content, list):  # multimodal parts: the text parts
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        prompt = content
    return repr(_one_line(str(prompt), limit))


def failure_message(failure: RewardFailure, prompts: Sequence[Any], where: str) -> str:
    """One line: where in the run, what failed and how, and the first offending prompt."""
    prompt = prompt_text(prompts[failure.rows[0]])
    rows = f"{len(failure.rows)} of {len(prompts)} completions"
    return f"{where}, {failure.reward} {failure.problem}; first offending prompt {prompt} ({rows})"


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
