"""Objective losses as pure functions of log-probs (no config, trainer or device inside).

A pairwise loss takes tensors as positional-or-keyword parameters, named from ``policy_chosen_logps``,
``policy_rejected_logps``, ``reference_chosen_logps``, ``reference_rejected_logps``, ``chosen_lengths``,
``rejected_lengths`` and ``chosen_nll``, and its hyperparameters as keyword-only parameters with paper
names and defaults, constrained with `hyperparameters` (checked once, when an objective is configured).
`rlhf_lab.objectives.PairwiseObjective` passes it what it names; the YAML names the loss by import path.
"""

from rlhf_lab.losses.cpo import cpo_loss
from rlhf_lab.losses.distill import generalized_jsd, generalized_jsd_loss
from rlhf_lab.losses.dpo import LOSS_TYPES as DPO_LOSS_TYPES
from rlhf_lab.losses.dpo import PreferenceLossOutput, dpo_loss, ld_logps, sigmoid_loss
from rlhf_lab.losses.hyperparameters import check_hyperparameters, hyperparameters
from rlhf_lab.losses.kto import KTOLossOutput, clamp_kl, kto_kl_estimate, kto_loss
from rlhf_lab.losses.orpo import log1mexp, orpo_loss
from rlhf_lab.losses.reward import bradley_terry_loss
from rlhf_lab.losses.sft import nll_loss
from rlhf_lab.losses.simpo import simpo_loss

__all__ = [
    "DPO_LOSS_TYPES",
    "KTOLossOutput",
    "PreferenceLossOutput",
    "bradley_terry_loss",
    "check_hyperparameters",
    "clamp_kl",
    "cpo_loss",
    "dpo_loss",
    "generalized_jsd",
    "generalized_jsd_loss",
    "hyperparameters",
    "kto_kl_estimate",
    "kto_loss",
    "ld_logps",
    "log1mexp",
    "nll_loss",
    "orpo_loss",
    "sigmoid_loss",
    "simpo_loss",
]
