"""SimPO: length-normalised, reference-free rewards with a target margin.

Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", Eq. 6:

    L = -log sigma( beta/|y_c| log pi(y_c|x) - beta/|y_r| log pi(y_r|x) - gamma )

``gamma`` is the absolute target reward margin (TRL's ``simpo_gamma``; TRL writes it as
``beta * (h - gamma/beta)``, the same thing). With ``label_smoothing`` the loss is smoothed as cDPO's.
CPO-SimPO adds ``cpo_alpha * NLL(y_c)`` in the objective. Rewards are ``beta * mean-token log pi``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_lab.errors import check_range
from rlhf_lab.losses.dpo import PreferenceLossOutput


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """SimPO loss.

    Args:
        policy_chosen_logps: ``[B]`` summed log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` summed log-probs of the rejected completions.
        chosen_lengths: ``[B]`` chosen completion token counts.
        rejected_lengths: ``[B]`` rejected completion token counts.
        beta: Reward scale.
        gamma: Target margin between the chosen and rejected rewards.
        label_smoothing: Label noise ``eps``.

    Returns:
        Per-example losses and detached rewards ``beta * log pi / |y|``.

    Example:
        ``beta = 2, gamma = 1``, chosen ``-2`` over 2 tokens, rejected ``-6`` over 3 tokens: mean log-probs
        ``-1`` and ``-2``, rewards ``-2`` and ``-4``, loss ``-log sigma(2 - 1) = 0.3132617``.
    """
    check_range("algo.beta", beta, 0.0, None, low_inclusive=False)
    check_range("algo.label_smoothing", label_smoothing, 0.0, 0.5, high_inclusive=False)
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths.clamp(min=1)
    logits = chosen_rewards - rejected_rewards - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLossOutput(
        losses=losses, chosen_rewards=chosen_rewards.detach(), rejected_rewards=rejected_rewards.detach()
    )
