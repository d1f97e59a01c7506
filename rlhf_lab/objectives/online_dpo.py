"""Online DPO (Guo et al., 2024, "Direct Language Model Alignment from Online AI Feedback"): a pairwise loss
on pairs the policy samples and the rewards rank.

Each training batch (``data.batch_size`` prompts) becomes one rollout: the policy samples
``num_generations`` completions per prompt (seeded as online RL's, `rlhf_lab.objectives.rollouts`), the
rewards score them (reward functions, reward models, a judge: online RL's ``algo.reward_*``), and each
prompt's best completion is the chosen one, its worst the rejected one (with 2 completions, the paper's
pair). The pairwise loss ``algo.loss`` (DPO and its loss types, SimPO, CPO, ORPO: `PairwiseLoss`, as the
offline objectives take it) trains on those pairs against the reference (the initial policy, as offline
DPO), and logs what offline DPO logs (``rewards/margins``, ``logps/chosen``...) beside the rollout's
``reward`` metrics.

Departures from TRL's ``OnlineDPOTrainer``: a prompt whose completions tie (equal rewards after
``missing_eos_penalty``, which both subtract from completions without EOS before ranking) carries no
preference and leaves the loss (TRL keeps it, the first completion chosen); ``train/frac_tied_pairs`` counts
them. The loss is the mean over the optimiser step's untied pairs, whatever ``trainer.accumulate_grad_batches``
(each micro-batch adds its pairs' share), and more than 2 completions per prompt pair the best with the worst.
Log-probs are the policy's own (temperature 1), as TRL's and offline DPO's.
"""

from __future__ import annotations

import typing
from functools import partial
from typing import Any, Optional

import torch

from rlhf_lab.data.batches import PairBatch, PromptBatch
from rlhf_lab.errors import ConfigError
from rlhf_lab.logprobs import SequenceLogps
from rlhf_lab.losses.hyperparameters import hyperparameter_defaults
from rlhf_lab.objectives.base import pairwise_metrics
from rlhf_lab.objectives.pairwise import PairwiseLoss, pairwise_losses
from rlhf_lab.objectives.rollouts import RolloutObjective
from rlhf_lab.rl.rollout import Rollout, ScoredSamples


