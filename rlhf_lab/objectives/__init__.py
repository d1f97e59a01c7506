"""One thin LightningModule per objective over the shared `AlignmentObjective` base."""

from rlhf_lab.objectives.base import AlignmentObjective, OptimConfig, RuntimeConfig, pairwise_metrics
from rlhf_lab.objectives.cpo import CPO
from rlhf_lab.objectives.dpo import DPO
from rlhf_lab.objectives.kto import KTO
from rlhf_lab.objectives.orpo import ORPO
from rlhf_lab.objectives.pairwise import PairwiseObjective
from rlhf_lab.objectives.reward import RewardModel
from rlhf_lab.objectives.sft import SFT
from rlhf_lab.objectives.simpo import SimPO

__all__ = [
    "CPO",
    "DPO",
    "KTO",
    "ORPO",
    "SFT",
    "AlignmentObjective",
    "OptimConfig",
    "PairwiseObjective",
    "RewardModel",
    "RuntimeConfig",
    "SimPO",
    "pairwise_metrics",
]
