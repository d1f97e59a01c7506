"""The arithmetic of one online-RL update, as functions of a `Rollout` and the registered `RLParts`.

`correct_sampler` weights the rollout's tokens by the trainer/sampler importance ratio (and measures the
mismatch); `shape_rewards` folds the KL penalty, the missing-EOS penalty and DAPO's overlong punishment
into the rewards; `estimate_advantages` runs the estimator on them; `micro_batch_loss` is one
micro-batch's share of an optimiser step's loss (the policy loss on the trained tokens, the KL term, the
entropy bonus, the critic's value loss) and its metrics, each weighted by the micro-batch's share of the
step's tokens so that summing over micro-batches gives the step's values.
"""

from __future__ import annotations

import torch

from rlhf_lab.losses.correction import importance_weights, mismatch_metrics
from rlhf_lab.losses.hyperparameters import tensor_inputs
from rlhf_lab.losses.policy_gradient import StepTotals, clipped_value_loss, kl_estimate, masked_mean
from rlhf_lab.rl.controls import Controls
from rlhf_lab.rl.parts import RLParts
from rlhf_lab.rl.rollout import Rollout


def correct_sampler(rollout: Rollout, controls: Controls) -> dict[str, torch.Tensor]:
    """Fill ``rollout.is_weights`` under ``importance_sampling_correction``, and return the sampler/trainer
    mismatch metrics whenever the rollout has both log-probs (nothing otherwise). Once per rollout, before
    any update: the weights and metrics do not depend on the micro-batch split."""
    if rollout.old_logps is None or rollout.sampler_logps is None:
        return {}
    old, sampler, mask = rollout.old_logps.float(), rollout.sampler_logps.float(), rollout.mask
    correction = None
    if controls.importance_sampling_correction is not None:
        mode, cap = controls.importance_sampling_correction, controls.importance_sampling_cap
        correction = importance_weights(old, sampler, mask, mode=mode, cap=cap)
        rollout.is_weights = correction.weights
    return mismatch_metrics(old, sampler, mask, correction)


