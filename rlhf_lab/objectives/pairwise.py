"""Shared step of every pairwise objective: one forward over chosen + rejected, a pair loss, optional NLL."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rlhf_lab.losses.dpo import PreferenceLossOutput
from rlhf_lab.losses.sft import nll_loss
from rlhf_lab.objectives.base import AlignmentObjective, pairwise_metrics
from rlhf_lab.policy import SequenceLogps


class PairwiseObjective(AlignmentObjective):
    """A preference objective on (chosen, rejected) pairs.

    Subclasses implement `pair_loss`. The base adds ``nll_weight * NLL(chosen completion)`` (DPO's
    ``sft_beta``, CPO's and SimPO's ``cpo_alpha``, ORPO's NLL term) and logs the shared metric set.
    """

    #: Weight of the chosen-completion NLL added to the pair loss.
    nll_weight: float = 0.0
    #: Score the prompt tokens too, so the NLL covers prompt + completion (ORPO option).
    nll_on_prompt: bool = False

    def pair_loss(
        self,
        chosen: SequenceLogps,
        rejected: SequenceLogps,
        reference_chosen: torch.Tensor | None,
        reference_rejected: torch.Tensor | None,
    ) -> tuple[PreferenceLossOutput, dict[str, torch.Tensor]]:
        """Per-pair losses, rewards and any objective-specific metrics (unprefixed names)."""
        raise NotImplementedError

    def compute(
        self, batch: Mapping[str, torch.Tensor], split: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        num_pairs = batch["index"].numel()
        chosen, rejected = self.policy(batch, score_prompt=self.nll_on_prompt).split(num_pairs)
        reference = self.reference_logps(batch, split)
        reference_chosen = None if reference is None else reference[:num_pairs]
        reference_rejected = None if reference is None else reference[num_pairs:]
        out, extra = self.pair_loss(chosen, rejected, reference_chosen, reference_rejected)
        if self.nll_on_prompt:
            assert chosen.prompt_logps is not None and chosen.prompt_lengths is not None
            nll = nll_loss(chosen.logps + chosen.prompt_logps, chosen.lengths + chosen.prompt_lengths)
        else:
            nll = nll_loss(chosen.logps, chosen.lengths)
        losses = out.losses + self.nll_weight * nll if self.nll_weight else out.losses
        metrics = pairwise_metrics(chosen, rejected, out.chosen_rewards, out.rejected_rewards)
        metrics["nll_loss"] = nll.detach().mean()
        metrics.update(extra)
        return losses.mean(), metrics
