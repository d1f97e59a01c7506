"""Bradley-Terry reward model on a sequence-classification head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

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

    needs_reference = False
    model_task = "sequence_classification"

    def __init__(self, center_rewards_coefficient: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.center_rewards_coefficient = center_rewards_coefficient

    def compute(
        self, batch: Mapping[str, torch.Tensor], split: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        size = batch["index"].numel()
        scores = self.policy.scores(batch)
        chosen, rejected = scores[:size], scores[size:]
        losses = bradley_terry_loss(chosen, rejected, batch.get("margin"), self.center_rewards_coefficient)
        detached = scores.detach()
        metrics = {
            "rewards/chosen": detached[:size].mean(),
            "rewards/rejected": detached[size:].mean(),
            "rewards/accuracies": (detached[:size] > detached[size:]).float().mean(),
            "rewards/margins": (detached[:size] - detached[size:]).mean(),
            "rewards/mean": detached.mean(),
            "rewards/min": detached.min(),
            "rewards/max": detached.max(),
        }
        return losses.mean(), metrics
