"""DAPO's dynamic sampling (Yu et al., 2025, Eq. 11; verl's ``algorithm.filter_groups``): keep only the
groups (a prompt's ``G`` completions) whose rewards differ, ``0 < |{o_i | is_equivalent(a, o_i)}| < G``,
drawing more prompts until the rollout is full again.

A group whose combined rewards are all equal has zero group-relative advantage under GRPO and RLOO: it
costs a forward and backward pass and teaches nothing, and it shrinks the effective batch as the policy
saturates. `fill_rollout` takes the first round (the data loader's prompts), and while some process has
fewer usable groups than prompts in its batch and fewer than ``max_num_gen_batches`` rounds were drawn, it
draws another round (fresh prompts, `replacement_indices`) and keeps the usable groups. Every process runs
the same number of rounds (the decision is taken over all of them), since generation may be a collective
under DDP, FSDP or ZeRO-3; a process that is already full samples and discards.

Departure: verl stops the run when ``max_num_gen_batches`` rounds do not fill the batch; here the
remaining slots are filled with the least-bad groups drawn (`select_groups`): constant groups, whose
advantages are 0 (they add nothing to the gradient but keep their tokens in the loss normaliser, as
without dynamic sampling), then groups a reward failed on (``algo.reward_errors=skip``: out of the loss),
so the rollout keeps ``data.batch_size x num_generations`` rows and the micro-batch split stays valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhf_lab.data.batches import Sequences
from rlhf_lab.rl.rollout import Completions, Rollout

#: A group whose rewards' standard deviation is below this is constant (as ``frac_reward_zero_std``).
ZERO_STD = 1e-6
#: Group quality, best first: rewards differ; all equal (advantage 0); a reward failed (out of the loss).
USABLE, CONSTANT, DROPPED = 0, 1, 2
#: The `Rollout` fields with one column per completion token (padded on the right when rounds are joined).
TOKEN_FIELDS = ("mask", "sampler_logps", "old_logps", "reference_logps", "values", "returns", "token_mask")


def group_quality(rewards: torch.Tensor, kept: torch.Tensor | None, num_generations: int) -> torch.Tensor:
    """``[B]`` each group's quality: `USABLE` (its ``G`` rewards differ), `CONSTANT` or `DROPPED` (a
    reward failed on the prompt: ``kept`` False)."""
    grouped = rewards.detach().float().view(-1, num_generations)
    constant = grouped.std(1) < ZERO_STD
    quality = torch.where(constant, CONSTANT, USABLE)
    if kept is not None:
        dropped = ~kept.to(rewards.device).view(-1, num_generations).all(1)
        quality = torch.where(dropped, DROPPED, quality)
    return quality.cpu()


def select_groups(qualities: Sequence[torch.Tensor], size: int) -> list[tuple[int, int]]:
    """``(round, group)`` of the ``size`` groups a rollout keeps: the best quality first, and within one
    quality in the order drawn (earlier rounds, then earlier positions)."""
    drawn = [
        (int(quality), round_index, group)
        for round_index, qualities_of_round in enumerate(qualities)
        for group, quality in enumerate(qualities_of_round.tolist())
    ]
    return [(round_index, group) for _, round_index, group in sorted(drawn)[:size]]


def replacement_indices(dataset_size: int, count: int, seed: int) -> torch.Tensor:
    """``[count]`` dataset indices of one round's fresh prompts: a permutation of the dataset seeded by
    ``seed`` (distinct while ``count`` <= the dataset; drawn on the CPU so every device draws the same)."""
    generator = torch.Generator().manual_seed(seed)
    repeats = -(-count // dataset_size)
    return torch.cat([torch.randperm(dataset_size, generator=generator) for _ in range(repeats)])[:count]


def take_groups(rollout: Rollout, groups: list[int], num_generations: int) -> Rollout:
    """The rows of ``groups`` (with their texts, which `Rollout.rows` leaves out)."""
    rows = [g * num_generations + j for g in groups for j in range(num_generations)]
    index = torch.tensor(rows, dtype=torch.long, device=rollout.mask.device)
    part = rollout.rows(index)
    if rollout.texts is not None:
        texts = rollout.texts
        part.texts = Completions(
            [texts.prompts[r] for r in rows],
            [texts.completions[r] for r in rows],
            [texts.ids[r] for r in rows],
            {name: [values[r] for r in rows] for name, values in texts.columns.items()},
        )
    return part


def cat_rollouts(parts: list[Rollout], pad_token_id: int) -> Rollout:
    """The rows of ``parts`` as one rollout: prompts left-padded to the widest prompt, completions
    right-padded to the longest (padding is out of the attention and loss masks, as within one batch)."""
    if len(parts) == 1:
        return parts[0]
    prompt_width = max(part.prompt_width for part in parts)
    length = max(int(part.mask.shape[1]) for part in parts)
    values: dict[str, Any] = {
        "sequences": _cat_sequences(parts, prompt_width, length, pad_token_id),
        "prompt_width": prompt_width,
        "texts": _cat_texts([part.texts for part in parts]),
    }
    for name in (
        *TOKEN_FIELDS,
        "rewards",
        "per_reward",
        "truncated",
        "kept",
        "baseline_rewards",
        "advantages",
    ):
        tensors = [getattr(part, name) for part in parts]
        if all(tensor is None for tensor in tensors):
            values[name] = None
            continue
        if any(tensor is None for tensor in tensors):
            raise ValueError(f"cannot join rollouts where only some have {name}")
        if name in TOKEN_FIELDS:
            tensors = [_pad_right(tensor, length) for tensor in tensors]
        values[name] = torch.cat(tensors)
    return Rollout(**values)


def _pad_right(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``[n, l, ...]`` -> ``[n, length, ...]``, zeros (False) after column ``l``."""
    padded = tensor.new_zeros((tensor.shape[0], length, *tensor.shape[2:]))
    padded[:, : tensor.shape[1]] = tensor
    return padded


