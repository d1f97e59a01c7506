"""The online-RL objectives: GRPO, RLOO and PPO, each a thin subclass of `OnlineObjective`.

Each says how a scored rollout becomes advantages (`score_rollout`) and what one micro-batch's share of
the loss is (`micro_loss`); the losses themselves are the pure functions of
`rlhf_lab.losses.policy_gradient`.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf_lab.errors import ConfigError, check_range
from rlhf_lab.losses.hyperparameters import check_hyperparameters
from rlhf_lab.losses.policy_gradient import (
    CLIP_RANGE,
    LOSS_TYPES,
    clipped_surrogate,
    clipped_value_loss,
    gae_advantages,
    group_advantages,
    kl_estimate,
    masked_mean,
    masked_whiten,
    reduce_token_losses,
    rloo_advantages,
)
from rlhf_lab.models.build import Companion
from rlhf_lab.objectives.online import OnlineObjective, Rollout


class _ClippedPolicyGradient(OnlineObjective):
    """GRPO and RLOO: the clipped surrogate on per-sequence advantages, plus an optional k3 KL term."""

    #: How per-token losses are reduced (`reduce_token_losses`).
    loss_type = "grpo"
    #: Whether ``beta`` weighs a k3 KL term in the loss (RLOO may put k1 in the reward instead).
    kl_in_loss = True

    def __init__(
        self,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        importance_sampling_level: str = "token",
        **kwargs: Any,
    ) -> None:
        check_hyperparameters(
            clipped_surrogate,
            {"epsilon": epsilon, "importance_sampling_level": importance_sampling_level}
            | ({} if epsilon_high is None else {"epsilon_high": epsilon_high}),
        )
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.epsilon_high = epsilon_high
        self.importance_sampling_level = importance_sampling_level
        if self.num_generations < 2:
            raise ConfigError(
                f"{self.name} compares the completions of a prompt with each other: algo.num_generations="
                f"{self.num_generations} must be at least 2"
            )

    def _reduce(self, losses: torch.Tensor, part: Rollout, totals: dict[str, float]) -> torch.Tensor:
        world = self.trainer.world_size if self._trainer is not None else 1
        if self.loss_type == "dapo":
            # Every process's tokens normalise; data parallelism averages the ranks' gradients, hence * world.
            share = reduce_token_losses(
                losses, part.mask, loss_type="dapo", num_tokens=totals["global_tokens"]
            )
            return share * world
        return reduce_token_losses(
            losses,
            part.mask,
            loss_type=self.loss_type,
            num_sequences=totals["sequences"],
            num_tokens=totals["tokens"],
            max_completion_length=self.sampling.max_new_tokens,
        )

    def micro_loss(
        self, part: Rollout, totals: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps, entropies = self.token_stats(part, entropy=True)
        old_logps = part.tensors.get("old_logps", logps.detach())
        surrogate = clipped_surrogate(
            logps,
            old_logps,
            part.tensors["advantages"],
            part.mask,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            importance_sampling_level=self.importance_sampling_level,
        )
        kl = self._kl_terms(part, logps)
        per_token = surrogate.losses
        if kl is not None and self.kl_in_loss:
            per_token = per_token + self.beta * kl * part.mask
        loss = self._reduce(per_token, part, totals)
        share = self._token_share(part, totals)
        metrics = {
            "policy_loss": self._reduce(surrogate.losses.detach(), part, totals),
            "clip_ratio/low": masked_mean(surrogate.low_clipped.float(), part.mask) * share,
            "clip_ratio/high": masked_mean(surrogate.high_clipped.float(), part.mask) * share,
            **self._shared_token_metrics(part, totals, entropies, kl),
        }
        return loss, metrics


class GRPO(_ClippedPolicyGradient):
    """Group Relative Policy Optimization (Shao et al., 2024) and its loss variants.

    Advantages are group-relative (`group_advantages`); the loss is the clipped surrogate with an optional
    k3 KL penalty (DeepSeekMath Eq. 3), reduced per ``loss_type``: ``grpo`` (the paper: per-sequence
    token mean), ``dr_grpo`` (Liu et al., 2025: a constant ``max_new_tokens`` normaliser), ``dapo`` (Yu et
    al., 2025: tokens of the whole accumulated batch of every process), ``bnpo`` (tokens of this process's
    batch). ``importance_sampling_level=sequence`` is GSPO (Zheng et al., 2025).

    Args:
        scale_rewards: ``group``, ``batch`` or ``none`` (Dr. GRPO).
        loss_type: ``grpo``, ``dr_grpo``, ``dapo`` or ``bnpo``.
        epsilon: Lower clip range.
        epsilon_high: Upper clip range (DAPO's clip-higher; None: ``epsilon``).
        importance_sampling_level: ``token`` or ``sequence`` (GSPO).
        **kwargs: `OnlineObjective` arguments (``beta`` defaults to 0: no reference model).
    """

    def __init__(self, scale_rewards: str = "group", loss_type: str = "grpo", **kwargs: Any) -> None:
        check_hyperparameters(group_advantages, {"scale_rewards": scale_rewards})
        # Every reduction but RLOO's per-sequence sum.
        allowed = [t for t in LOSS_TYPES if t != "sequence"]
        if loss_type not in allowed:
            raise ConfigError(f"algo.loss_type={loss_type!r} is not one of: {', '.join(allowed)}")
        super().__init__(**kwargs)
        self.scale_rewards = scale_rewards
        self.loss_type = loss_type

    def score_rollout(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        advantages, _ = group_advantages(
            rollout.tensors["rewards"], self.num_generations, scale_rewards=self.scale_rewards
        )
        rollout.tensors["advantages"] = advantages
        return {}


class RLOO(_ClippedPolicyGradient):
    """REINFORCE Leave-One-Out (Ahmadian et al., 2024): each completion is one action, its baseline the
    mean reward of the prompt's other completions (`rloo_advantages`).

    The loss is ``-1/N sum_i sum_t min(rho_it A_i, clip(rho_it) A_i)``: at ``num_iterations=1`` (ratio 1)
    exactly REINFORCE on the sequence log-prob, Eq. 6 of the paper; with more passes the ratio is clipped.
    The KL to the reference (``beta``) is the paper's k1 penalty in the reward, ``r - beta * sum_t
    log(pi/pi_ref)`` (``kl_in_reward=true``), or a k3 term in the loss (``kl_in_reward=false``).

    Args:
        beta: KL weight.
        kl_in_reward: k1 in the reward (true) or k3 in the loss (false).
        normalize_advantages: Scale the advantages to unit std over the rollout.
        epsilon: Lower clip range (used when the ratio differs from 1: ``num_iterations > 1``).
        epsilon_high: Upper clip range (None: ``epsilon``).
        **kwargs: `OnlineObjective` arguments.
    """

    loss_type = "sequence"

    def __init__(
        self, beta: float = 0.05, kl_in_reward: bool = True, normalize_advantages: bool = False, **kwargs: Any
    ) -> None:
        self.kl_in_reward = kl_in_reward
        self.kl_in_loss = not kl_in_reward
        super().__init__(beta=beta, **kwargs)
        self.normalize_advantages = normalize_advantages

    @property
    def needs_sample_logps(self) -> bool:
        return self.kl_in_reward and self.beta > 0

    def loss_metric_names(self) -> set[str]:
        return {*super().loss_metric_names(), *(["kl/sequence"] if self.needs_sample_logps else [])}

    def score_rollout(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        rewards = rollout.tensors["rewards"]
        metrics = {}
        if self.kl_in_reward and self.beta > 0:
            k1 = kl_estimate(
                rollout.tensors["sample_logps"], rollout.tensors["reference_logps"], estimator="k1"
            )
            sequence_kl = (k1 * rollout.mask).sum(-1)
            rewards = rewards - self.beta * sequence_kl
            metrics["kl/sequence"] = sequence_kl.mean()
        advantages = rloo_advantages(rewards, self.num_generations)
        if self.normalize_advantages:
            advantages = advantages / (advantages.std() + 1e-4)
        rollout.tensors["advantages"] = advantages
        return metrics


class PPO(OnlineObjective):
    """PPO for RLHF (Ouyang et al., 2022) as in "The N+ implementation details of RLHF with PPO" (Huang et
    al., 2024) and TRL's PPOTrainer.

    Per rollout: the score (reward functions and models; ``missing_eos_penalty`` subtracted from
    completions without EOS) goes on the last token, ``-beta * (log pi_old - log pi_ref)`` (k1) on every
    token, optionally whitened (``whiten_rewards``); GAE (`gae_advantages`, ``gamma``, ``lam``) against
    the value model's estimates gives advantages (whitened over the rollout) and returns. Then
    ``num_ppo_epochs`` passes over shuffled mini-batches minimise ``pg_loss + vf_coef * vf_loss``: the
    clipped surrogate (``cliprange``) and the clipped value loss (``cliprange_value``), each a mean over
    the mini-batch's completion tokens.

    Args:
        beta: KL penalty coefficient (TRL's ``kl_coef``).
        gamma: Discount.
        lam: GAE lambda.
        cliprange: Policy ratio clip range.
        cliprange_value: Value clip range.
        vf_coef: Value loss weight.
        num_ppo_epochs: Passes over each rollout.
        whiten_rewards: Whiten the per-token rewards before GAE.
        missing_eos_penalty: Subtracted from the score of a completion that hit ``max_new_tokens`` (None: 0).
        value_model: The critic's initial weights: a local directory or hub id of a sequence classifier
            sharing the policy's tokenizer, e.g. a reward model trained from the same base (the N+ details
            initialise the critic from the reward model); None: the policy's own weights with a new value
            head.
        **kwargs: `OnlineObjective` arguments (``num_generations`` defaults to 1).
    """

    def __init__(
        self,
        beta: float = 0.05,
        gamma: float = 1.0,
        lam: float = 0.95,
        cliprange: float = 0.2,
        cliprange_value: float = 0.2,
        vf_coef: float = 0.1,
        num_ppo_epochs: int = 4,
        whiten_rewards: bool = False,
        missing_eos_penalty: float | None = None,
        value_model: str | None = None,
        num_generations: int = 1,
        **kwargs: Any,
    ) -> None:
        check_hyperparameters(gae_advantages, {"gamma": gamma, "lam": lam})
        CLIP_RANGE.check("algo.cliprange", cliprange)
        check_hyperparameters(clipped_value_loss, {"cliprange_value": cliprange_value})
        check_range("algo.vf_coef", vf_coef, 0.0)
        check_range("algo.num_ppo_epochs", num_ppo_epochs, 1)
        self.num_ppo_epochs = num_ppo_epochs
        super().__init__(beta=beta, num_generations=num_generations, **kwargs)
        self.gamma, self.lam = gamma, lam
        self.cliprange, self.cliprange_value, self.vf_coef = cliprange, cliprange_value, vf_coef
        self.whiten_rewards = whiten_rewards
        self.missing_eos_penalty = missing_eos_penalty
        self.value_model_path = value_model

    @property
    def passes(self) -> int:
        return self.num_ppo_epochs

    @property
    def needs_sample_logps(self) -> bool:
        return True

    def companion_specs(self) -> dict[str, Companion]:
        specs = super().companion_specs()
        path = self.value_model_path
        spec = self.model_spec if path is None else self.reward_model_spec(path)
        # The critic reads the policy's token ids, so it must tokenise exactly like the policy.
        specs["value_model"] = Companion(
            spec, task="sequence_classification", trainable=True, same_vocabulary=path is not None
        )
        return specs

    def loss_metric_names(self) -> set[str]:
        return {*super().loss_metric_names(), "value_loss", "value_clipfrac", "approx_kl", "advantages/mean"}

    def _values(self, rollout: Rollout) -> torch.Tensor:
        """``[n, L]`` value of the state before each completion token (read at the token before it)."""
        values = self.companions["value_model"](rollout.sequences)
        width, length = rollout.prompt_width, rollout.mask.shape[1]
        return values[:, width - 1 : width - 1 + length].float()

    def mini_batch_order(self, rollout: Rollout, pass_index: int) -> torch.Tensor:
        generator = self._generator(2, int(self.rollouts_done) * self.passes + pass_index)
        return torch.randperm(rollout.size, generator=generator, device=self.device)

    def score_rollout(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        mask = rollout.mask
        values = self._chunked(rollout, self._values) * mask
        scores = rollout.tensors["rewards"].clone()
        if self.missing_eos_penalty is not None:
            scores = scores - self.missing_eos_penalty * rollout.tensors["truncated"].float()
        rewards = torch.zeros_like(values)
        if "reference_logps" in rollout.tensors:
            k1 = kl_estimate(
                rollout.tensors["sample_logps"], rollout.tensors["reference_logps"], estimator="k1"
            )
            rewards = -self.beta * k1 * mask
        last = (mask.sum(1) - 1).clamp(min=0)
        rows = torch.arange(mask.shape[0], device=mask.device)
        has_tokens = mask.any(1)
        rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens]
        if self.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae_advantages(rewards, values, mask, gamma=self.gamma, lam=self.lam)
        metrics = {"advantages/mean": masked_mean(advantages, mask)}
        rollout.tensors.update(advantages=masked_whiten(advantages, mask), returns=returns, values=values)
        return metrics

    def micro_loss(
        self, part: Rollout, totals: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps, entropies = self.token_stats(part, entropy=True)
        old_logps = part.tensors["old_logps"]
        surrogate = clipped_surrogate(
            logps, old_logps, part.tensors["advantages"], part.mask, epsilon=self.cliprange
        )
        new_values = self._values(part)
        value_losses, value_clipped = clipped_value_loss(
            new_values,
            part.tensors["values"],
            part.tensors["returns"],
            part.mask,
            cliprange_value=self.cliprange_value,
        )
        tokens = totals["tokens"]
        policy_loss = reduce_token_losses(surrogate.losses, part.mask, loss_type="bnpo", num_tokens=tokens)
        value_loss = reduce_token_losses(value_losses, part.mask, loss_type="bnpo", num_tokens=tokens)
        share = self._token_share(part, totals)
        log_ratio = (logps.detach() - old_logps) * part.mask
        metrics = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "value_clipfrac": masked_mean(value_clipped.float(), part.mask) * share,
            "approx_kl": 0.5 * masked_mean(log_ratio.square(), part.mask) * share,
            "clip_ratio/low": masked_mean(surrogate.low_clipped.float(), part.mask) * share,
            "clip_ratio/high": masked_mean(surrogate.high_clipped.float(), part.mask) * share,
            **self._shared_token_metrics(part, totals, entropies, self._kl_terms(part, logps)),
        }
        return policy_loss + self.vf_coef * value_loss, metrics
