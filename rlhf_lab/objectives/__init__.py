"""One thin LightningModule per kind of objective over the shared `AlignmentObjective` base.

Pairwise objectives (DPO and its variants, IPO, CPO, SimPO, CPO-SimPO, ORPO) are one class whose loss
``conf/algo/<name>.yaml`` names; KTO (unpaired batches), the reward model (a classification head) and SFT
(single completions) have their own.
"""

from rlhf_lab.objectives.base import AlignmentObjective, OptimConfig, RuntimeConfig, pairwise_metrics
from rlhf_lab.objectives.kto import KTO
from rlhf_lab.objectives.pairwise import PAIR_INPUTS, PairwiseObjective
from rlhf_lab.objectives.reward import RewardModel
from rlhf_lab.objectives.sft import SFT

__all__ = [
    "KTO",
    "PAIR_INPUTS",
    "SFT",
    "AlignmentObjective",
    "OptimConfig",
    "PairwiseObjective",
    "RewardModel",
    "RuntimeConfig",
    "pairwise_metrics",
]
