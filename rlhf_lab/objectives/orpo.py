"""ORPO (Hong et al., 2024): NLL on the chosen completion plus a weighted odds-ratio term."""

from __future__ import annotations

from typing import Any

import torch

from rlhf_lab.errors import ConfigError
from rlhf_lab.losses.dpo import PreferenceLossOutput
from rlhf_lab.losses.orpo import orpo_odds_ratio_loss
from rlhf_lab.objectives.pairwise import PairwiseObjective
from rlhf_lab.policy import SequenceLogps


class ORPO(PairwiseObjective):
    """ORPO: ``NLL(chosen) + lambda * -log sigma(log odds ratio)``, reference-free.

    The config key is literally ``algo.lambda`` (a Python keyword, hence ``lambda_`` here).

    Args:
        lambda_: Weight of the odds-ratio term (``algo.lambda``).
        nll_on_prompt: Include the prompt tokens in the NLL term (the ORPO paper's released code trains on
            the full sequence; default False scores the completion only, like every other objective here).
        **kwargs: `AlignmentObjective` arguments (and ``lambda``).
    """

    needs_reference = False
    nll_weight = 1.0

    def __init__(self, lambda_: float = 0.1, nll_on_prompt: bool = False, **kwargs: Any) -> None:
        if "lambda" in kwargs:
            lambda_ = kwargs.pop("lambda")
        if not isinstance(lambda_, (int, float)) or lambda_ < 0:
            raise ConfigError(f"algo.lambda={lambda_!r} must be a non-negative number")
        super().__init__(**kwargs)
        self.lambda_ = float(lambda_)
        self.nll_on_prompt = nll_on_prompt

    def pair_loss(
        self,
        chosen: SequenceLogps,
        rejected: SequenceLogps,
        reference_chosen: torch.Tensor | None,
        reference_rejected: torch.Tensor | None,
    ) -> tuple[PreferenceLossOutput, dict[str, torch.Tensor]]:
        out = orpo_odds_ratio_loss(
            chosen.logps, rejected.logps, chosen.lengths, rejected.lengths, lambda_=self.lambda_
        )
        metrics = {"log_odds_ratio": out.log_odds_ratio.mean(), "log_odds_chosen": out.log_odds_chosen.mean()}
        return PreferenceLossOutput(out.losses, out.chosen_rewards, out.rejected_rewards), metrics
