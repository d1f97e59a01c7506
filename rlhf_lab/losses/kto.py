"""KTO: prospect-theoretic loss on unpaired desirable/undesirable completions.

Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 8 with the
reference point ``z0`` estimated as in Sec. 4.1 (and TRL): the batch mean of ``log pi - log pi_ref`` over
*mismatched* prompt/completion pairs, clamped at 0 and detached.

    r      = log pi(y|x) - log pi_ref(y|x)
    L(y)   = lambda_D (1 - sigma(beta (r - z0)))   if y is desirable
             lambda_U (1 - sigma(beta (z0 - r)))   if y is undesirable

Rewards are ``beta * r``.

Under data parallelism the reference point is the mean over every rank's mismatched rows, clamped after
the mean (TRL gathers, means, then clamps): `kto_kl_estimate` returns the unclamped mean so the objective
can average it across ranks before `clamp_kl`. With gradient accumulation each micro-batch estimates its
own ``z0`` from its own mismatched rows (as TRL does), so accumulation changes the estimate's noise and
``batch 4 x accumulation 2`` is not exactly ``batch 8``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab.losses.hyperparameters import BETA, NON_NEGATIVE, hyperparameters


@dataclass
class KTOLossOutput:
    """Per-example losses (weighted), detached rewards ``beta * r`` and the KL reference point."""

    losses: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor


def kto_kl_estimate(
    mismatched_policy_logps: torch.Tensor, mismatched_reference_logps: torch.Tensor
) -> torch.Tensor:
    """``mean(log pi - log pi_ref)`` over mismatched pairs, detached and *not yet clamped* (`clamp_kl`)."""
    return (mismatched_policy_logps - mismatched_reference_logps).mean().detach()


def clamp_kl(kl: torch.Tensor) -> torch.Tensor:
    """``z0 = max(0, kl)``: the reference point is never negative."""
    return kl.clamp(min=0)


@hyperparameters(beta=BETA, desirable_weight=NON_NEGATIVE, undesirable_weight=NON_NEGATIVE)
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
        kl: Scalar reference point ``z0`` (`clamp_kl` of `kto_kl_estimate`).
        beta: Inverse temperature.
        desirable_weight: ``lambda_D``.
        undesirable_weight: ``lambda_U``.

    Returns:
        Weighted per-example losses, rewards ``beta * r`` and the ``kl`` used.

    Example:
        ``r = 0`` for both classes and ``z0 = 0`` give ``1 - sigma(0) = 0.5`` each.
    """
    logratios = policy_logps - reference_logps
    kl = kl.to(logratios.dtype)
    desirable = desirable.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))),
    )
    return KTOLossOutput(losses=losses, rewards=(beta * logratios).detach(), kl=kl.detach())
