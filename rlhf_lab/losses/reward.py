"""Bradley-Terry reward-model loss.

Ouyang et al., 2022 (InstructGPT), Eq. 1; the optional per-pair margin follows Llama 2 (Touvron et al.,
2023, Eq. 2) and the centring term Eisenstein et al., 2023 (TRL's ``center_rewards_coefficient``):

    L = -log sigma(r_c - r_r - m) + c * (r_c + r_r)^2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_lab.losses.hyperparameters import NON_NEGATIVE, hyperparameters


@hyperparameters(center_rewards_coefficient=NON_NEGATIVE)
def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    *,
    center_rewards_coefficient: float = 0.0,
) -> torch.Tensor:
    """Per-pair reward-model loss.

    Args:
        chosen_rewards: ``[B]`` scalar scores of the chosen sequences.
        rejected_rewards: ``[B]`` scalar scores of the rejected sequences.
        margin: ``[B]`` required score gap per pair (Llama 2), or None.
        center_rewards_coefficient: Weight of ``(r_c + r_r)^2``, which keeps scores centred on 0.

    Returns:
        ``[B]`` losses.

    Example:
        ``r_c = 2, r_r = 1``: ``-log sigma(1) = 0.3132617``; with margin 1: ``ln 2``; with coefficient 0.01
        and no margin: ``0.3132617 + 0.01 * 9 = 0.4032617``.
    """
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin.to(difference.dtype)
    losses = -F.logsigmoid(difference)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses
