"""Distillation losses: the generalised Jensen-Shannon divergence between teacher and student, per token.

Agarwal et al., 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes"
(GKD), Eq. 1: with ``M = beta * p_T + (1 - beta) * p_S`` (the mixture TRL's ``GKDTrainer`` uses),

    JSD_beta(p_T || p_S) = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)

which at ``beta = 0`` is taken as the forward KL ``KL(p_T || p_S)`` (supervised KD, Hinton et al., 2015)
and at ``beta = 1`` as the reverse KL ``KL(p_S || p_T)``, as TRL does. Both distributions are softmaxes of
the logits divided by ``temperature``. Departure from Hinton et al.: no ``temperature**2`` factor (TRL
has none either); scale ``alpha`` instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_lab.losses.hyperparameters import POSITIVE, UNIT_INTERVAL, hyperparameters


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` over the last dimension, from log-probabilities (0 * log 0 taken as 0)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


@hyperparameters(beta=UNIT_INTERVAL, temperature=POSITIVE)
def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token generalised JSD ``[...]`` between ``[..., V]`` student and teacher logits (Eq. 1)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if beta == 0:
        return _kl(teacher, student)
    if beta == 1:
        return _kl(student, teacher)
    mixture = torch.logsumexp(torch.stack([student + math.log1p(-beta), teacher + math.log(beta)]), dim=0)
    return beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)


def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The mean generalised JSD over the tokens whose ``labels`` are not ``-100`` (TRL's
    ``GKDTrainer.generalized_jsd_loss(..., reduction="batchmean")``: every token when ``labels`` is None).

    Args:
        student_logits: ``[B, T, V]``.
        teacher_logits: ``[B, T, V]``.
        labels: ``[B, T]``, ``-100`` at tokens to leave out.
        beta: 0 forward KL, 1 reverse KL, in between the generalised JSD.
        temperature: Softmax temperature of both distributions.
    """
    per_token = generalized_jsd(student_logits, teacher_logits, beta=beta, temperature=temperature)
    if labels is None:
        return per_token.sum() / max(per_token.shape[0], 1)  # TRL divides by the batch size here
    mask = labels != -100
    return per_token[mask].sum() / mask.sum().clamp(min=1)


@dataclass
class DistillationTokens:
    """Per-token distillation quantities for ``M`` scored tokens (float32).

    Attributes:
        divergence: ``[M]`` generalised JSD at ``temperature`` (what the loss minimises).
        nll: ``[M]`` negative log-likelihood of the target token under the student (temperature 1).
        forward_kl: ``[M]`` ``KL(p_T || p_S)`` at temperature 1 (detached: a metric).
        reverse_kl: ``[M]`` ``KL(p_S || p_T)`` at temperature 1 (detached).
    """

    divergence: torch.Tensor
    nll: torch.Tensor
    forward_kl: torch.Tensor
    reverse_kl: torch.Tensor

    @staticmethod
    def cat(parts: list[DistillationTokens]) -> DistillationTokens:
        return DistillationTokens(
            *(
                torch.cat([getattr(p, f) for p in parts])
                for f in ("divergence", "nll", "forward_kl", "reverse_kl")
            )
        )


def distillation_tokens(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    teacher_topk: int = 0,
    nll_grad: bool = True,
) -> DistillationTokens:
    """Every per-token quantity of one chunk of ``[M, V]`` logits and ``[M]`` target tokens.

    With ``teacher_topk = k > 0`` the divergence compares the two distributions restricted to the teacher's
    ``k`` most likely tokens (each renormalised over them): only ``[M, k]`` teacher values are needed.
    ``nll_grad=False`` computes the NLL as a metric only (no gradient): under activation checkpointing a
    differentiable quantity the loss does not use would keep its recomputed ``[M, V]`` tensors alive until
    the end of the backward pass.
    """
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if teacher_topk and teacher_topk < teacher_logits.shape[-1]:
        top_teacher, top_ids = teacher_logits.topk(teacher_topk, dim=-1)
        divergence = generalized_jsd(
            student_logits.gather(-1, top_ids), top_teacher, beta=beta, temperature=temperature
        )
    else:
        divergence = generalized_jsd(student_logits, teacher_logits, beta=beta, temperature=temperature)
    with torch.set_grad_enabled(nll_grad and torch.is_grad_enabled()):
        student = F.log_softmax(student_logits, dim=-1)
        nll = -student.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        teacher = F.log_softmax(teacher_logits, dim=-1)
        detached = student.detach()
        forward_kl, reverse_kl = _kl(teacher, detached), _kl(detached, teacher)
    return DistillationTokens(divergence, nll, forward_kl, reverse_kl)
