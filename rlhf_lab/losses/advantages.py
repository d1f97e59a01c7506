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
    rewards = token_rewards * mask.to(token_rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return Advantages(masked_whiten(returns, mask))
