"""SimPO (Meng et al., 2024) and, with ``cpo_alpha > 0``, CPO-SimPO."""

from __future__ import annotations

from typing import Any

import torch

from rlhf_lab.errors import check_range
from rlhf_lab.losses.dpo import PreferenceLossOutput
from rlhf_lab.losses.simpo import simpo_loss
from rlhf_lab.objectives.pairwise import PairwiseObjective
from rlhf_lab.policy import SequenceLogps


class SimPO(PairwiseObjective):
    """SimPO: length-normalised reference-free rewards with target margin ``gamma``.

    Args:
        beta: Reward scale.
        gamma: Target reward margin.
        cpo_alpha: Weight of the chosen-completion NLL (0 = SimPO, > 0 = CPO-SimPO).
        label_smoothing: Label noise.
        **kwargs: `AlignmentObjective` arguments.
    """

    needs_reference = False

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 1.0,
        cpo_alpha: float = 0.0,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        check_range("algo.beta", beta, 0.0, None, low_inclusive=False)
        check_range("algo.cpo_alpha", cpo_alpha, 0.0, None)
        check_range("algo.label_smoothing", label_smoothing, 0.0, 0.5, high_inclusive=False)
        super().__init__(**kwargs)
        self.beta = beta
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.nll_weight = cpo_alpha

    def pair_loss(
        self,
        chosen: SequenceLogps,
        rejected: SequenceLogps,
        reference_chosen: torch.Tensor | None,
        reference_rejected: torch.Tensor | None,
    ) -> tuple[PreferenceLossOutput, dict[str, torch.Tensor]]:
        out = simpo_loss(
            chosen.logps,
            rejected.logps,
            chosen.lengths,
            rejected.lengths,
            beta=self.beta,
            gamma=self.gamma,
            label_smoothing=self.label_smoothing,
        )
        return out, {}
