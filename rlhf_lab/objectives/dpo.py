"""DPO and its loss-type variants (IPO, cDPO, robust, hinge), alone or weighted together."""

from __future__ import annotations

from typing import Any

import torch

from rlhf_lab.errors import ConfigError, check_choice, check_range
from rlhf_lab.losses.dpo import LOSS_TYPES, PreferenceLossOutput, dpo_loss
from rlhf_lab.objectives.pairwise import PairwiseObjective
from rlhf_lab.policy import SequenceLogps


class DPO(PairwiseObjective):
    """Direct Preference Optimization (Rafailov et al., 2023) with optional SFT mixing.

    Args:
        beta: KL strength / inverse temperature.
        loss_type: ``sigmoid``, ``ipo``, ``hinge`` or ``robust``, or a list of them combined with
            ``loss_weights`` (as MPO, Wang et al., 2024, combines sigmoid and BCO-style terms).
        loss_weights: One weight per entry of ``loss_type`` (default: all 1).
        label_smoothing: Label-noise ``eps`` (cDPO with ``sigmoid``; ``robust``).
        sft_beta: Weight of the chosen-completion NLL added to the loss (ms-swift's ``sft_beta``).
        **kwargs: `AlignmentObjective` arguments (model, adapter, optim, reference, runtime).
    """

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: Any = "sigmoid",
        loss_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        sft_beta: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
        if not self.loss_types:
            raise ConfigError("algo.loss_type is empty; give one loss type or a list")
        for name in self.loss_types:
            check_choice("algo.loss_type", name, LOSS_TYPES)
        self.loss_weights = [1.0] * len(self.loss_types) if loss_weights is None else list(loss_weights)
        if len(self.loss_weights) != len(self.loss_types):
            raise ConfigError(
                f"algo.loss_weights={self.loss_weights} needs one weight per algo.loss_type={self.loss_types}"
            )
        check_range("algo.beta", beta, 0.0, None, low_inclusive=False)
        check_range("algo.label_smoothing", label_smoothing, 0.0, 0.5, high_inclusive=False)
        check_range("algo.sft_beta", sft_beta, 0.0, None)
        super().__init__(**kwargs)
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.nll_weight = sft_beta

    def pair_loss(
        self,
        chosen: SequenceLogps,
        rejected: SequenceLogps,
        reference_chosen: torch.Tensor | None,
        reference_rejected: torch.Tensor | None,
    ) -> tuple[PreferenceLossOutput, dict[str, torch.Tensor]]:
        assert reference_chosen is not None and reference_rejected is not None
        outputs = [
            dpo_loss(
                chosen.logps,
                rejected.logps,
                reference_chosen,
                reference_rejected,
                beta=self.beta,
                loss_type=name,
                label_smoothing=self.label_smoothing,
                chosen_lengths=chosen.lengths,
                rejected_lengths=rejected.lengths,
            )
            for name in self.loss_types
        ]
        losses = sum(weight * out.losses for weight, out in zip(self.loss_weights, outputs, strict=True))
        extra = {}
        if len(outputs) > 1:
            extra = {
                f"loss/{name}": out.losses.detach().mean()
                for name, out in zip(self.loss_types, outputs, strict=True)
            }
        combined = PreferenceLossOutput(losses, outputs[0].chosen_rewards, outputs[0].rejected_rewards)
        return combined, extra
