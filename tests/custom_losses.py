"""A pairwise loss defined outside the package, as a user would: only a function (tests import it by path)."""

from __future__ import annotations

import torch

from rlhf_lab.losses import PreferenceLossOutput, hyperparameters
from rlhf_lab.losses.hyperparameters import POSITIVE


@hyperparameters(tau=POSITIVE)
def squared_margin_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    tau: float = 2.0,
) -> PreferenceLossOutput:
    """``(h - tau)^2`` on the DPO log-ratio difference ``h`` (a made-up variant for the test)."""
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    return PreferenceLossOutput((chosen - rejected - tau) ** 2, chosen.detach(), rejected.detach())
