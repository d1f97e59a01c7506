"""Objective losses as pure functions of per-sequence log-probs (no config, trainer or device inside)."""

from rlhf_lab.losses.dpo import LOSS_TYPES as DPO_LOSS_TYPES
from rlhf_lab.losses.dpo import PreferenceLossOutput, dpo_loss
from rlhf_lab.losses.sft import nll_loss

__all__ = ["DPO_LOSS_TYPES", "PreferenceLossOutput", "dpo_loss", "nll_loss"]
