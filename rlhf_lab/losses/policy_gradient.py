"""Policy-gradient losses for online RL (RLOO, GRPO and its variants, PPO) as pure functions.

Per-token tensors are ``[N, L]`` over the completion tokens of ``N`` sampled completions (``mask`` True
at a completion's tokens, EOS included). Completions come in groups of ``G = num_generations`` consecutive
rows, all answering the same prompt.

- Advantages: `group_advantages` (GRPO, Shao et al., 2024, Eq. 3 of the DeepSeekMath paper, with the
  std scaling made optional as in Dr. GRPO, Liu et al., 2025), `rloo_advantages` (Ahmadian et al., 2024,
  Eq. 6: the leave-one-out baseline) and `gae_advantages` (Schulman et al., 2016, as PPO uses it).
- The clipped surrogate of PPO (Schulman et al., 2017, Eq. 7) with DAPO's decoupled upper bound
  (``epsilon_high``, Yu et al., 2025) and GSPO's sequence-level ratio (Zheng et al., 2025): `clipped_surrogate`.
- KL estimators k1/k2/k3 (Schulman, 2020, "Approximating KL divergence"): `kl_estimate`.
- How per-token losses become one number: `reduce_token_losses` (``grpo``, ``dr_grpo``, ``dapo``,
  ``bnpo``, ``sequence``), given the totals of the whole optimisation batch so that splitting it into
  micro-batches (gradient accumulation) and summing their results is exact.
- PPO's clipped value loss and masked whitening (Huang et al., 2024, "The N+ implementation details of
  RLHF with PPO"): `clipped_value_loss`, `masked_whiten`.

The online objective picks its policy loss from `POLICY_LOSSES` (``algo.policy_loss``) and its
aggregation from `LOSS_AGGREGATIONS` (``algo.loss_agg_mode``, verl's names; TRL's ``loss_type`` names are
aliases); its advantage estimators live in `rlhf_lab.losses.advantages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhf_lab.losses.hyperparameters import NON_NEGATIVE, OneOf, Range, hyperparameters
from rlhf_lab.losses.registry import Registry, logs

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "sequence")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")
#: A clip range: 0 < epsilon < 1 (a ratio bound of 1 - epsilon must stay positive).
CLIP_RANGE = Range(0.0, 1.0, low_inclusive=False, high_inclusive=False)
#: Added to a standard deviation before dividing by it (TRL uses 1e-4 for GRPO's advantages).
STD_EPS = 1e-4


def _grouped(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    if rewards.ndim != 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"rewards of shape {tuple(rewards.shape)} do not split into groups of num_generations={num_generations}"
        )
    return rewards.view(-1, num_generations)


@hyperparameters(scale_rewards=OneOf(SCALE_REWARDS))
def group_advantages(
    rewards: torch.Tensor, num_generations: int, *, scale_rewards: str = "group"
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's group-relative advantages ``A_i = (r_i - mean_group(r)) / (std + 1e-4)``.

    Args:
        rewards: ``[N]`` rewards, ``N = prompts * num_generations``, groups consecutive.
        num_generations: ``G``.
        scale_rewards: ``group`` divides by each group's std (the paper), ``batch`` by the std of all ``N``
            rewards, ``none`` not at all (Dr. GRPO: the std scaling biases towards easy and hard prompts).

    Returns:
        ``[N]`` advantages and ``[N/G]`` per-group reward std (unbiased, as ``torch.std``).
    """
    grouped = _grouped(rewards, num_generations)
    group_std = (
        grouped.std(1) if num_generations > 1 else torch.zeros(grouped.shape[0], device=rewards.device)
    )
    centred = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale_rewards == "group":
        return centred / (group_std.repeat_interleave(num_generations) + STD_EPS), group_std
    if scale_rewards == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        return centred / (batch_std + STD_EPS), group_std
    return centred, group_std


def rloo_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """RLOO's advantages: each sample's reward minus the mean reward of the other ``G - 1`` samples.

    ``A_i = r_i - 1/(G-1) * sum_{j != i} r_j`` (Ahmadian et al., 2024, Eq. 6), an unbiased baseline since
    it does not depend on sample ``i``. Needs ``G >= 2``.
    """
    if num_generations < 2:
        raise ValueError("the leave-one-out baseline needs num_generations >= 2")
    grouped = _grouped(rewards, num_generations)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (num_generations - 1)
    return (grouped - baseline).reshape(-1)


