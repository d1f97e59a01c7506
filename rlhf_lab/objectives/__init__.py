"""One thin LightningModule per kind of objective over the shared `AlignmentObjective` base.

Pairwise objectives (DPO and its variants, IPO, CPO, SimPO, CPO-SimPO, ORPO) are one class whose loss
``conf/algo/<name>.yaml`` names; KTO (unpaired batches), the reward model (a classification head) and SFT
(single completions) have their own; online RL is one `OnlineObjective`
built from registered parts (GRPO, RLOO, PPO, REINFORCE++ are YAML files), and online DPO (`OnlineDPO`) trains a
pairwise loss on pairs it samples, over the same `RolloutObjective` base; distillation (KD, SeqKD, GKD) shares
`Distillation`.
"""

from rlhf_lab.objectives.base import AlignmentObjective, OptimConfig, RuntimeConfig, pairwise_metrics
from rlhf_lab.objectives.distill import GKD, KD, Distillation, SeqKD
from rlhf_lab.objectives.kto import KTO
from rlhf_lab.objectives.online import OnlineObjective
from rlhf_lab.objectives.online_dpo import OnlineDPO
from rlhf_lab.objectives.online_legacy import GRPO, PPO, RLOO
from rlhf_lab.objectives.pairwise import PAIR_INPUTS, PairwiseLoss, PairwiseObjective
from rlhf_lab.objectives.reward import RewardModel
from rlhf_lab.objectives.rollouts import RolloutObjective
from rlhf_lab.objectives.sft import SFT

__all__ = [
    "GKD",
    "GRPO",
    "KD",
    "KTO",
    "PAIR_INPUTS",
    "PPO",
    "RLOO",
    "SFT",
    "AlignmentObjective",
    "Distillation",
    "OnlineDPO",
    "OnlineObjective",
    "OptimConfig",
    "PairwiseLoss",
    "PairwiseObjective",
    "RewardModel",
    "RolloutObjective",
    "RuntimeConfig",
    "SeqKD",
    "pairwise_metrics",
]
