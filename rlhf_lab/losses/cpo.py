"""CPO: reference-free preference loss plus an NLL term on the chosen completion.

Xu et al., 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in
Machine Translation", Eq. 3-6. With summed completion log-probs ``h = log pi(y_c|x) - log pi(y_r|x)``:

    sigmoid  -(1-eps) log sigma(beta h) - eps log sigma(-beta h)      (Eq. 4, label-smoothed as in TRL)
    hinge    max(0, 1 - beta h)
    ipo      (h - 1/(2 beta))^2

The NLL term ``cpo_alpha * NLL(y_c)`` (Eq. 6) is added by the objective. Rewards are ``beta * log pi``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_lab.errors import check_choice, check_range
from rlhf_lab.losses.dpo import PreferenceLossOutput

CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def cpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """Reference-free preference loss of CPO (without its NLL term).

    Args:
        policy_chosen_logps: ``[B]`` summed log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` summed log-probs of the rejected completions.
        beta: Inverse temperature.
        loss_type: ``sigmoid``, ``hinge`` or ``ipo``.
        label_smoothing: Label noise ``eps`` (``sigmoid`` only).

    Returns:
        Per-example losses and detached rewards ``beta * log pi``.

    Example:
        ``beta = 0.5``, logps ``(-1, -3)``: ``h = 2``, sigmoid loss ``log(1 + e^-1) = 0.3132617``,
        rewards ``(-0.5, -1.5)``.
    """
    check_choice("algo.loss_type", loss_type, CPO_LOSS_TYPES)
    check_range("algo.beta", beta, 0.0, None, low_inclusive=False)
    check_range("algo.label_smoothing", label_smoothing, 0.0, 0.5, high_inclusive=False)
    logits = policy_chosen_logps - policy_rejected_logps
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(
            -beta * logits
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=(beta * policy_chosen_logps).detach(),
        rejected_rewards=(beta * policy_rejected_logps).detach(),
    )