@hyperparameters(estimator=OneOf(KL_ESTIMATORS))
def kl_estimate(logps: torch.Tensor, reference_logps: torch.Tensor, *, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from samples of ``pi`` (Schulman, 2020).

    With ``log_ratio = log pi_ref - log pi``: ``k1 = -log_ratio`` (unbiased, can be negative),
    ``k2 = log_ratio**2 / 2``, ``k3 = exp(log_ratio) - log_ratio - 1`` (unbiased and >= 0; GRPO's Eq. 4).
    """
    log_ratio = reference_logps - logps
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    return torch.exp(log_ratio) - log_ratio - 1


@dataclass
class ClippedSurrogate:
    """Per-token clipped-surrogate losses and what the clipping did.

    Attributes:
        losses: ``[N, L]`` ``-min(rho * A, clip(rho) * A)`` (0 off the mask).
        ratio: ``[N, L]`` importance ratio ``rho`` (detached).
        low_clipped: ``[N, L]`` True where ``rho < 1 - epsilon`` with ``A < 0`` (the clip binds from below).
        high_clipped: ``[N, L]`` True where ``rho > 1 + epsilon_high`` with ``A > 0``.
        flags: ``[N, L]`` bool tensors a loss adds (names it declares with `rlhf_lab.losses.registry.logs`),
            logged as their share of the step's tokens (``clip_ratio/dual``: the dual clip bound).
    """

    losses: torch.Tensor
    ratio: torch.Tensor
    low_clipped: torch.Tensor
    high_clipped: torch.Tensor
    flags: dict[str, torch.Tensor] = field(default_factory=dict)


#: Policy losses by name: ``(logps, old_logps, advantages, mask, **hyperparameters) -> ClippedSurrogate``.
POLICY_LOSSES = Registry("algo.policy_loss")


@POLICY_LOSSES.register("ppo_clip", "vanilla")
@logs("clip_ratio/dual")
@hyperparameters(
    epsilon=CLIP_RANGE,
    epsilon_high=Range(0.0, None, low_inclusive=False),
    importance_sampling_level=OneOf(IMPORTANCE_SAMPLING_LEVELS),
    clip_ratio_c=Range(1.0, None, low_inclusive=False),
)
def clipped_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    importance_sampling_level: str = "token",
    clip_ratio_c: float | None = None,
) -> ClippedSurrogate:
    """PPO's clipped surrogate ``-min(rho A, clip(rho, 1 - eps, 1 + eps_high) A)`` per token, with the
    dual-clip bound of Ye et al. (2020, "Mastering complex control in MOBA games with deep RL"; verl's
    ``clip_ratio_c``): where ``A < 0`` the loss is also capped at ``-clip_ratio_c * A``, so a ratio far above
    1 on a bad token cannot make an unbounded step (logged as ``clip_ratio/dual``, verl's
    ``pg_clipfrac_lower``).

    Args:
        logps: ``[N, L]`` log-probs of the sampled tokens under the policy being optimised.
        old_logps: ``[N, L]`` the same under the policy that sampled them (detached).
        advantages: ``[N]`` per-sequence or ``[N, L]`` per-token advantages.
        mask: ``[N, L]`` completion tokens.
        epsilon: Lower clip range (and upper, unless ``epsilon_high``).
        epsilon_high: DAPO's clip-higher upper bound (None: ``epsilon``).
        importance_sampling_level: ``token`` (``rho_t = pi/pi_old`` per token) or ``sequence`` (GSPO:
            ``rho = exp(mean_t log(pi/pi_old))``, one length-normalised ratio per sequence, shared by its
            tokens).
        clip_ratio_c: The dual-clip constant (> 1; verl's default 3.0); None: no dual clip (TRL).
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    on = mask.bool()
    # `where`, not a product with the mask: padding log-probs may be -inf, and -inf * 0 is NaN.
    log_ratio = torch.where(on, logps - old_logps, 0.0)
    if importance_sampling_level == "sequence":
        mean = log_ratio.sum(-1) / on.sum(-1).clamp(min=1).to(logps.dtype)
        log_ratio = mean.unsqueeze(-1).expand_as(logps)
    ratio = torch.exp(log_ratio)
    if advantages.ndim == 1:
        advantages = advantages.unsqueeze(-1)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    losses = -torch.min(ratio * advantages, clipped * advantages)
    dual = torch.zeros_like(on)
    if clip_ratio_c is not None:
        bound = -clip_ratio_c * advantages
        dual = (advantages < 0) & (losses.detach() > bound) & on
        losses = torch.where(advantages < 0, torch.min(losses, bound), losses)
    losses = torch.where(on, losses, 0.0)
    ratio = ratio.detach()
    return ClippedSurrogate(
        losses=losses,
        ratio=ratio,
        low_clipped=(ratio < 1 - epsilon) & (advantages < 0) & on,
        high_clipped=(ratio > 1 + epsilon_high) & (advantages > 0) & on,
        flags={"clip_ratio/dual": dual},
    )


@hyperparameters(loss_type=OneOf(LOSS_TYPES), max_completion_length=Range(1, None))
def reduce_token_losses(
    losses: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    num_sequences: float | None = None,
    num_tokens: float | None = None,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """This batch's share of the loss of the whole optimisation batch, for each normalisation.

    Summing the results over the micro-batches of one optimiser step gives the loss of the whole step
    batch, so gradient accumulation is exact for every ``loss_type``:

    - ``grpo``: each sequence's token mean, averaged over sequences (the paper's ``1/G sum 1/|o_i| sum_t``);
    - ``dr_grpo``: token sum over ``num_sequences * max_completion_length`` (Dr. GRPO: a constant, so no
      length bias);
    - ``dapo``: token sum over ``num_tokens`` of the whole batch, every process included (DAPO's
      token-level loss);
    - ``bnpo``: token sum over ``num_tokens`` of this process's batch (its micro-batches together);
    - ``sequence``: each sequence's token sum, averaged over sequences (RLOO: the completion is one action).

    Args:
        losses: ``[N, L]`` per-token losses.
        mask: ``[N, L]`` completion tokens.
        loss_type: One of `LOSS_TYPES`.
        num_sequences: Sequences in the whole optimisation batch (default: this batch's).
        num_tokens: Completion tokens the ``dapo``/``bnpo`` normaliser counts (default: this batch's).
        max_completion_length: ``dr_grpo``'s constant (``max_new_tokens``).
    """
    on = mask.bool()
    mask = on.to(losses.dtype)
    sequences = float(losses.shape[0]) if num_sequences is None else float(num_sequences)
    per_sequence = torch.where(on, losses, 0.0).sum(-1)
    if loss_type == "grpo":
        return (per_sequence / mask.sum(-1).clamp(min=1.0)).sum() / sequences
    if loss_type == "sequence":
        return per_sequence.sum() / sequences
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type=dr_grpo needs max_completion_length")
        return per_sequence.sum() / (sequences * max_completion_length)
    tokens = float(mask.sum()) if num_tokens is None else float(num_tokens)
    return per_sequence.sum() / max(tokens, 1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (0 when nothing is; off-mask NaN/inf ignored)."""
    on = mask.bool()
    return torch.where(on, values, 0.0).sum() / on.sum().clamp(min=1).to(values.dtype)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``values`` to unit variance (and zero mean, with ``shift_mean``) over the masked entries.

    The variance is the unbiased masked variance, as TRL's ``masked_whiten``; off-mask entries come out 0.
    """
    mask_f = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    count = mask_f.sum()
    variance = ((values - mean).square() * mask_f).sum() / (count - 1).clamp(min=1.0)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask_f


@hyperparameters(gamma=Range(0.0, 1.0), lam=Range(0.0, 1.0))
def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each completion (Schulman et al., 2016, Eq. 16).

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, with ``V`` and ``r`` zero
    past a completion's end (the episode ends with its last token), and returns ``R_t = A_t + V_t``.

    Args:
        rewards: ``[N, L]`` per-token rewards (the KL penalty, and the score on the last token).
        values: ``[N, L]`` value of the state before each token.
        mask: ``[N, L]`` completion tokens (a prefix of each row).

    Returns:
        ``[N, L]`` advantages and returns (0 off the mask), detached.
    """
    mask_f = mask.to(values.dtype)
    rewards, values = rewards.detach() * mask_f, values.detach() * mask_f
    length = rewards.shape[1]
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask_f
    return advantages, (advantages + values) * mask_f


@hyperparameters(cliprange_value=NON_NEGATIVE)
def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange_value: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss per token: ``0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2)``.

    Returns:
        ``[N, L]`` losses (0 off the mask) and ``[N, L]`` True where the clipped term was the larger one.
    """
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns).square()
    clipped_loss = (clipped - returns).square()
    mask_f = mask.to(values.dtype)
    return 0.5 * torch.max(unclipped_loss, clipped_loss) * mask_f, (
        clipped_loss > unclipped_loss
    ) & mask.bool()


# ------------------------------------------------------------------------------ registered policy losses
@POLICY_LOSSES.register("gspo")
@hyperparameters(epsilon=CLIP_RANGE, epsilon_high=Range(0.0, None, low_inclusive=False))
def gspo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 3e-4,
    epsilon_high: float | None = 4e-4,
) -> ClippedSurrogate:
    """GSPO (Zheng et al., 2025, Eq. 5-7): one length-normalised ratio ``exp(mean_t log(pi/pi_old))`` per
    sequence, clipped; the paper's clip ranges (3e-4, 4e-4) are the defaults."""
    return clipped_surrogate(
        logps,
        old_logps,
        advantages,
        mask,
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        importance_sampling_level="sequence",
    )


# ---------------------------------------------------------------------------- registered aggregations
@dataclass(frozen=True)
class StepTotals:
    """Counts of one optimiser step's whole batch, known before its first micro-batch.

    Attributes:
        sequences: Completions of this process's step batch.
        tokens: Their completion tokens (in the loss mask).
        global_tokens: Completion tokens of every process's step batch.
        world_size: Processes (data parallelism averages their gradients).
        max_completion_length: ``max_new_tokens`` (Dr. GRPO's constant).
        policy_tokens: Tokens of this process's step batch the policy loss trains (the high-entropy ones
            under ``top_entropy_quantile``; None: all), the entropy bonus's normaliser.
    """

    sequences: float
    tokens: float
    global_tokens: float
    world_size: int = 1
    max_completion_length: int = 1
    policy_tokens: float | None = None


#: Aggregations by name: ``(losses [N, L], mask [N, L], totals: StepTotals) -> this micro-batch's share``.
LOSS_AGGREGATIONS = Registry("algo.loss_agg_mode")


@LOSS_AGGREGATIONS.register("token_mean", "bnpo")
def token_mean(losses: torch.Tensor, mask: torch.Tensor, totals: StepTotals) -> torch.Tensor:
    """Token sum over the step batch's tokens on this process (BNPO; verl's ``token-mean``)."""
    return reduce_token_losses(losses, mask, loss_type="bnpo", num_tokens=totals.tokens)


@LOSS_AGGREGATIONS.register("token_mean_global", "dapo")
def token_mean_global(losses: torch.Tensor, mask: torch.Tensor, totals: StepTotals) -> torch.Tensor:
    """Token sum over every process's tokens (DAPO's token-level loss), times the world size because data
    parallelism averages the processes' gradients."""
    share = reduce_token_losses(losses, mask, loss_type="dapo", num_tokens=totals.global_tokens)
    return share * totals.world_size


@LOSS_AGGREGATIONS.register("seq_mean_token_mean", "grpo")
def seq_mean_token_mean(losses: torch.Tensor, mask: torch.Tensor, totals: StepTotals) -> torch.Tensor:
    """Each sequence's token mean, averaged over sequences (GRPO as in the paper)."""
    return reduce_token_losses(losses, mask, loss_type="grpo", num_sequences=totals.sequences)


@LOSS_AGGREGATIONS.register("seq_mean_token_sum", "sequence")
def seq_mean_token_sum(losses: torch.Tensor, mask: torch.Tensor, totals: StepTotals) -> torch.Tensor:
    """Each sequence's token sum, averaged over sequences (RLOO: the completion is one action)."""
    return reduce_token_losses(losses, mask, loss_type="sequence", num_sequences=totals.sequences)


@LOSS_AGGREGATIONS.register("seq_mean_token_sum_norm", "dr_grpo")
def seq_mean_token_sum_norm(losses: torch.Tensor, mask: torch.Tensor, totals: StepTotals) -> torch.Tensor:
    """Token sum over ``sequences * max_completion_length`` (Dr. GRPO: a constant normaliser)."""
    return reduce_token_losses(
        losses,
        mask,
        loss_type="dr_grpo",
        num_sequences=totals.sequences,
        max_completion_length=totals.max_completion_length,
    )


# CISPO and SAPO live beside (this module is at its size limit); importing them registers them.
from rlhf_lab.losses import surrogates  # noqa: E402, F401