def preference_pairs(
    rewards: torch.Tensor, num_generations: int, kept: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each prompt's pair: ``[B]`` rows of its best (chosen) and worst (rejected) completion, and ``[B]``
    whether the pair trains (its rewards differ and no reward failed on the prompt).

    Args:
        rewards: ``[B * G]`` rewards, the ``G = num_generations`` completions of a prompt consecutive.
        kept: ``[B * G]`` bool, False where a reward failed on the prompt (``algo.reward_errors=skip``).

    Example:
        Rewards ``[0.2, 0.7, 1.0, 1.0]``, G = 2: chosen rows ``[1, 2]``, rejected ``[0, 2]``, trains
        ``[True, False]`` (the second prompt's completions tie).
    """
    grouped = rewards.view(-1, num_generations)
    first = torch.arange(grouped.shape[0], device=rewards.device) * num_generations
    best, worst = grouped.max(1), grouped.min(1)
    trains = best.values > worst.values
    if kept is not None:
        trains &= kept.to(rewards.device).view(-1, num_generations).all(1)
    return first + best.indices, first + worst.indices, trains


class OnlineDPO(RolloutObjective):
    """Online DPO: a pairwise loss on sampled pairs ranked by rewards.

    Args:
        loss: The pairwise loss (import path), as the offline objectives take it (`PairwiseLoss`); its
            hyperparameters are flat keys (``beta``, ``loss_type``...; null: the loss's default).
        num_generations: Completions per prompt (2: the paper's pair; more: best against worst).
        reward_functions, reward_models, reward_weights, max_new_tokens, temperature, top_p, top_k,
            missing_eos_penalty, val_do_sample, log_samples_every, generation_backend, reward_errors,
            reward_timeout: As online RL's (`rlhf_lab.objectives.OnlineObjective`); the missing-EOS penalty
            applies before ranking.
        **kwargs: The loss's hyperparameters and the `AlignmentObjective` arguments.
    """

    def __init__(
        self,
        loss: Any = "rlhf_lab.losses.dpo_loss",
        reward_functions: list[Any] | None = None,
        reward_models: list[str] | None = None,
        reward_weights: list[float] | None = None,
        num_generations: int = 2,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        missing_eos_penalty: float | None = None,
        val_do_sample: bool = False,
        log_samples_every: int = 50,
        generation_backend: str = "hf",
        reward_errors: str = "stop",
        reward_timeout: float | None = 60.0,
        **kwargs: Any,
    ) -> None:
        shared = {
            name for function in pairwise_losses({"loss": loss}) for name in hyperparameter_defaults(function)
        }
        self.pair_loss = PairwiseLoss(loss, kwargs, optional=shared)
        if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 2:
            raise ConfigError(
                f"algo.num_generations={num_generations!r}: online DPO pairs the completions of a prompt, so it "
                "must be at least 2"
            )
        self.num_generations = num_generations
        super().__init__(
            reward_functions=reward_functions,
            reward_models=reward_models,
            reward_weights=reward_weights,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            missing_eos_penalty=missing_eos_penalty,
            val_do_sample=val_do_sample,
            log_samples_every=log_samples_every,
            generation_backend=generation_backend,
            reward_errors=reward_errors,
            reward_timeout=reward_timeout,
            **kwargs,
        )

    @classmethod
    def schema_parameters(cls, node: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """Every pairwise loss's hyperparameters (`pairwise_losses`, and a loss ``node`` names by import
        path), each optional (null: the chosen loss's default), so ``algo.loss=...`` finds its keys."""
        fields: dict[str, tuple[Any, Any]] = {}
        for loss in pairwise_losses(node):
            hints = typing.get_type_hints(loss)
            for name in hyperparameter_defaults(loss):
                fields.setdefault(name, (Optional[hints.get(name, Any)], None))  # noqa: UP045 - OmegaConf
        return [(name, annotation, default) for name, (annotation, default) in fields.items()]

    @property
    def needs_reference(self) -> bool:
        return self.pair_loss.needs_reference

    @property
    def name(self) -> str:
        return f"online DPO ({self.pair_loss.name})"

    def check_data(self, datamodule: Any) -> None:
        accumulate = self.runtime.accumulate_grad_batches
        if datamodule.batch_size % accumulate:
            raise ConfigError(
                f"data.batch_size={datamodule.batch_size} prompts (one pair each) do not split into "
                f"trainer.accumulate_grad_batches={accumulate} equal micro-batches"
            )

    def metric_names(self, split: str) -> set[str]:
        """Every metric this objective logs for ``split`` (unprefixed), without running a rollout."""
        names = self.rollout_metric_names(self.num_generations)
        if split != "train":
            return names
        empty = torch.zeros(1)
        stats = SequenceLogps(empty, empty, empty)
        names |= {
            "loss",
            "nll_loss",
            "frac_tied_pairs",
            "reward_margin",
            *pairwise_metrics(stats, stats, empty, empty),
        }
        return names | ({"reward_errors"} if self.reward_errors == "skip" else set())

    # ------------------------------------------------------------------------------- the update
    def training_step(self, batch: PromptBatch, batch_idx: int) -> torch.Tensor | None:
        self.policy.at_initial_weights = False
        scored = self.scored_samples(
            batch, self.sampling, self.num_generations, (0, int(self.rollouts_done)), "train"
        )
        self.rollouts_done += 1
        rollout = self.pair_rollout(scored)
        chosen, rejected, trains = preference_pairs(
            self.ranking_rewards(rollout), self.num_generations, scored.kept
        )
        metrics = {**scored.metrics, **self.pair_metrics(rollout, chosen, rejected, trains)}
        trained = trains.nonzero().flatten()
        if self._all_ranks(trained.numel() == 0):
            # Every pair tied or dropped: no gradient; the loss is 0 (a logger would repeat the last one).
            self.take_empty_step(self.optimizers(), self.lr_schedulers())
            metrics["loss"] = torch.zeros((), device=self.device)
        else:
            micro_batches = [
                partial(self.micro_loss, rollout, chosen[part], rejected[part], trained.numel())
                if part.numel()
                else partial(self.micro_loss, rollout, chosen[:1], rejected[:1], 0)  # keeps processes in step
                for part in trained.tensor_split(self.runtime.accumulate_grad_batches)
            ]
            metrics.update(self.accumulated_step(micro_batches, batch) or {})
        self.log_train_metrics(metrics, batch)
        self.maybe_write_samples(rollout)
        return metrics.get("loss")

    def pair_rollout(self, scored: ScoredSamples) -> Rollout:
        """The sampled completions as a `Rollout` (what the sample tables read)."""
        generation, kept = scored.generation, scored.kept
        rewards = (
            scored.rewards
            if kept is None
            else torch.where(kept.to(scored.rewards.device), scored.rewards, 0.0)
        )
        rollout = Rollout(
            generation.sequences(),
            generation.prompts.input_ids.shape[1],
            generation.completion_mask,
            rewards=rewards,
            per_reward=scored.per_reward,
            truncated=generation.truncated,
            texts=scored.decoded,
            kept=None if kept is None else kept.to(rewards.device),
        )
        self._rollout_tokens = int(rollout.sequences.attention_mask.sum())
        return rollout

    def ranking_rewards(self, rollout: Rollout) -> torch.Tensor:
        """``[N]`` the rewards pairs are ranked by: less ``missing_eos_penalty`` without EOS (as TRL)."""
        rewards = rollout.require("rewards")
        if self.missing_eos_penalty is None:
            return rewards
        return rewards - self.missing_eos_penalty * rollout.require("truncated").float()

    def pair_metrics(
        self, rollout: Rollout, chosen: torch.Tensor, rejected: torch.Tensor, trains: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``frac_tied_pairs`` (of the prompts no reward failed on), ``reward_margin`` (mean ranking-reward
        gap of the trained pairs) and ``reward_errors``; marks the sample table's ``advantage`` column +1
        for the chosen completions, -1 for the rejected ones and 0 for the rest."""
        ranking = self.ranking_rewards(rollout)
        scored = (
            torch.ones_like(trains)
            if rollout.kept is None
            else rollout.kept.view(-1, self.num_generations).all(1)
        )
        metrics: dict[str, torch.Tensor] = {}
        if bool(scored.any()):
            metrics["frac_tied_pairs"] = (scored & ~trains).sum().float() / scored.sum()
        if bool(trains.any()):
            metrics["reward_margin"] = (ranking[chosen] - ranking[rejected])[trains].mean()
        if rollout.kept is not None:
            metrics["reward_errors"] = torch.tensor(float(self.dropped_groups), device=self.device)
        labels = torch.zeros(rollout.size, device=ranking.device)
        labels[chosen[trains]], labels[rejected[trains]] = 1.0, -1.0
        rollout.advantages = labels
        return metrics

    def micro_loss(
        self, rollout: Rollout, chosen: torch.Tensor, rejected: torch.Tensor, step_pairs: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The pairs (``chosen[i]``, ``rejected[i]``)'s share of the step's mean loss over ``step_pairs``
        pairs, and their metrics' shares (``step_pairs`` 0: a stand-in pair, its loss times 0)."""
        rows = torch.cat([chosen, rejected])
        # Indexed by the prompt's place in the rollout: no precomputed table holds sampled completions.
        prompts = torch.div(chosen, self.num_generations, rounding_mode="floor")
        pairs = PairBatch(rollout.sequences.rows(rows), prompts)
        losses, metrics = self.pair_loss(self.policy, pairs, self.reference_logps(pairs, "train"))
        if not step_pairs:
            return losses.sum() * 0.0, {}
        share = pairs.size / step_pairs
        return losses.sum() / step_pairs, {key: value * share for key, value in metrics.items()}
