"""KTO (Ethayarajh et al., 2024) on unpaired labelled completions; evaluated on pairs like every objective."""

from __future__ import annotations

import logging
from typing import Any, cast

import torch

from rlhf_lab.data.batches import PairBatch, UnpairedBatch
from rlhf_lab.errors import ConfigError
from rlhf_lab.lightning_compat import attached_trainer
from rlhf_lab.losses.hyperparameters import check_hyperparameters
from rlhf_lab.losses.kto import clamp_kl, kto_kl_estimate, kto_loss
from rlhf_lab.objectives.base import AlignmentObjective, pairwise_metrics

log = logging.getLogger(__name__)

# Sec. 3.3 of the paper: keep lambda_D * n_D / (lambda_U * n_U) in [1, 4/3].
RECOMMENDED_RATIO = (1.0, 4.0 / 3.0)


def _mean_where(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    return values[mask].mean() if bool(mask.any()) else None


class KTO(AlignmentObjective):
    """KTO on ``prompt``/``completion``/``label`` rows (paired data is split into desirable/undesirable).

    Training batches hold B labelled completions and, for the KL reference point, the same B prompts each
    with the completion of its fixed mismatched partner (`rlhf_lab.data.datasets.mismatched_partners`).
    Under data parallelism ``z0`` is the mean over every rank's mismatched rows, clamped after the mean, so
    2 processes with batch B give what 1 process with batch 2B gives. Held-out pairs are scored with the implicit reward
    ``beta * log(pi/pi_ref)``, so ``val/rewards/accuracies`` means what it means for DPO; the held-out loss
    treats chosen as desirable and rejected as undesirable, with the last training KL estimate as ``z0``.

    Args:
        beta: Inverse temperature.
        desirable_weight: ``lambda_D``.
        undesirable_weight: ``lambda_U``.
        **kwargs: `AlignmentObjective` arguments.
    """

    batch_kind = "unpaired"

    def __init__(
        self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0, **kwargs: Any
    ) -> None:
        check_hyperparameters(
            kto_loss,
            {"beta": beta, "desirable_weight": desirable_weight, "undesirable_weight": undesirable_weight},
        )
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        super().__init__(**kwargs)
        # The last training z0, used by the held-out loss; persistent, so a resumed run validates the same.
        self.register_buffer("last_kl", torch.zeros(()))

    def check_data(self, datamodule: Any) -> None:
        if datamodule.batch_size < 2:
            raise ConfigError(
                f"algo=kto needs data.batch_size > 1 to estimate its KL term from mismatched pairs "
                f"in the batch; got data.batch_size={datamodule.batch_size}"
            )
        labels = [example.label for example in datamodule.datasets["train"].examples]
        desirable = sum(1 for label in labels if label)
        undesirable = len(labels) - desirable
        if not desirable or not undesirable:
            log.warning(
                "KTO training data has %d desirable and %d undesirable rows: one class is missing",
                desirable,
                undesirable,
            )
            return
        ratio = (self.desirable_weight * desirable) / (self.undesirable_weight * undesirable)
        low, high = RECOMMENDED_RATIO
        if not low <= ratio <= high:
            log.warning(
                "KTO: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = %.3f "
                "(%d desirable, %d undesirable) is outside the paper's recommended [1, 4/3]; "
                "adjust algo.desirable_weight / algo.undesirable_weight",
                ratio,
                desirable,
                undesirable,
            )

    def compute(
        self, batch: UnpairedBatch | PairBatch, split: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(batch, UnpairedBatch):
            return self._unpaired(batch, split)
        return self._paired(batch, split)

    def _kl(self, policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> torch.Tensor:
        kl = kto_kl_estimate(policy_logps, reference_logps)
        trainer = attached_trainer(self)
        if trainer is not None and trainer.world_size > 1:
            # One reference point for the global batch (ranks hold equal batches): mean first, then clamp.
            kl = cast(torch.Tensor, self.all_gather(kl)).mean()
        return clamp_kl(kl)

    def _unpaired(self, batch: UnpairedBatch, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        size = batch.size
        completions = self.policy(batch.completions())
        reference = self.reference_logps(batch, split)
        assert reference is not None  # KTO needs a reference (needs_reference)
        with torch.no_grad():
            mismatched = self.policy(batch.mismatched())
        kl = self._kl(mismatched.logps, reference[size:])
        if split == "train":
            self.last_kl = kl.detach()
        desirable = batch.labels.bool()
        out = kto_loss(
            completions.logps,
            reference[:size],
            desirable,
            kl,
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )
        metrics: dict[str, torch.Tensor] = {"kl": kl}
        per_class = {
            "rewards/chosen": _mean_where(out.rewards, desirable),
            "rewards/rejected": _mean_where(out.rewards, ~desirable),
            "logps/chosen": _mean_where(completions.logps.detach(), desirable),
            "logps/rejected": _mean_where(completions.logps.detach(), ~desirable),
            "logits/chosen": _mean_where(completions.mean_logits, desirable),
            "logits/rejected": _mean_where(completions.mean_logits, ~desirable),
        }
        metrics.update({name: value for name, value in per_class.items() if value is not None})
        if per_class["rewards/chosen"] is not None and per_class["rewards/rejected"] is not None:
            metrics["rewards/margins"] = per_class["rewards/chosen"] - per_class["rewards/rejected"]
        return out.losses.mean(), metrics

    def _paired(self, batch: PairBatch, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        size = batch.size
        stats = self.policy(batch.sequences)
        chosen, rejected = stats.rows(slice(None, size)), stats.rows(slice(size, None))
        reference = self.reference_logps(batch, split)
        assert reference is not None  # KTO needs a reference (needs_reference)
        labels = torch.cat([torch.ones(size, dtype=torch.bool), torch.zeros(size, dtype=torch.bool)])
        out = kto_loss(
            torch.cat([chosen.logps, rejected.logps]),
            reference,
            labels.to(reference.device),
            self.last_kl,
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )
        metrics = pairwise_metrics(chosen, rejected, out.rewards[:size], out.rewards[size:])
        metrics["kl"] = self.last_kl
        return out.losses.mean(), metrics
