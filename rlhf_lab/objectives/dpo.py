"""DPO (and its loss-type variants) as a LightningModule over the shared base."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from rlhf_lab.errors import check_choice, check_range
from rlhf_lab.losses.dpo import LOSS_TYPES, dpo_loss
from rlhf_lab.losses.sft import nll_loss
from rlhf_lab.objectives.base import AlignmentObjective, pairwise_metrics


class DPO(AlignmentObjective):
    """Direct Preference Optimization (Rafailov et al., 2023) with optional SFT mixing.

    Args:
        beta: KL strength / inverse temperature.
        loss_type: ``sigmoid``, ``ipo``, ``hinge`` or ``robust``.
        label_smoothing: Label-noise ``eps`` (cDPO with ``sigmoid``; ``robust``).
        sft_beta: Weight of the chosen-completion NLL added to the loss (ms-swift's ``sft_beta``).
        **kwargs: `AlignmentObjective` arguments (model, adapter, optim, reference, runtime).
    """

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        sft_beta: float = 0.0,
        **kwargs: Any,
    ) -> None:
        check_choice("algo.loss_type", loss_type, LOSS_TYPES)
        check_range("algo.beta", beta, 0.0, None, low_inclusive=False)
        check_range("algo.label_smoothing", label_smoothing, 0.0, 0.5, high_inclusive=False)
        check_range("algo.sft_beta", sft_beta, 0.0, None)
        super().__init__(**kwargs)
        self.beta = beta
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing
        self.sft_beta = sft_beta

    def compute(
        self, batch: Mapping[str, torch.Tensor], split: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        num_pairs = batch["index"].numel()
        chosen, rejected = self.policy(batch).split(num_pairs)
        reference = self.reference_logps(batch, split)
        out = dpo_loss(
            chosen.logps,
            rejected.logps,
            reference[:num_pairs],
            reference[num_pairs:],
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
            chosen_lengths=chosen.lengths,
            rejected_lengths=rejected.lengths,
        )
        nll = nll_loss(chosen.logps, chosen.lengths)
        losses = out.losses + self.sft_beta * nll if self.sft_beta else out.losses
        metrics = pairwise_metrics(chosen, rejected, out.chosen_rewards, out.rejected_rewards)
        metrics["nll_loss"] = nll.detach().mean()
        return losses.mean(), metrics
