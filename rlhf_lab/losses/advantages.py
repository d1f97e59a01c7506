"""Advantage estimators for online RL, registered by name (``algo.advantage_estimator``).

An estimator is a pure function that takes, by parameter name, the rollout tensors it needs (`INPUTS`)
and its hyperparameters as keyword-only parameters with paper names (constrained with
`rlhf_lab.losses.hyperparameters`), and returns `Advantages` (metrics it adds are declared with `rlhf_lab.losses.registry.logs`). The online objective passes it what its
signature names: an estimator that takes ``values`` makes the run train a critic (PPO's value model).
Adding an estimator is one function here, a YAML naming it and a hand-worked test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhf_lab.losses.hyperparameters import OneOf, Range, hyperparameters
from rlhf_lab.losses.policy_gradient import (
    SCALE_REWARDS,
    gae_advantages,
    group_advantages,
    masked_mean,
    masked_whiten,
    rloo_advantages,
)
from rlhf_lab.losses.registry import Registry, logs

#: The tensors an estimator may take, by parameter name.
INPUTS = (
    "scores",  # [N] each completion's return: its weighted reward plus its tokens' KL penalties (if in reward)
    "token_rewards",  # [N, L] per-token rewards: the KL penalty on each token, the reward on the last one
    "mask",  # [N, L] completion tokens
    "values",  # [N, L] the critic's value of the state before each token (an estimator naming it gets a critic)
    "num_generations",  # G: completions per prompt, consecutive rows
    "rewards",  # [N] each completion's weighted reward alone (no KL penalty; minus missing_eos_penalty)
    "baseline_rewards",  # [N] the reward of a greedy completion of the row's prompt (ReMax: one more rollout)
)

ADVANTAGE_ESTIMATORS = Registry("algo.advantage_estimator")


@dataclass
class Advantages:
    """What an estimator returns.

    Attributes:
        advantages: ``[N]`` per completion or ``[N, L]`` per token.
        returns: ``[N, L]`` value targets (estimators with a critic), else None.
        metrics: Scalars to log (unprefixed names).
    """

    advantages: torch.Tensor
    returns: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@ADVANTAGE_ESTIMATORS.register("grpo")
@hyperparameters(scale_rewards=OneOf(SCALE_REWARDS))
def grpo_advantages(
    scores: torch.Tensor, num_generations: int, *, scale_rewards: str = "group"
) -> Advantages:
    """GRPO's group-relative advantages (Shao et al., 2024, Eq. 3 with outcome supervision):
    ``(r_i - mean_group(r)) / (std + 1e-4)``; `group_advantages` (``scale_rewards=none`` is Dr. GRPO)."""
    return Advantages(group_advantages(scores, num_generations, scale_rewards=scale_rewards)[0])


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_estimator(
    scores: torch.Tensor, num_generations: int, *, normalize_advantages: bool = False
) -> Advantages:
    """RLOO (Ahmadian et al., 2024, Eq. 6): the reward minus the mean reward of the prompt's other
    completions (`rloo_advantages`); ``normalize_advantages`` scales them to unit std over the rollout."""
    advantages = rloo_advantages(scores, num_generations)
    if normalize_advantages:
        advantages = advantages / (advantages.std() + 1e-4)
    return Advantages(advantages)


@ADVANTAGE_ESTIMATORS.register("gae")
@logs("advantages/mean")
@hyperparameters(gamma=Range(0.0, 1.0), lam=Range(0.0, 1.0))
def gae_estimator(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten_rewards: bool = False,
) -> Advantages:
    """GAE (Schulman et al., 2016, Eq. 16) against the critic, as PPO for RLHF uses it (the N+
    implementation details, Huang et al., 2024): rewards optionally whitened (without shifting their mean),
    advantages whitened over the rollout, returns ``A + V`` as the critic's targets. Logs the advantages'
    mean before whitening as ``advantages/mean``."""
    if whiten_rewards:
        token_rewards = masked_whiten(token_rewards, mask, shift_mean=False)
    advantages, returns = gae_advantages(token_rewards, values, mask, gamma=gamma, lam=lam)
    return Advantages(
        masked_whiten(advantages, mask), returns, {"advantages/mean": masked_mean(advantages, mask)}
    )


@ADVANTAGE_ESTIMATORS.register("reinforce_pp", "reinforce_plus_plus")
@hyperparameters(gamma=Range(0.0, 1.0))
def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0
) -> Advantages:
    """REINFORCE++ (Hu et al., 2025, Eq. 7-9): each token's discounted return-to-go
    ``G_t = sum_{s >= t} gamma^(s-t) r_s`` (the per-token KL penalty and the final reward), normalised to
    zero mean and unit variance over the whole rollout instead of a learned or group baseline.

    Departure: the paper normalises over the global batch; this normalises over each process's rollout
    (identical on one process).
    """
    return Advantages(masked_whiten(returns_to_go(token_rewards, mask, gamma=gamma), mask))


def returns_to_go(token_rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0) -> torch.Tensor:
    """``[N, L]`` discounted returns ``G_t = sum_{s >= t} gamma^(s-t) r_s`` over each completion's tokens."""
    rewards = token_rewards * mask.to(token_rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def _on_last_token(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N, L]`` zeros with ``values[i]`` on row ``i``'s last completion token (nothing on an empty row)."""
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    last = (mask.sum(1) - 1).clamp(min=0)
    rows = torch.arange(mask.shape[0], device=mask.device)
    ended = mask.any(1)
    out[rows[ended], last[ended]] = values[ended]
    return out


@ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline", "reinforce_plus_plus_baseline")
@hyperparameters(gamma=Range(0.0, 1.0))
def reinforce_pp_baseline_advantages(
    token_rewards: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    num_generations: int,
    *,
    gamma: float = 1.0,
) -> Advantages:
    """REINFORCE++-baseline (Hu et al., 2025, Sec. 3.2; OpenRLHF's ``reinforce_baseline``): each completion's
    reward minus the mean reward of its prompt's ``G`` completions (the group baseline, which removes the
    prompt's difficulty), then the per-token returns-to-go (the KL penalties included) normalised over the
    whole rollout as `reinforce_pp_advantages` does. Unlike GRPO, the group's std does not scale the
    advantages (the batch normalisation does, over every prompt at once).

    Departure: normalised over each process's rollout, not the global batch (identical on one process).
    """
    baseline = _grouped_mean(rewards, num_generations)
    shifted = token_rewards - _on_last_token(baseline, mask)
    return Advantages(masked_whiten(returns_to_go(shifted, mask, gamma=gamma), mask))


def _grouped_mean(values: torch.Tensor, num_generations: int) -> torch.Tensor:
    """``[N]``: each row's group mean (``G`` consecutive rows)."""
    grouped = values.view(-1, num_generations)
    return grouped.mean(1).repeat_interleave(num_generations)


@ADVANTAGE_ESTIMATORS.register("remax")
@logs("baseline_reward")
def remax_advantages(
    token_rewards: torch.Tensor, baseline_rewards: torch.Tensor, mask: torch.Tensor
) -> Advantages:
    """ReMax (Li et al., 2024, Algorithm 1): REINFORCE with the reward of the prompt's greedy completion as
    the baseline, ``A_t = G_t - r(x, y_greedy)`` with ``G_t`` the return-to-go of the token rewards (the KL
    penalties under ``kl_in_reward``, the reward on the last token), as verl's
    ``compute_remax_outcome_advantage``. The online objective samples one greedy completion per prompt
    (no gradient) and scores it with the same rewards; no value model, no group needed
    (``num_generations`` may be 1). Logs the greedy completions' mean reward as ``baseline_reward``."""
    returns = returns_to_go(token_rewards, mask)
    advantages = (returns - baseline_rewards.unsqueeze(-1)) * mask.to(returns.dtype)
    return Advantages(advantages, metrics={"baseline_reward": baseline_rewards.mean()})
