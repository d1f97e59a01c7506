"""DPO and its loss-type variants, as pure functions of per-sequence log-probs.

Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
Eq. 7. With the policy/reference log-ratio difference

    h = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x))

the variants are

    sigmoid  -log sigma(beta h)                                        (DPO, Eq. 7)
    cDPO     -(1-eps) log sigma(beta h) - eps log sigma(-beta h)       (Mitchell 2023, conservative DPO)
    robust   [-(1-eps) log sigma(beta h) + eps log sigma(-beta h)] / (1-2eps)
                                                                        (Chowdhury et al., 2024, Eq. 8)
    hinge    max(0, 1 - beta h)                                        (SLiC, Zhao et al., 2023)
    ipo      (h_bar - 1/(2 beta))^2                                    (Azar et al., 2023, Eq. 17)

where IPO's ``h_bar`` uses length-normalised (per-token mean) log-ratios, as TRL does; the paper's
derivation is on sequence log-probs, and the normalisation keeps ``1/(2 beta)`` on a sensible scale
for long completions. With ``loss_type="sigmoid"`` a non-zero ``label_smoothing`` gives cDPO. A list of
loss types is summed with ``loss_weights`` (as MPO, Wang et al., 2024, combines DPO-style terms), and
``sft_beta`` adds the chosen completion's NLL (ms-swift's SFT mixing).

Rewards are the quantity the loss compares, detached: ``beta * (log pi - log pi_ref)``, length-normalised
for ``ipo`` (so ``rewards/accuracies`` is the share of pairs the loss itself ranks correctly; TRL's
DPOTrainer logs IPO's rewards on summed log-ratios instead). With several loss types, the first one's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from rlhf_lab.errors import ConfigError
from rlhf_lab.losses.hyperparameters import (
    BETA,
    LABEL_SMOOTHING,
    NON_NEGATIVE,
    OneOf,
    hyperparameters,
)


@dataclass
class PreferenceLossOutput:
    """Per-example losses, detached implicit rewards and any loss-specific metrics (detached, means)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def sigmoid_loss(scaled_logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``-(1 - eps) log sigma(z) - eps log sigma(-z)``: the (label-smoothed) Bradley-Terry loss of ``z``."""
    losses = -F.logsigmoid(scaled_logits)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-scaled_logits)
    return losses


def _sigmoid(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return sigmoid_loss(beta * logits, label_smoothing)


def _robust(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return (
        -(1 - label_smoothing) * F.logsigmoid(beta * logits) + label_smoothing * F.logsigmoid(-beta * logits)
    ) / (1 - 2 * label_smoothing)


def _hinge(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return torch.relu(1 - beta * logits)


def _ipo(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return (logits - 1 / (2 * beta)) ** 2


LOSS_TYPES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "robust": _robust,
    "hinge": _hinge,
    "ipo": _ipo,
}

#: Loss types compared on per-token mean log-ratios.
LENGTH_NORMALISED = frozenset({"ipo"})


def _check_weights(values: Mapping[str, Any]) -> None:
    loss_type = values.get("loss_type", "sigmoid")
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = values.get("loss_weights")
    if weights is not None and len(weights) != len(types):
        raise ConfigError(f"algo.loss_weights={list(weights)} needs one weight per algo.loss_type={types}")


def nll_term(weight: float, chosen_nll: torch.Tensor | None, key: str) -> torch.Tensor | float:
    """``weight * NLL(y_c)``, or 0 when the weight is 0."""
    if not weight:
        return 0.0
    if chosen_nll is None:
        raise ValueError(f"{key}={weight} needs chosen_nll (the chosen completion's per-token NLL)")
    return weight * chosen_nll


@hyperparameters(
    check=_check_weights,
    beta=BETA,
    loss_type=OneOf(tuple(LOSS_TYPES), many=True),
    label_smoothing=LABEL_SMOOTHING,
    sft_beta=NON_NEGATIVE,
)
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    chosen_nll: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    loss_type: str | list[str] = "sigmoid",
    loss_weights: list[float] | None = None,
    label_smoothing: float = 0.0,
    sft_beta: float = 0.0,
) -> PreferenceLossOutput:
    """DPO loss for a batch of pairs.

    Args:
        policy_chosen_logps: ``[B]`` summed log-probs of the chosen completions under the policy.
        policy_rejected_logps: ``[B]`` same for the rejected completions.
        reference_chosen_logps: ``[B]`` summed log-probs of the chosen completions under the reference.
        reference_rejected_logps: ``[B]`` same for the rejected completions.
        chosen_lengths: ``[B]`` completion token counts; required by ``ipo``.
        rejected_lengths: ``[B]`` completion token counts; required by ``ipo``.
        chosen_nll: ``[B]`` per-token NLL of the chosen completions; required when ``sft_beta > 0``.
        beta: Inverse temperature (KL strength).
        loss_type: ``sigmoid``, ``robust``, ``hinge`` or ``ipo``, or a list of them.
        loss_weights: One weight per loss type (default: all 1); ``loss/<type>`` metrics when several.
        label_smoothing: Assumed preference-label noise ``eps`` (cDPO with ``sigmoid``, ``robust``).
        sft_beta: Weight of ``chosen_nll`` added to the loss.

    Returns:
        Per-example losses ``[B]`` and detached rewards (see the module docstring).

    Example:
        Policy equal to the reference gives ``h = 0`` and the loss ``-log sigma(0) = ln 2``.
    """
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = [1.0] * len(types) if loss_weights is None else list(loss_weights)
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    normalised = None
    if LENGTH_NORMALISED & set(types):
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"loss_type={loss_type!r} needs chosen_lengths and rejected_lengths")
        normalised = (
            chosen_logratios / chosen_lengths.clamp(min=1),
            rejected_logratios / rejected_lengths.clamp(min=1),
        )
    output = _weighted_losses(
        types, weights, (chosen_logratios, rejected_logratios), normalised, beta, label_smoothing
    )
    output.losses = output.losses + nll_term(sft_beta, chosen_nll, "algo.sft_beta")
    return output


def _weighted_losses(
    types: list[str],
    weights: list[float],
    summed: tuple[torch.Tensor, torch.Tensor],
    normalised: tuple[torch.Tensor, torch.Tensor] | None,
    beta: float,
    label_smoothing: float,
) -> PreferenceLossOutput:
    """``sum_i weight_i * loss_i`` over the loss types, each on the chosen and rejected log-ratios it compares
    (``normalised``: per-token means, for `LENGTH_NORMALISED` types; else ``summed``); the first type's
    rewards, and ``loss/<type>`` metrics when there are several."""
    total: torch.Tensor | float = 0.0
    metrics = {}
    for position, (name, weight) in enumerate(zip(types, weights, strict=True)):
        pair = normalised if name in LENGTH_NORMALISED else summed
        assert pair is not None
        chosen, rejected = pair
        losses = LOSS_TYPES[name](chosen - rejected, beta, label_smoothing)
        total = total + weight * losses
        if len(types) > 1:
            metrics[f"loss/{name}"] = losses.detach().mean()
        if position == 0:
            chosen_rewards, rejected_rewards = (beta * chosen).detach(), (beta * rejected).detach()
    assert isinstance(total, torch.Tensor)
    return PreferenceLossOutput(
        losses=total, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, metrics=metrics
    )
