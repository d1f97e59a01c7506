"""SimPO: length-normalised, reference-free rewards with a target margin.

Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", Eq. 6:

    L = -log sigma( beta/|y_c| log pi(y_c|x) - beta/|y_r| log pi(y_r|x) - gamma )

``gamma`` is the absolute target reward margin (TRL's ``simpo_gamma``; TRL writes it as
``beta * (h - gamma/beta)``, the same thing). With ``label_smoothing`` the loss is smoothed as cDPO's.
CPO-SimPO adds ``cpo_alpha * NLL(y_c)`` (CPO's Eq. 6). Rewards are ``beta * mean-token log pi``.
"""

from __future__ import annotations

import torch

from rlhf_lab.losses.dpo import PreferenceLossOutput, nll_term, sigmoid_loss
from rlhf_lab.losses.hyperparameters import (
    BETA,
    LABEL_SMOOTHING,
    NON_NEGATIVE,
    Range,
    hyperparameters,
)


@hyperparameters(beta=BETA, gamma=Range(), cpo_alpha=NON_NEGATIVE, label_smoothing=LABEL_SMOOTHING)
def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    chosen_nll: torch.Tensor | None = None,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    cpo_alpha: float = 0.0,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """SimPO loss (and CPO-SimPO with ``cpo_alpha > 0``).

    Args:
        policy_chosen_logps: ``[B]`` summed log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` summed log-probs of the rejected completions.
        chosen_lengths: ``[B]`` chosen completion token counts.
        rejected_lengths: ``[B]`` rejected completion token counts.
        chosen_nll: ``[B]`` per-token NLL of the chosen completions (when ``cpo_alpha > 0``).
        beta: Reward scale.
        gamma: Target margin between the chosen and rejected rewards.
        cpo_alpha: Weight of the NLL term (0: SimPO; > 0: CPO-SimPO).
        label_smoothing: Label noise ``eps``.

    Returns:
        Per-example losses and detached rewards ``beta * log pi / |y|``.

    Example:
        ``beta = 2, gamma = 1``, chosen ``-2`` over 2 tokens, rejected ``-6`` over 3 tokens: mean log-probs
        ``-1`` and ``-2``, rewards ``-2`` and ``-4``, loss ``-log sigma(2 - 1) = 0.3132617``.
    """
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths.clamp(min=1)
    losses = sigmoid_loss(chosen_rewards - rejected_rewards - gamma, label_smoothing)
    return PreferenceLossOutput(
        losses=losses + nll_term(cpo_alpha, chosen_nll, "algo.cpo_alpha"),
        chosen_rewards=chosen_rewards.detach(),
        rejected_rewards=rejected_rewards.detach(),
    )
