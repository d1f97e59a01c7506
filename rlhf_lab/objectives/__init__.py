"""One thin LightningModule per objective over the shared `AlignmentObjective` base."""

from rlhf_lab.objectives.base import AlignmentObjective, OptimConfig, RuntimeConfig, pairwise_metrics
from rlhf_lab.objectives.dpo import DPO
from rlhf_lab.objectives.sft import SFT

__all__ = ["DPO", "SFT", "AlignmentObjective", "OptimConfig", "RuntimeConfig", "pairwise_metrics"]
