"""Objective losses as pure functions of per-sequence log-probs (no config, trainer or device inside)."""

from rlhf_lab.losses.cpo import cpo_loss
from rlhf_lab.losses.dpo import LOSS_TYPES as DPO_LOSS_TYPES
from rlhf_lab.losses.dpo import PreferenceLossOutput, dpo_loss
from rlhf_lab.losses.kto import KTOLossOutput, kto_kl_estimate, kto_loss
from rlhf_lab.losses.orpo import OddsRatioOutput, log1mexp, orpo_odds_ratio_loss
from rlhf_lab.losses.reward import bradley_terry_loss
from rlhf_lab.losses.sft import nll_loss
from rlhf_lab.losses.simpo import simpo_loss

__all__ = [
    "DPO_LOSS_TYPES",
    "KTOLossOutput",
    "OddsRatioOutput",
    "PreferenceLossOutput",
    "bradley_terry_loss",
    "cpo_loss",
    "dpo_loss",
    "kto_kl_estimate",
    "kto_loss",
    "log1mexp",
    "nll_loss",
    "orpo_odds_ratio_loss",
    "simpo_loss",
]
