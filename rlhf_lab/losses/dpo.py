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

where IPO's ``h_bar`` uses length-normalised (per-token mean) log-probs, as TRL does; the paper's
derivation is on sequence log-probs, and the normalisation keeps ``1/(2 beta)`` on a sensible scale
for long completions. With ``loss_type="sigmoid"`` a non-zero ``label_smoothing`` gives cDPO.

Implicit rewards ``beta * (log pi - log pi_ref)`` are returned detached, per example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_lab.errors import check_choice, check_range


@dataclass
class PreferenceLossOutput:
    """Per-example losses and detached implicit rewards."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _sigmoid(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(
        -beta * logits
    )


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

LENGTH_NORMALISED = frozenset({"ipo"})


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """DPO loss for a batch of pairs.

    Args:
        policy_chosen_logps: ``[B]`` summed log-probs of the chosen completions under the policy.
        policy_rejected_logps: ``[B]`` same for the rejected completions.
        reference_chosen_logps: ``[B]`` summed log-probs of the chosen completions under the reference.
        reference_rejected_logps: ``[B]`` same for the rejected completions.
        beta: Inverse temperature (KL strength).
        loss_type: ``sigmoid``, ``robust``, ``hinge`` or ``ipo``.
        label_smoothing: Assumed preference-label noise ``eps`` (cDPO with ``sigmoid``, ``robust``).
        chosen_lengths: ``[B]`` completion token counts; required by ``ipo``.
        rejected_lengths: ``[B]`` completion token counts; required by ``ipo``.

    Returns:
        Per-example losses ``[B]`` and detached rewards ``beta * (logp - ref_logp)``.

    Example:
        Policy equal to the reference gives ``h = 0`` and the loss ``-log sigma(0) = ln 2``.
    """
    check_choice("algo.loss_type", loss_type, LOSS_TYPES)
    check_range("algo.beta", beta, 0.0, None, low_inclusive=False)
    check_range("algo.label_smoothing", label_smoothing, 0.0, 0.5, high_inclusive=False)
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    if loss_type in LENGTH_NORMALISED:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"loss_type={loss_type!r} needs chosen_lengths and rejected_lengths")
        logits = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(
            min=1
        )
    else:
        logits = chosen_logratios - rejected_logratios
    losses = LOSS_TYPES[loss_type](logits, beta, label_smoothing)
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
    )
