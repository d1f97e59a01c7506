"""Contrastive Preference Optimization (Xu et al., 2024): reference-free, with an NLL term."""

from __future__ import annotations

from typing import Any

import torch

from rlhf_lab.errors import check_range
from rlhf_lab.losses.cpo import cpo_loss
from rlhf_lab.losses.dpo import PreferenceLossOutput
from rlhf_lab.objectives.pairwise import PairwiseObjective
from rlhf_lab.policy import SequenceLogps


class CPO(PairwiseObjective):
    """CPO: ``loss_type`` preference loss on summed log-probs plus ``cpo_alpha * NLL(chosen)``.

    Args:
        beta: Inverse temperature.
        cpo_alpha: Weight of the chosen-completion NLL (prompt excluded).
        loss_type: ``sigmoid``, ``hinge`` or ``ipo``.
        label_smoothing: Label noise (``sigmoid``).
        **kwargs: `AlignmentObjective` arguments.
    """

    needs_reference = False

    def __init__(
        self,
        beta: float = 0.1,
        cpo_alpha: float = 1.0,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        check_range("algo.cpo_alpha", cpo_alpha, 0.0, None)
        cpo_loss(
            torch.zeros(1), torch.zeros(1), beta=beta, loss_type=loss_type, label_smoothing=label_smoothing
        )
        super().__init__(**kwargs)
        self.beta = beta
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing
        self.nll_weight = cpo_alpha

    def pair_loss(
        self,
        chosen: SequenceLogps,
        rejected: SequenceLogps,
        reference_chosen: torch.Tensor | None,
        reference_rejected: torch.Tensor | None,
    ) -> tuple[PreferenceLossOutput, dict[str, torch.Tensor]]:
        out = cpo_loss(
            chosen.logps,
            rejected.logps,
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
        )
        return out, {}
