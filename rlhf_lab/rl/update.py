"""The arithmetic of one online-RL update, as functions of a `Rollout` and the registered `RLParts`.

`shape_rewards` folds the KL penalty and the missing-EOS penalty into the rewards; `estimate_advantages`
runs the estimator on them; `micro_batch_loss` is one micro-batch's share of an optimiser step's loss (the
policy loss, the k3 KL term, the critic's value loss) and its metrics, each weighted by the micro-batch's
share of the step's tokens so that summing over micro-batches gives the step's values.
"""

from __future__ import annotations

import torch

from rlhf_lab.losses.hyperparameters import tensor_inputs
from rlhf_lab.losses.policy_gradient import StepTotals, clipped_value_loss, kl_estimate, masked_mean
from rlhf_lab.rl.parts import RLParts
from rlhf_lab.rl.rollout import Rollout


def shape_rewards(
    rollout: Rollout, *, beta: float, kl_in_reward: bool, missing_eos_penalty: float | None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``[N]`` scores and ``[N, L]`` token rewards of a scored rollout.

    A completion's reward (minus ``missing_eos_penalty`` without EOS) goes on its last token; with
    ``kl_in_reward`` every token also gets ``-beta * k1`` (``log pi_old - log pi_ref``) and the score is the
    sum of its token rewards (logged as ``kl/sequence``: the mean summed k1).
    """
    mask = rollout.mask
    rewards = rollout.require("rewards")
    if missing_eos_penalty is not None:
        rewards = rewards - missing_eos_penalty * rollout.require("truncated").float()
    token_rewards = torch.zeros(mask.shape, device=mask.device)
    scores, metrics = rewards, {}
    if kl_in_reward and rollout.reference_logps is not None:
        k1 = kl_estimate(rollout.require("old_logps"), rollout.reference_logps, estimator="k1") * mask
        token_rewards = -beta * k1
        sequence_kl = k1.sum(-1)
        scores = rewards - beta * sequence_kl
        metrics["kl/sequence"] = sequence_kl.mean()
    last = (mask.sum(1) - 1).clamp(min=0)
    rows = torch.arange(mask.shape[0], device=mask.device)
    ended = mask.any(1)
    token_rewards[rows[ended], last[ended]] += rewards[ended]
    return scores, token_rewards, metrics


def estimate_advantages(
    parts: RLParts, rollout: Rollout, scores: torch.Tensor, token_rewards: torch.Tensor, num_generations: int
) -> dict[str, torch.Tensor]:
    """Fill ``rollout.advantages`` (and ``returns``) with the estimator's; returns its metrics."""
    available = {
        "scores": scores,
        "token_rewards": token_rewards,
        "mask": rollout.mask,
        "values": rollout.values,
        "num_generations": num_generations,
    }
    inputs = {name: available[name] for name in tensor_inputs(parts.estimator)}
    out = parts.estimator(**inputs, **parts.estimator_kwargs)
    rollout.advantages, rollout.returns = out.advantages, out.returns
    return dict(out.metrics)


def micro_batch_loss(
    parts: RLParts,
    part: Rollout,
    logps: torch.Tensor,
    entropies: torch.Tensor,
    values: torch.Tensor | None,
    totals: StepTotals,
    *,
    beta: float,
    kl_in_reward: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's share of the optimiser step's loss and metrics.

    Args:
        parts: The run's estimator, policy loss and aggregation.
        part: The micro-batch's rows of the rollout.
        logps: ``[n, L]`` the policy's log-probs of the sampled tokens (with gradient).
        entropies: ``[n, L]`` its entropies.
        values: ``[n, L]`` the critic's values (with gradient; None without a critic).
        totals: The optimiser step's totals.
        beta: The KL weight (a k3 term in the loss unless ``kl_in_reward``).
    """
    mask = part.mask
    old_logps = part.old_logps if part.old_logps is not None else logps.detach()
    surrogate = parts.policy_loss(
        logps, old_logps, part.require("advantages"), mask, **parts.policy_loss_kwargs
    )
    share = float(mask.sum()) / max(totals.tokens, 1.0)

    def aggregate(losses: torch.Tensor) -> torch.Tensor:
        return parts.aggregate(losses, mask, totals)

    per_token = surrogate.losses
    log_ratio = (logps.detach() - old_logps) * mask
    metrics = {
        "policy_loss": aggregate(surrogate.losses.detach()),
        "clip_ratio/low": masked_mean(surrogate.low_clipped.float(), mask) * share,
        "clip_ratio/high": masked_mean(surrogate.high_clipped.float(), mask) * share,
        "approx_kl": 0.5 * masked_mean(log_ratio.square(), mask) * share,
        "entropy": masked_mean(entropies.detach(), mask) * share,
    }
    if part.reference_logps is not None:
        kl = kl_estimate(logps, part.reference_logps, estimator="k3")
        metrics["kl"] = masked_mean(kl.detach(), mask) * share
        if not kl_in_reward:
            per_token = per_token + beta * kl * mask
    loss = aggregate(per_token)
    if values is not None:
        value_losses, clipped = clipped_value_loss(
            values, part.require("values"), part.require("returns"), mask, **parts.value_loss_kwargs
        )
        value_loss = aggregate(value_losses)
        metrics["value_loss"] = value_loss.detach()
        metrics["value_clipfrac"] = masked_mean(clipped.float(), mask) * share
        loss = loss + parts.vf_coef * value_loss
    return loss, metrics
