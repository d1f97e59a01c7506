"""Supervised fine-tuning on the chosen (target) completions."""

from __future__ import annotations

import torch

from rlhf_lab.data.batches import SingleBatch
from rlhf_lab.losses.sft import nll_loss
from rlhf_lab.objectives.base import AlignmentObjective


class SFT(AlignmentObjective):
    """Maximum likelihood on the target completion (prompt tokens masked out)."""

    @property
    def needs_reference(self) -> bool:
        return False

    batch_kind = "single"

    def compute(self, batch: SingleBatch, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = self.policy(batch.sequences)
        losses = nll_loss(target.logps, target.lengths)
        metrics = {
            "nll_loss": losses.detach().mean(),
            "logps/chosen": target.logps.detach().mean(),
            "logits/chosen": target.mean_logits.mean(),
        }
        return losses.mean(), metrics
