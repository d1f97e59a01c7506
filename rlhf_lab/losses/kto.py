"""KTO: prospect-theoretic loss on unpaired desirable/undesirable completions.

Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 8 with the
reference point ``z0`` estimated as in Sec. 4.1 (and TRL): the batch mean of ``log pi - log pi_ref`` over
*mismatched* prompt/completion pairs, clamped at 0 and detached.

    r      = log pi(y|x) - log pi_ref(y|x)
    L(y)   = lambda_D (1 - sigma(beta (r - z0)))   if y is desirable
             lambda_U (1 - sigma(beta (z0 - r)))   if y is undesirable

Rewards are ``beta * r``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab.errors import check_range


@dataclass
class KTOLossOutput:
    """Per-example losses (weighted), detached rewards ``beta * r`` and the KL reference point."""

    losses: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor


def kto_kl_estimate(
    mismatched_policy_logps: torch.Tensor, mismatched_reference_logps: torch.Tensor
) -> torch.Tensor:
    """``z0 = max(0, mean(log pi - log pi_ref))`` over mismatched pairs, detached (no gradient flows through)."""
    return (mismatched_policy_logps - mismatched_reference_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOLossOutput:
    """KTO loss per example.

    Args:
        policy_logps: ``[B]`` summed completion log-probs under the policy.
        reference_logps: ``[B]`` the same under the reference.
        desirable: ``[B]`` bool, True for desirable completions.
        kl: Scalar reference point ``z0`` (see `kto_kl_estimate`).
        beta: Inverse temperature.
        desirable_weight: ``lambda_D``.
        undesirable_weight: ``lambda_U``.

    Returns:
        Weighted per-example losses, rewards ``beta * r`` and the ``kl`` used.

    Example:
        ``r = 0`` for both classes and ``z0 = 0`` give ``1 - sigma(0) = 0.5`` each.
    """
    check_range("algo.beta", beta, 0.0, None, low_inclusive=False)
    check_range("algo.desirable_weight", desirable_weight, 0.0, None)
    check_range("algo.undesirable_weight", undesirable_weight, 0.0, None)
    logratios = policy_logps - reference_logps
    kl = kl.to(logratios.dtype)
    desirable = desirable.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))),
    )
    return KTOLossOutput(losses=losses, rewards=(beta * logratios).detach(), kl=kl.detach())
