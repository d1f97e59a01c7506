"""Importance-sampling correction of the sampler/trainer mismatch, as pure functions.

The rollout engine (vLLM, SGLang) samples completions from ``mu``, its own numerics of the policy, and reports
their log-probs; the trainer's teacher-forced log-probs are those of ``pi_old``. The two differ (kernels,
precision, batch-dependent reductions), so the "on-policy" gradient is in fact off-policy. Truncated
importance sampling (TIS; Yao et al., 2025, "Your efficient RL framework secretly brings you off-policy RL
training") weights each token's policy loss by ``min(pi_old / mu, C)``; masked importance sampling (MIS, as
TRL's ``*_mask`` modes and verl's rollout correction) drops the tokens (or sequences) whose ratio exceeds
``C`` instead. The modes are TRL's ``vllm_importance_sampling_mode`` (its ``GRPOTrainer`` lines,
reproduced in ``tests/test_is_correction.py``):

- ``token_truncate``: ``w_t = min(rho_t, C)``, ``rho_t = pi_old(o_t | ...) / mu(o_t | ...)``;
- ``token_mask``: ``w_t = rho_t`` where ``rho_t <= C``, else 0;
- ``sequence_truncate``: ``w = min(rho, C)`` for every token of the sequence, ``rho = prod_t rho_t``;
- ``sequence_mask``: ``w = rho`` where ``rho <= C``, else 0, for every token of the sequence.

The weight is a constant (computed without gradient, once per rollout) multiplying the per-token policy
loss; the loss's normaliser is unchanged (TRL's ``per_token_loss * importance_sampling_ratio``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: ``algo.importance_sampling_correction``'s modes (TRL's ``vllm_importance_sampling_mode``).
IS_CORRECTION_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")

#: The metrics `mismatch_metrics` returns (logged whenever a rollout has both log-probs).
MISMATCH_METRICS = (
    "sampler/kl",
    "sampler/logp_diff/mean",
    "sampler/logp_diff/max",
    "is_ratio/min",
    "is_ratio/mean",
    "is_ratio/max",
    "is_ratio/clipped_frac",
)


@dataclass
class ImportanceWeights:
    """The correction's weights and what the cap did.

    Attributes:
        weights: ``[N, L]`` the per-token weight of the policy loss (detached; 1 off the mask).
        ratio: ``[N, L]`` per-token ratios ``pi_old / mu`` (token modes) or ``[N, 1]`` per-sequence ratios
            (sequence modes), before truncation or masking.
        capped: ``ratio``'s shape, True where the ratio exceeds the cap (truncated or masked).
    """

    weights: torch.Tensor
    ratio: torch.Tensor
    capped: torch.Tensor


def sampler_log_ratio(
    old_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``[N, L]`` ``log pi_old - log mu`` on the mask, 0 off it (and where the sampler reported NaN: no
    correction there, as TRL's ``nan_to_num`` of the difference)."""
    difference = torch.where(mask.bool(), old_logps.detach() - sampler_logps.detach(), 0.0)
    return torch.nan_to_num(difference, nan=0.0)


def importance_weights(
    old_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, *, mode: str, cap: float = 3.0
) -> ImportanceWeights:
    """The per-token weights of the policy loss under ``mode`` (see the module docstring).

    Args:
        old_logps: ``[N, L]`` teacher-forced log-probs of the sampled tokens (the trainer's ``pi_old``).
        sampler_logps: ``[N, L]`` the same as the rollout engine reported them (``mu``).
        mask: ``[N, L]`` completion tokens.
        mode: One of `IS_CORRECTION_MODES`.
        cap: ``C``, the upper bound (TRL's ``vllm_importance_sampling_clip_max``, default 3.0).
    """
    log_ratio = sampler_log_ratio(old_logps, sampler_logps, mask)
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdim=True)  # log prod_t rho_t
    ratio = torch.exp(log_ratio)
    # Compared in log space: a sequence ratio can overflow to inf, its log cannot.
    capped = log_ratio > math.log(cap)
    if mode.endswith("truncate"):
        weights = torch.exp(log_ratio.clamp(max=math.log(cap)))
    else:
        weights = torch.where(capped, 0.0, ratio)
    return ImportanceWeights(torch.where(mask.bool(), weights, 1.0), ratio, capped)


def mismatch_metrics(
    old_logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    mask: torch.Tensor,
    correction: ImportanceWeights | None = None,
) -> dict[str, torch.Tensor]:
    """How far the sampler is from the trainer, over the completion tokens of a rollout.

    - ``sampler/kl``: the mean over tokens of the k3 estimate of ``KL(mu || pi_old)`` from ``mu``'s samples,
      ``exp(r) - r - 1`` with ``r = log pi_old - log mu`` (Schulman, 2020: unbiased and never negative);
    - ``sampler/logp_diff/mean|max``: ``|log pi_old - log mu|`` (TRL's ``sampling_logp_difference``);
    - ``is_ratio/min|mean|max``: the ratios before truncation or masking (per token, or per sequence under
      a sequence mode; TRL's ``importance_sampling_ratio``, which TRL logs after them);
    - ``is_ratio/clipped_frac``: the share of those ratios above the cap (0 without a correction).

    Args:
        correction: The run's weights (None: no correction; the per-token ratios are reported).
    """
    on = mask.bool()
    log_ratio = sampler_log_ratio(old_logps, sampler_logps, mask)
    if not bool(on.any()):  # nothing in the loss: zeros, as TRL logs
        return dict.fromkeys(MISMATCH_METRICS, log_ratio.new_zeros(()))
    k3 = torch.exp(log_ratio) - log_ratio - 1
    difference = log_ratio.abs()[on]
    if correction is None:
        ratio, capped = torch.exp(log_ratio)[on], torch.zeros_like(difference, dtype=torch.bool)
    else:
        # A sequence ratio counts once per sequence with a token in the loss.
        rows = on.any(-1, keepdim=True) if correction.ratio.shape[-1] == 1 else on
        ratio, capped = correction.ratio[rows], correction.capped[rows]
    return {
        "sampler/kl": k3[on].mean(),
        "sampler/logp_diff/mean": difference.mean(),
        "sampler/logp_diff/max": difference.max(),
        "is_ratio/min": ratio.min(),
        "is_ratio/mean": ratio.mean(),
        "is_ratio/max": ratio.max(),
        "is_ratio/clipped_frac": capped.float().mean(),
    }
