"""Bradley-Terry reward model on a sequence-classification head."""

from __future__ import annotations

from typing import Any

import torch

from rlhf_lab.data.batches import PairBatch
from rlhf_lab.losses.hyperparameters import check_hyperparameters
from rlhf_lab.losses.reward import bradley_terry_loss
from rlhf_lab.objectives.base import AlignmentObjective


class RewardModel(AlignmentObjective):
    """A scalar reward model trained on preference pairs (``AutoModelForSequenceClassification``, 1 label).

    Each sequence (prompt + completion) is scored at its last token. An optional per-pair ``margin`` column
    sets the required score gap. The exported model loads with
    ``AutoModelForSequenceClassification.from_pretrained``; ``python -m rlhf_lab.score`` scores a file with it.

    Args:
        center_rewards_coefficient: Weight of ``(r_c + r_r)^2`` (keeps scores centred on 0).
        **kwargs: `AlignmentObjective` arguments.
    """

    @property
    def needs_reference(self) -> bool:
        return False

    model_task = "sequence_classification"

    def __init__(self, center_rewards_coefficient: float = 0.0, **kwargs: Any) -> None:
        check_hyperparameters(bradley_terry_loss, {"center_rewards_coefficient": center_rewards_coefficient})
        super().__init__(**kwargs)
        self.center_rewards_coefficient = center_rewards_coefficient

    def compute(self, batch: PairBatch, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = self.policy.scores(batch.sequences)
        chosen, rejected = batch.split(scores)
        losses = bradley_terry_loss(
            chosen, rejected, batch.margin, center_rewards_coefficient=self.center_rewards_coefficient
        )
        detached = scores.detach()
        chosen, rejected = batch.split(detached)
        metrics = {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/mean": detached.mean(),
            "rewards/min": detached.min(),
            "rewards/max": detached.max(),
        }
        return losses.mean(), metrics