def _cat_sequences(parts: list[Rollout], prompt_width: int, length: int, pad_token_id: int) -> Sequences:
    blocks: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": [], "completion_mask": []}
    for part in parts:
        sequences, width = part.sequences, part.prompt_width
        if sequences.images is not None:
            raise ValueError("joining rollouts of image prompts is not supported")
        rows, columns = sequences.num_rows, sequences.input_ids.shape[1]
        for name, fill in (("input_ids", pad_token_id), ("attention_mask", 0), ("completion_mask", False)):
            source = getattr(sequences, name)
            target = torch.full((rows, prompt_width + length), fill, dtype=source.dtype, device=source.device)
            target[:, prompt_width - width : prompt_width + columns - width] = source
            blocks[name].append(target)
    joined = {name: torch.cat(tensors) for name, tensors in blocks.items()}
    return Sequences(joined["input_ids"], joined["attention_mask"], joined["completion_mask"])


def _cat_texts(texts: list[Completions | None]) -> Completions | None:
    if any(text is None for text in texts):
        return None
    present = [text for text in texts if text is not None]
    names = sorted({name for text in present for name in text.columns})
    # A column one round's prompts lack is None on its rows (as the collator does within a batch).
    return Completions(
        [p for text in present for p in text.prompts],
        [c for text in present for c in text.completions],
        [i for text in present for i in text.ids],
        {
            name: [v for text in present for v in text.columns.get(name, [None] * len(text.prompts))]
            for name in names
        },
    )


def fill_rollout(
    first: Rollout,
    draw: Callable[[int], Rollout],
    *,
    num_generations: int,
    max_rounds: int,
    anyone_short: Callable[[bool], bool],
    pad_token_id: int,
) -> tuple[Rollout, int, int]:
    """The rollout dynamic sampling keeps, the rounds drawn (``num_gen_batches``) and this process's
    constant groups over every round (``num_filtered_groups``).

    Args:
        first: The first round's scored rollout (the data loader's prompts); its group count is the size.
        draw: Samples and scores round ``r >= 1`` (fresh prompts, as many as in ``first``).
        max_rounds: ``max_num_gen_batches``: rounds at most, the first included.
        anyone_short: Whether some process is short of usable groups, given whether this one is (every
            process calls it in the same rounds).
        pad_token_id: Written at the padding when rounds of different widths are joined.
    """
    size = first.size // num_generations
    rounds = [first]
    qualities = [group_quality(first.require("rewards"), first.kept, num_generations)]
    while len(rounds) < max_rounds:
        usable = sum(int((quality == USABLE).sum()) for quality in qualities)
        if not anyone_short(usable < size):
            break
        drawn = draw(len(rounds))
        rounds.append(drawn)
        qualities.append(group_quality(drawn.require("rewards"), drawn.kept, num_generations))
    filtered = sum(int((quality == CONSTANT).sum()) for quality in qualities)
    picks = select_groups(qualities, size)
    if picks == [(0, group) for group in range(size)]:
        return first, len(rounds), filtered  # the first round as it was (the loader's order)
    parts = [
        take_groups(rollout, [group for r, group in picks if r == index], num_generations)
        for index, rollout in enumerate(rounds)
        if any(r == index for r, _ in picks)
    ]
    return cat_rollouts(parts, pad_token_id), len(rounds), filtered
