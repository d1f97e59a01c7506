"""ORPO: odds-ratio preference term added to the NLL of the chosen completion.

Hong et al., 2024, "ORPO: Monolithic Preference Optimization without Reference Model", Eq. 4-7.
With per-token mean log-probs ``lp`` (Eq. 4's ``P(y|x)`` is the length-normalised likelihood),

    odds(y|x) = P / (1 - P)
    log_odds  = (lp_c - lp_r) - (log(1 - exp(lp_c)) - log(1 - exp(lp_r)))        (Eq. 7)
    L_OR      = -log sigma(log_odds)
    L         = NLL(y_c) + lambda * L_OR                                           (Eq. 6)

``log(1 - exp(x))`` is computed stably (``log(-expm1(x))`` near 0, ``log1p(-exp(x))`` below -ln 2).
TRL calls ``lambda`` ``beta``; here it is ``algo.lambda``. Rewards are ``lambda * lp`` (as TRL logs them);
``log_odds > 0`` exactly when ``lp_c > lp_r``, so ``rewards/accuracies`` is also the share of pairs the
odds-ratio term ranks correctly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlhf_lab.losses.dpo import PreferenceLossOutput
from rlhf_lab.losses.hyperparameters import NON_NEGATIVE, hyperparameters


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate across the range (Maechler, 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@hyperparameters(lambda_=NON_NEGATIVE)
def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    chosen_nll: torch.Tensor,
    *,
    lambda_: float = 0.1,
) -> PreferenceLossOutput:
    """ORPO loss (Eq. 6): ``NLL(y_c) - lambda * log sigma(log_odds)``.

    Args:
        policy_chosen_logps: ``[B]`` summed log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` summed log-probs of the rejected completions.
        chosen_lengths: ``[B]`` chosen completion token counts.
        rejected_lengths: ``[B]`` rejected completion token counts.
        chosen_nll: ``[B]`` per-token NLL of the chosen completions (prompt included with ORPO's
            ``nll_on_prompt``).
        lambda_: Weight of the odds-ratio term (``algo.lambda``).

    Returns:
        Losses ``[B]``, detached rewards ``lambda * lp`` and the metrics ``log_odds_ratio``
        (``log sigma(log_odds)``) and ``log_odds_chosen`` (``log_odds``), as TRL names them.

    Example:
        ``lp_c = ln 0.5``, ``lp_r = ln 0.25``: odds 1 and 1/3, ``log_odds = ln 3``,
        ``log sigma(ln 3) = ln 0.75``, odds-ratio term with ``lambda = 0.1``: ``-0.1 ln 0.75 = 0.0287682``,
        added to the NLL.
    """
    chosen_mean = policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected_mean = policy_rejected_logps / rejected_lengths.clamp(min=1)
    # Clamp below 0: a mean log-prob of exactly 0 (probability 1) has infinite odds.
    chosen_mean_c = chosen_mean.clamp(max=-1e-6)
    rejected_mean_c = rejected_mean.clamp(max=-1e-6)
    log_odds = (chosen_mean_c - rejected_mean_c) - (log1mexp(chosen_mean_c) - log1mexp(rejected_mean_c))
    ratio = F.logsigmoid(log_odds)
    return PreferenceLossOutput(
        losses=chosen_nll - lambda_ * ratio,
        chosen_rewards=(lambda_ * chosen_mean).detach(),
        rejected_rewards=(lambda_ * rejected_mean).detach(),
        metrics={
            "log_odds_ratio": ratio.detach().mean(),
            "log_odds_chosen": log_odds.detach().mean(),
        },
    )