def shape_rewards(
    rollout: Rollout,
    *,
    beta: float,
    kl_in_reward: bool,
    missing_eos_penalty: float | None,
    controls: Controls = Controls(),  # noqa: B008 - frozen
    max_new_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``[N]`` rewards, ``[N]`` scores and ``[N, L]`` token rewards of a scored rollout.

    A completion's reward (minus ``missing_eos_penalty`` without EOS, plus DAPO's overlong punishment of
    its length) goes on its last token; with ``kl_in_reward`` every token also gets ``-beta * k`` (k1 =
    ``log pi_old - log pi_ref`` unless ``kl_estimator`` says otherwise) and the score is the sum of its token
    rewards (logged as ``kl/sequence``: the mean summed estimate).
    """
    mask = rollout.mask
    rewards = rollout.require("rewards")
    if missing_eos_penalty is not None:
        rewards = rewards - missing_eos_penalty * rollout.require("truncated").float()
    if controls.overlong_buffer_len:
        lengths = rollout.sequences.attention_mask[:, rollout.prompt_width :].sum(1)
        rewards = rewards + controls.overlong_penalty(lengths, max_new_tokens).to(rewards.dtype)
    token_rewards = torch.zeros(mask.shape, device=mask.device)
    scores, metrics = rewards, {}
    if kl_in_reward and rollout.reference_logps is not None:
        estimator = controls.reward_kl()
        k = kl_estimate(rollout.require("old_logps"), rollout.reference_logps, estimator=estimator) * mask
        token_rewards = -beta * k
        sequence_kl = k.sum(-1)
        scores = rewards - beta * sequence_kl
        metrics["kl/sequence"] = sequence_kl.mean()
    last = (mask.sum(1) - 1).clamp(min=0)
    rows = torch.arange(mask.shape[0], device=mask.device)
    ended = mask.any(1)
    token_rewards[rows[ended], last[ended]] += rewards[ended]
    return rewards, scores, token_rewards, metrics


def estimate_advantages(
    parts: RLParts,
    rollout: Rollout,
    shaped: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    num_generations: int,
) -> dict[str, torch.Tensor]:
    """Fill ``rollout.advantages`` (and ``returns``) with the estimator's, given `shape_rewards`'s
    ``(rewards, scores, token_rewards)``; returns its metrics."""
    rewards, scores, token_rewards = shaped
    available = {
        "scores": scores,
        "token_rewards": token_rewards,
        "mask": rollout.mask,
        "values": rollout.values,
        "num_generations": num_generations,
        "rewards": rewards,
        "baseline_rewards": rollout.baseline_rewards,
    }
    inputs = {name: available[name] for name in tensor_inputs(parts.estimator)}
    out = parts.estimator(**inputs, **parts.estimator_kwargs)
    rollout.advantages, rollout.returns = out.advantages, out.returns
    return dict(out.metrics)


def micro_batch_loss(
    parts: RLParts,
    part: Rollout,
    logps: torch.Tensor,
    entropies: torch.Tensor,
    values: torch.Tensor | None,
    totals: StepTotals,
    *,
    beta: float,
    kl_in_reward: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's share of the optimiser step's loss and metrics.

    Args:
        parts: The run's estimator, policy loss and aggregation.
        part: The micro-batch's rows of the rollout.
        logps: ``[n, L]`` the policy's log-probs of the sampled tokens (with gradient).
        entropies: ``[n, L]`` its entropies.
        values: ``[n, L]`` the critic's values (with gradient; None without a critic).
        totals: The optimiser step's totals.
        beta: The KL weight (a k3 term in the loss unless ``kl_in_reward``).
    """
    mask = part.mask
    old_logps = part.old_logps if part.old_logps is not None else logps.detach()
    surrogate = parts.policy_loss(
        logps, old_logps, part.require("advantages"), mask, **parts.policy_loss_kwargs
    )
    share = float(mask.sum()) / max(totals.tokens, 1.0)

    def aggregate(losses: torch.Tensor) -> torch.Tensor:
        return parts.aggregate(losses, mask, totals)

    # 80/20: the other tokens leave the policy loss only, not its normaliser (as TRL's entropy mask).
    trained = mask if part.token_mask is None else mask & part.token_mask
    per_token = torch.where(trained, sampler_weighted(surrogate.losses, part), 0.0)
    log_ratio = (logps.detach() - old_logps) * mask
    metrics = {
        "policy_loss": aggregate(per_token.detach()),
        "clip_ratio/low": masked_mean(surrogate.low_clipped.float(), mask) * share,
        "clip_ratio/high": masked_mean(surrogate.high_clipped.float(), mask) * share,
        "approx_kl": 0.5 * masked_mean(log_ratio.square(), mask) * share,
        "entropy": masked_mean(entropies.detach(), mask) * share,
    }
    for name in parts.policy_metrics():
        metrics[name] = masked_mean(surrogate.flags[name].float(), mask) * share
    if part.reference_logps is not None:
        kl = kl_estimate(logps, part.reference_logps, estimator="k3")
        metrics["kl"] = masked_mean(kl.detach(), mask) * share  # k3 whatever the loss uses: comparable
        if not kl_in_reward:
            per_token = per_token + beta * _loss_kl(parts, logps, part.reference_logps, kl) * mask
    loss = aggregate(per_token)
    if parts.controls.entropy_coef:
        # ``- coef * H``, H the mean entropy of the step's trained tokens (TRL's entropy bonus).
        bonus = torch.where(trained, entropies, 0.0).sum() / max(totals.policy_tokens or totals.tokens, 1.0)
        loss = loss - parts.controls.entropy_coef * bonus
    if values is not None:
        value_loss, metrics["value_clipfrac"] = _value_loss(parts, part, values, totals)
        metrics["value_loss"] = value_loss.detach()
        loss = loss + parts.vf_coef * value_loss
    return loss, metrics


def sampler_weighted(losses: torch.Tensor, part: Rollout) -> torch.Tensor:
    """The per-token policy ``losses`` times the sampler correction's weights (``part.is_weights``; as TRL's,
    the policy loss only, not the KL term, and the normaliser unchanged)."""
    return losses if part.is_weights is None else losses * part.is_weights.to(losses.dtype)


def _loss_kl(parts: RLParts, logps: torch.Tensor, reference: torch.Tensor, k3: torch.Tensor) -> torch.Tensor:
    """The per-token KL term of the loss: ``kl_estimator``'s estimate (k3 by default, already computed)."""
    estimator = parts.controls.loss_kl()
    return k3 if estimator == "k3" else kl_estimate(logps, reference, estimator=estimator)


def _value_loss(
    parts: RLParts, part: Rollout, values: torch.Tensor, totals: StepTotals
) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's clipped value loss (aggregated like the policy loss) and its clip fraction's share."""
    mask = part.mask
    value_losses, clipped = clipped_value_loss(
        values, part.require("values"), part.require("returns"), mask, **parts.value_loss_kwargs
    )
    share = float(mask.sum()) / max(totals.tokens, 1.0)
    return parts.aggregate(value_losses, mask, totals), masked_mean(clipped.float(), mask) * share
