"""Policy losses beyond PPO's clipped surrogate, registered in `POLICY_LOSSES` (``algo.policy_loss``).

- CISPO (MiniMax-M1, MiniMax, 2025, Eq. 4-5): clip the importance-sampling weight, not the update.
- SAPO (Soft Adaptive Policy Optimization, Gao et al., 2025, arXiv:2511.20347): a sigmoid gate in place of
  the hard clip.

Same signature as `rlhf_lab.losses.policy_gradient.clipped_surrogate`: ``(logps, old_logps, advantages,
mask, **hyperparameters) -> ClippedSurrogate``, per-token losses 0 off the mask.
"""

from __future__ import annotations

import torch

from rlhf_lab.losses.hyperparameters import POSITIVE, Range, hyperparameters
from rlhf_lab.losses.policy_gradient import POLICY_LOSSES, ClippedSurrogate
from rlhf_lab.losses.registry import logs


def _token_ratio(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(on, rho, A)``: the mask as bool, the per-token ratio (1 off the mask: padding log-probs may be
    -inf) and the advantages broadcastable to ``[N, L]``."""
    on = mask.bool()
    ratio = torch.exp(torch.where(on, logps - old_logps, 0.0))
    return on, ratio, advantages.unsqueeze(-1) if advantages.ndim == 1 else advantages


@POLICY_LOSSES.register("cispo")
@logs("cispo_clip_ratio")
@hyperparameters(epsilon_is_high=POSITIVE, epsilon_is_low=Range(0.0, 1.0, high_inclusive=False))
def cispo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_is_high: float = 4.0,
    epsilon_is_low: float | None = None,
) -> ClippedSurrogate:
    """CISPO (MiniMax-M1, Eq. 4-5): ``-sg(clip(rho, 1 - eps_low^IS, 1 + eps_high^IS)) * A * log pi``.

    The clipped importance weight is a constant (stop-gradient), so every token keeps its gradient
    ``-w A grad log pi`` (PPO's clip zeroes the gradient of tokens whose ratio left the trust region; the
    paper's point is that those are often rare, decisive tokens). The paper sets no lower bound
    (``epsilon_is_low=None``) and tunes only the upper one; TRL's ``loss_type="cispo"`` caps the weight at
    ``epsilon_high`` = 5.0 (ScaleRL's recommendation), which is ``epsilon_is_high=4.0`` here. At ``rho = 1``
    the gradient is the plain policy gradient. ``clip_ratio/high``: tokens with ``A > 0`` whose weight was
    capped (also logged under TRL's name, ``cispo_clip_ratio``); ``clip_ratio/low``: ``A < 0`` and the
    lower bound binds.
    """
    on, ratio, advantages = _token_ratio(logps, old_logps, advantages, mask)
    low = None if epsilon_is_low is None else 1 - epsilon_is_low
    weight = torch.clamp(ratio, min=low, max=1 + epsilon_is_high).detach()
    losses = torch.where(on, -weight * advantages * logps, 0.0)
    ratio = ratio.detach()
    low_clipped = (ratio < low) if low is not None else torch.zeros_like(on)
    high_clipped = (ratio > 1 + epsilon_is_high) & (advantages > 0) & on
    return ClippedSurrogate(
        losses=losses,
        ratio=ratio,
        low_clipped=low_clipped & (advantages < 0) & on,
        high_clipped=high_clipped,
        flags={"cispo_clip_ratio": high_clipped},
    )


@POLICY_LOSSES.register("sapo")
@hyperparameters(tau_pos=POSITIVE, tau_neg=POSITIVE)
def sapo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> ClippedSurrogate:
    """SAPO (arXiv:2511.20347): ``-f(rho) A`` with the soft gate ``f(rho) = 4/tau sigmoid(tau (rho - 1))``.

    ``f(1) = 2/tau`` and ``f'(1) = 1``: on-policy the gradient is the plain policy gradient; off-policy it
    decays smoothly (``f' = 4 sigmoid' (tau (rho - 1))``) instead of dropping to 0 at a hard bound.
    ``tau = tau_pos`` where ``A > 0``, else ``tau_neg`` (the paper: a larger temperature for negative
    advantages, whose off-policy updates are the less stable). TRL's ``loss_type="sapo"`` with
    ``sapo_temperature_pos`` / ``sapo_temperature_neg`` (accepted as aliases); defaults as TRL's. No hard clip:
    ``clip_ratio/*`` are 0.
    """
    on, ratio, advantages = _token_ratio(logps, old_logps, advantages, mask)
    tau = torch.where(advantages > 0, tau_pos, tau_neg)
    gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    losses = torch.where(on, -gate * advantages, 0.0)
    never = torch.zeros_like(on)
    return ClippedSurrogate(losses=losses, ratio=ratio.detach(), low_clipped=never, high_clipped=never)
