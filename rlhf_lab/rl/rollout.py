"""The typed rollout: what one batch of prompts became after sampling and scoring, row-aligned."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_lab.data.batches import Sequences, SharedPrompts
from rlhf_lab.generation import Generation


@dataclass
class Completions:
    """Sampled completions as the reward functions see them, row-aligned (TRL's arguments).

    Attributes:
        prompts: Each row's prompt as data (a string or messages).
        completions: Decoded completions (strings, or assistant messages for conversational prompts).
        ids: Completion token ids without EOS.
        columns: The data's extra columns, one value per row.
    """

    prompts: list[Any]
    completions: list[Any]
    ids: list[list[int]]
    columns: dict[str, list[Any]]


@dataclass
class Rollout:
    """One rollout of ``N`` completions (prompts x ``num_generations``) with completion width ``L``.

    Filled in stages: the engine gives the tokens, ``truncated`` and ``sampler_logps``; the rewards give
    ``rewards``/``per_reward``; teacher-forced passes give ``old_logps``, ``reference_logps`` and the critic's
    ``values``; the estimator gives ``advantages`` (and ``returns``). Fields a run does not need stay None.

    Attributes:
        sequences: ``[N, P + L]`` prompt (left-padded to ``P``) + completion rows.
        prompt_width: ``P``: completion token ``t`` is column ``P + t``.
        mask: ``[N, L]`` bool, completion tokens the loss counts (EOS included; truncated completions
            dropped under ``mask_truncated_completions``).
        rewards: ``[N]`` weighted sum of the rewards.
        per_reward: ``[N, R]`` each reward function's / model's score (NaN: not applicable to the row).
        truncated: ``[N]`` bool, no EOS within ``max_new_tokens``.
        sampler_logps: ``[N, L]`` log-probs of the sampled tokens as the engine reported them.
        old_logps: ``[N, L]`` the same, teacher-forced through the policy before any update of this
            rollout (the importance ratio's denominator; the KL in the reward).
        reference_logps: ``[N, L]`` the same under the reference.
        values: ``[N, L]`` the critic's value of the state before each completion token.
        advantages: ``[N]`` per completion or ``[N, L]`` per token.
        returns: ``[N, L]`` the critic's targets.
        texts: What the rewards saw (for the sample tables); not carried into `rows`.
        kept: ``[N]`` bool under ``algo.reward_errors=skip``: False for the completions of a prompt a reward
            failed on (dropped: out of the loss mask, advantage 0); None under ``stop``.
        token_mask: ``[N, L]`` bool, the tokens the policy loss trains (``top_entropy_quantile``: the
            high-entropy ones); None: all of ``mask``.
        baseline_rewards: ``[N]`` the reward of a greedy completion of each row's prompt (ReMax).
        is_weights: ``[N, L]`` the importance-sampling correction's weight of each token's policy loss
            (``algo.importance_sampling_correction``; `rlhf_lab.losses.correction`); None: no correction.
    """

    sequences: Sequences
    prompt_width: int
    mask: torch.Tensor
    rewards: torch.Tensor | None = None
    per_reward: torch.Tensor | None = None
    truncated: torch.Tensor | None = None
    sampler_logps: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    reference_logps: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    texts: Completions | None = None
    kept: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    baseline_rewards: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """``N``."""
        return int(self.mask.shape[0])

    def rows(self, index: torch.Tensor) -> Rollout:
        """The rows ``index`` (a ``[n]`` long tensor) of every tensor field (``texts`` left out)."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                values[name] = value[index]
        values.update(sequences=self.sequences.rows(index), texts=None)
        return Rollout(**values)

    def policy_tokens(self) -> float:
        """How many tokens the policy loss trains (`token_mask` within `mask`)."""
        trained = self.mask if self.token_mask is None else self.mask & self.token_mask
        return float(trained.sum())

    def require(self, name: str) -> torch.Tensor:
        """Field ``name``, which this stage needs filled (a clear error instead of a None further down)."""
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"the rollout's {name} is needed here but was not computed")
        return value


@dataclass
class ScoredSamples:
    """Sampled completions and what the rewards made of them (`RolloutActor.scored_samples`).

    Attributes:
        generation: The engine's output.
        decoded: What the rewards saw.
        per_reward: ``[N, R]`` every reward's score (NaN: not applicable, or failed).
        rewards: ``[N]`` their weighted sums.
        kept: ``[N]`` bool under ``algo.reward_errors=skip`` (False: a reward failed on the prompt); None
            under ``stop``.
        metrics: The reward metrics of the kept completions and the completion metrics.
    """

    generation: Generation
    decoded: Completions
    per_reward: torch.Tensor
    rewards: torch.Tensor
    kept: torch.Tensor | None
    metrics: dict[str, torch.Tensor]


def share_completions(sequences: Sequences, prompt_width: int) -> Sequences:
    """``sequences`` (rollout rows: prompts left-padded to ``prompt_width``, completions after) with each run
    of adjacent rows that share a prompt also packed as one row, ``[prompt | completion 1 | ... | completion
    G]`` (`SharedPrompts`): the decoder reads a prompt once for its ``G`` completions, and every position's
    hidden state is the one the unshared rows give. Returned unchanged when no two adjacent rows share one.
    """
    ids, mask = sequences.input_ids, sequences.attention_mask
    same = (ids[1:, :prompt_width] == ids[:-1, :prompt_width]).all(1)
    same &= (mask[1:, :prompt_width] == mask[:-1, :prompt_width]).all(1)
    starts = [0, *(row + 1 for row, shared in enumerate(same.tolist()) if not shared)]
    if len(starts) == sequences.num_rows or sequences.images is not None:
        return sequences
    groups = [range(start, end) for start, end in zip(starts, [*starts[1:], sequences.num_rows], strict=True)]
    ids_cpu, mask_cpu = ids.cpu(), mask.cpu()
    prompt_lengths = mask_cpu[:, :prompt_width].sum(1).tolist()
    completion_lengths = mask_cpu[:, prompt_width:].sum(1).tolist()
    width = max(prompt_lengths[g[0]] + sum(completion_lengths[r] for r in g) for g in groups)
    packed = torch.zeros(len(groups), width, dtype=torch.long)
    positions = torch.zeros(len(groups), width, dtype=torch.long)
    segments = torch.full((len(groups), width), -1, dtype=torch.long)
    source_rows = torch.zeros(ids.shape, dtype=torch.long)
    source_positions = torch.zeros(ids.shape, dtype=torch.long)
    for g, rows in enumerate(groups):
        prompt = prompt_lengths[rows[0]]
        packed[g, :prompt] = ids_cpu[rows[0], prompt_width - prompt : prompt_width]
        positions[g, :prompt] = torch.arange(prompt)
        segments[g, :prompt] = 0
        offset = prompt
        for k, row in enumerate(rows, start=1):
            length = completion_lengths[row]
            packed[g, offset : offset + length] = ids_cpu[row, prompt_width : prompt_width + length]
            positions[g, offset : offset + length] = torch.arange(prompt, prompt + length)
            segments[g, offset : offset + length] = k
            source_rows[row] = g
            source_positions[row, prompt_width - prompt : prompt_width] = torch.arange(prompt)
            source_positions[row, prompt_width : prompt_width + length] = torch.arange(
                offset, offset + length
            )
            offset += length
    shared = SharedPrompts(packed, positions, segments, source_rows, source_positions).to(ids.device)
    return dataclasses.replace(sequences, shared=shared)
