"""Choosing from N scored completions of a prompt: the best one (SFT data), a preference pair, the summary.

Rejection sampling keeps, per prompt, the completion the rewards score highest (RAFT, Dong et al., 2023;
Llama 2's rejection-sampling fine-tuning, Touvron et al., 2023) and pairs it against a worse one for
preference training (best vs worst as in open-instruct's rejection sampling; best vs a random lower one as in
iterative DPO, Xiong et al., 2024). Ties are broken by the lowest sample index, so the choice depends on the
rewards alone. A prompt whose N rewards all agree gives no pair (a preference between equals teaches
nothing), and is counted (``ties``). A blank completion (EOS at once) is never chosen: no training data may
hold an empty completion. A pair whose two completions read the same (different tokens,
one text: the data layer would drop it), counted as ``identical_pairs``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from rlhf_lab.errors import check_choice

#: How the rejected completion of a pair is chosen (``pairs=``).
PAIR_MODES = ("best_vs_worst", "best_vs_random")


@dataclass(frozen=True)
class Choice:
    """The chosen samples of one prompt.

    Attributes:
        best: The index of the best completion (the lowest index among equal best rewards); None when no
            completion may be chosen (every one blank).
        rejected: The index of the pair's rejected completion; None when the rewards of the completions that
            may be chosen all agree (a tie), or there is no best.
    """

    best: int | None
    rejected: int | None


def choose(rewards: list[float], mode: str, seed: int, blank: list[bool] | None = None) -> Choice:
    """The best completion and the pair's rejected one.

    Args:
        rewards: One reward per completion (finite).
        mode: ``best_vs_worst`` (the lowest reward, lowest index among equals) or ``best_vs_random`` (drawn
            uniformly, with ``seed``, from the completions rewarded strictly below the best).
        seed: Seeds the ``best_vs_random`` draw.
        blank: Which completions are blank (EOS at once): never chosen, as no training data may hold them
            (the data layer refuses an empty completion). None: none is.
    """
    check_choice("pairs", mode, PAIR_MODES)
    candidates = [j for j in range(len(rewards)) if blank is None or not blank[j]]
    if not candidates:
        return Choice(None, None)
    top = max(rewards[j] for j in candidates)
    best = next(j for j in candidates if rewards[j] == top)
    lower = [j for j in candidates if rewards[j] < top]
    if not lower:
        return Choice(best, None)
    if mode == "best_vs_worst":
        bottom = min(rewards[j] for j in lower)
        return Choice(best, next(j for j in lower if rewards[j] == bottom))
    return Choice(best, lower[random.Random(seed).randrange(len(lower))])


def sft_row(record: dict[str, Any]) -> dict[str, Any]:
    """TRL's prompt-completion row of a record's best completion (strings, or message lists)."""
    return {"prompt": record["prompt"], "completion": record["completions"][record["best"]]}


def pair_row(record: dict[str, Any]) -> dict[str, Any]:
    """TRL's preference row (explicit prompt) of a record's pair."""
    completions = record["completions"]
    return {
        "prompt": record["prompt"],
        "chosen": completions[record["best"]],
        "rejected": completions[record["rejected"]],
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: list[float]) -> float:
    """The sample standard deviation (n - 1), as ``torch.std``; NaN under two values."""
    if len(values) < 2:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def summarize(records: list[dict[str, Any]], num_samples: int) -> dict[str, Any]:
    """Counts and rewards of a sampling run's records (one per prompt).

    ``reward/first_mean`` is the mean reward of each prompt's first sample (what N=1 gives),
    ``reward/best_mean`` of its chosen best (best-of-N: what ``sft.jsonl`` holds before ``min_reward``),
    both over the prompts with a best (scored, some completion not blank); ``reward/mean`` and
    ``reward/std`` are over every scored completion. ``ties`` are the prompts whose choosable completions'
    rewards all agree; ``frac_reward_zero_std`` their share of the prompts with a best (TRL's name).
    """
    scored = [record for record in records if record["rewards"] is not None]
    chosen = [record for record in scored if record["best"] is not None]
    every = [reward for record in scored for reward in record["rewards"]]
    truncated = [flag for record in records for flag in record["truncated"]]

    def choosable(record: dict[str, Any]) -> set[float]:
        return {r for r, blank in zip(record["rewards"], record["blank"], strict=True) if not blank}

    ties = sum(len(choosable(record)) == 1 for record in chosen)
    pairs = sum(record["rejected"] is not None for record in chosen)
    return {
        "prompts": len(records),
        "num_samples": num_samples,
        "completions": len(truncated),
        "sft_rows": sum(record["keep"] for record in chosen),
        "pairs": pairs,
        "ties": ties,
        "identical_pairs": len(chosen) - ties - pairs,
        "below_min_reward": sum(not record["keep"] for record in chosen),
        "reward_errors": len(records) - len(scored),
        "all_blank": len(scored) - len(chosen),
        "blank_completions": sum(flag for record in records for flag in record["blank"]),
        "frac_reward_zero_std": ties / len(chosen) if chosen else math.nan,
        "reward/first_mean": _mean([record["rewards"][0] for record in chosen]),
        "reward/best_mean": _mean([record["rewards"][record["best"]] for record in chosen]),
        "reward/worst_mean": _mean([min(choosable(record)) for record in chosen]),
        "reward/mean": _mean(every),
        "reward/std": _std(every),
        "completions/clipped_ratio": _mean([float(flag) for flag in truncated]),
    }
