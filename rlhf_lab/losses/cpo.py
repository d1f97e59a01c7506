"""CPO: reference-free preference loss plus an NLL term on the chosen completion.

Xu et al., 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in
Machine Translation", Eq. 3-6. With completion log-probs ``h = log pi(y_c|x) - log pi(y_r|x)``:

    sigmoid  -(1-eps) log sigma(beta h) - eps log sigma(-beta h)      (Eq. 4, label-smoothed as in TRL)
    hinge    max(0, 1 - beta h)
    ipo      (h_bar - 1/(2 beta))^2, on per-token mean log-probs (as TRL's CPOTrainer, and as this
             project's DPO ``ipo``)

plus ``cpo_alpha * NLL(y_c)`` (Eq. 6). Rewards are ``beta * log pi``, length-normalised for ``ipo``: the
quantity the loss compares.
"""

from __future__ import annotations

import torch

from rlhf_lab.losses.dpo import PreferenceLossOutput, nll_term, sigmoid_loss
from rlhf_lab.losses.hyperparameters import (
    BETA,
    LABEL_SMOOTHING,
    NON_NEGATIVE,
    OneOf,
    hyperparameters,
)

CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


@hyperparameters(
    beta=BETA, cpo_alpha=NON_NEGATIVE, loss_type=OneOf(CPO_LOSS_TYPES), label_smoothing=LABEL_SMOOTHING
)
def cpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    chosen_nll: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    cpo_alpha: float = 1.0,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """CPO loss (Eq. 6): reference-free preference term plus ``cpo_alpha * NLL(y_c)``.

    Args:
        policy_chosen_logps: ``[B]`` summed log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` summed log-probs of the rejected completions.
        chosen_lengths: ``[B]`` chosen completion token counts (``ipo``).
        rejected_lengths: ``[B]`` rejected completion token counts (``ipo``).
        chosen_nll: ``[B]`` per-token NLL of the chosen completions (when ``cpo_alpha > 0``).
        beta: Inverse temperature.
        cpo_alpha: Weight of the NLL term.
        loss_type: ``sigmoid``, ``hinge`` or ``ipo``.
        label_smoothing: Label noise ``eps`` (``sigmoid`` only).

    Returns:
        Per-example losses and detached rewards.

    Example:
        ``beta = 0.5``, logps ``(-1, -3)``, ``cpo_alpha = 0``: ``h = 2``, sigmoid loss
        ``log(1 + e^-1) = 0.3132617``, rewards ``(-0.5, -1.5)``; ``cpo_alpha = 1`` with an NLL of 0.5 adds 0.5.
    """
    chosen, rejected = policy_chosen_logps, policy_rejected_logps
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type='ipo' needs chosen_lengths and rejected_lengths")
        chosen, rejected = chosen / chosen_lengths.clamp(min=1), rejected / rejected_lengths.clamp(min=1)
    logits = chosen - rejected
    if loss_type == "sigmoid":
        losses = sigmoid_loss(beta * logits, label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    return PreferenceLossOutput(
        losses=losses + nll_term(cpo_alpha, chosen_nll, "algo.cpo_alpha"),
        chosen_rewards=(beta * chosen).detach(),
        rejected_rewards=(beta * rejected).detach(),
    )
