"""DPO and its loss-type family, as pure functions of per-sequence log-probs.

Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
Eq. 7. With the policy/reference log-ratios ``c = log pi(y_c|x) - log pi_ref(y_c|x)`` and
``r = log pi(y_r|x) - log pi_ref(y_r|x)`` and their difference ``h = c - r``, the loss types are

    sigmoid       -log sigma(beta h)                                      (DPO, Eq. 7; cDPO with eps > 0)
    robust        [-(1-eps) log sigma(beta h) + eps log sigma(-beta h)] / (1-2eps)
                                                                          (Chowdhury et al., 2024, Eq. 8)
    hinge         max(0, 1 - beta h)                                      (SLiC, Zhao et al., 2023)
    ipo           (h_bar - 1/(2 beta))^2                                  (Azar et al., 2023, Eq. 17)
    sigmoid_norm  -log sigma(beta h_bar)                                  (DPO on per-token mean log-ratios)
    exo_pair      KL(softmax(beta [c, r]) || [1-eps, eps])                (EXO, Ji et al., 2024, Eq. 16)
    nca_pair      -log sigma(beta c) - 1/2 log sigma(-beta c) - 1/2 log sigma(-beta r)
                                                                          (NCA, Chen et al., 2024, Eq. 12)
    bco_pair      -log sigma(beta c) - log sigma(-beta r)                 (BCO, Jung et al., 2024, paired)
    sppo_hard     (c - 1/(2 beta))^2 + (r + 1/(2 beta))^2                 (SPPO, Wu et al., 2024, Eq. 4.7, P = 1/0)
    aot           sigmoid loss of sort(log pi_c - log pi_r) - sort(its reference)   (AOT, Melnyk et al., 2024)
    aot_unpaired  sigmoid loss of sort(c) - sort(r)                       (AOT, unpaired)
    apo_zero      (1 - sigma(beta c)) + sigma(beta r)                     (APO, D'Oosterlinck et al., 2024, Eq. 7)
    apo_down      sigma(beta c) + (1 - sigma(beta h))                     (APO, Eq. 8)
    discopop      (1 - m) (-log sigma(beta h)) + m exp(-beta h), m = sigma(beta h / tau)
                                                                          (DiscoPOP, Lu et al., 2024, Eq. 5)
    sft           the chosen completions' token-mean NLL over the batch   (TRL's ``sft`` loss type)

where ``h_bar`` uses length-normalised (per-token mean) log-ratios, as TRL does for IPO; the IPO paper's
derivation is on sequence log-probs, and the normalisation keeps ``1/(2 beta)`` on a sensible scale for long
completions. Every formula is TRL 1.16's ``DPOTrainer`` arithmetic (tests compare with it), including its
departures from the papers: ``bco_pair`` has no running reward shift ``delta`` (the BCO paper's), ``aot`` and
``aot_unpaired`` sort within the batch (so a pair's loss depends on its batch, and gradient accumulation is
not equivalent to a bigger batch), and ``sft`` is one batch-wide token mean, returned per example so that its
mean is that token mean.

Options that change every type:

- ``f_divergence_type`` (f-DPO, Wang et al., 2023, Thm. 1): the log-ratios ``c, r`` inside ``h`` become
  ``f'(pi/pi_ref)``: ``reverse_kl`` ``log t`` (DPO), ``forward_kl`` ``1 - 1/t``, ``js_divergence``
  ``log(2t/(1+t))``, ``alpha_divergence`` ``(t^(alpha-1) - 1)/(alpha-1)`` with ``alpha =
  f_alpha_divergence_coef``. Only types whose loss is a function of ``h`` take it (`F_DIVERGENCE_TYPES`).
- ``use_weighting`` (WPO, Zhou et al., 2024, Eq. 2): each pair's loss is multiplied by
  ``w(y_c) w(y_r)``, ``w(y) = exp(mean_t [log pi(y_t) - log sum_v pi(v)^2])``, detached; the objective
  passes the per-token means as ``chosen_wpo_logps`` and ``rejected_wpo_logps``.
- LD-DPO (Liu et al., 2024, ``algo.ld_alpha``) reweights the log-probs themselves before they reach this
  function (`ld_logps`), for the policy and the reference alike.

``label_smoothing`` is ``eps``: cDPO with ``sigmoid`` (and ``aot``), the noise rate of ``robust``, EXO's target
(``exo_pair`` needs ``eps > 0``; the paper uses 1e-3). A list of loss types is summed with ``loss_weights`` (as
MPO, Wang et al., 2024, combines DPO-style terms), and ``sft_beta`` adds each pair's chosen per-token NLL (RPO,
Pang et al., 2024, Eq. 3, TRL's former ``rpo_alpha``).

Rewards are the quantity the loss compares, detached: ``beta * (log pi - log pi_ref)``, length-normalised
for ``ipo`` and ``sigmoid_norm`` (so ``rewards/accuracies`` is the share of pairs the loss itself ranks
correctly; TRL's DPOTrainer logs them on summed log-ratios instead). With several loss types, the first one's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from rlhf_lab.errors import ConfigError
from rlhf_lab.losses.hyperparameters import (
    BETA,
    LABEL_SMOOTHING,
    NON_NEGATIVE,
    POSITIVE,
    OneOf,
    Range,
    hyperparameters,
)
from rlhf_lab.losses.registry import Registry


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


def ld_logps(logps: torch.Tensor, tail_logps: torch.Tensor, ld_alpha: float) -> torch.Tensor:
    """LD-DPO's length-desensitised log-probs (Liu et al., 2024, Eq. 9): ``shared + alpha * tail``.

    Args:
        logps: ``[N]`` summed completion log-probs.
        tail_logps: ``[N]`` the part of ``logps`` past the pair's shared length ``min(|y_c|, |y_r|)``.
        ld_alpha: The weight of the tail (1: plain DPO; 0: only the first ``min(|y_c|, |y_r|)`` tokens).
    """
    return logps - (1.0 - ld_alpha) * tail_logps


def f_divergence_scores(logratios: torch.Tensor, f_divergence_type: str, alpha: float) -> torch.Tensor:
    """``f'(pi/pi_ref)`` from the log-ratios (f-DPO, Wang et al., 2023, Table 1), as TRL computes it."""
    if f_divergence_type == "reverse_kl" or (
        f_divergence_type == "alpha_divergence" and abs(alpha - 1) < 1e-6
    ):
        return logratios
    if f_divergence_type == "forward_kl":
        return 1 - torch.exp(-logratios)
    if f_divergence_type == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    scaled = ((alpha - 1.0) * logratios).float()
    # exp stays finite (TRL's clamp for float32 and bfloat16; 11 for float16).
    limit = 11.0 if logratios.dtype == torch.float16 else 80.0
    return ((torch.exp(scaled.clamp(max=limit)) - 1.0) / (alpha - 1.0)).to(logratios.dtype)


@dataclass(frozen=True)
class PairTerms:
    """What a DPO loss type reads, for a batch of ``B`` pairs (all ``[B]``)."""

    chosen_logratios: torch.Tensor  # log pi(y_c) - log pi_ref(y_c)
    rejected_logratios: torch.Tensor
    chosen_scores: torch.Tensor  # f'(pi/pi_ref) of the chosen (the log-ratio under reverse KL)
    rejected_scores: torch.Tensor
    policy_logratios: torch.Tensor  # log pi(y_c) - log pi(y_r) (AOT)
    reference_logratios: torch.Tensor
    chosen_lengths: torch.Tensor | None
    rejected_lengths: torch.Tensor | None
    chosen_nll: torch.Tensor | None
    beta: float
    label_smoothing: float
    discopop_tau: float

    @classmethod
    def of(
        cls,
        policy: tuple[torch.Tensor, torch.Tensor],
        reference: tuple[torch.Tensor, torch.Tensor],
        extras: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
        scalars: tuple[float, float, float],
        divergence: tuple[str, float],
    ) -> PairTerms:
        """The terms from (chosen, rejected) log-probs of the policy and the reference, (chosen lengths,
        rejected lengths, chosen NLL), (beta, label smoothing, DiscoPOP tau) and (f-divergence, its alpha)."""
        chosen_logratios = policy[0] - reference[0]
        rejected_logratios = policy[1] - reference[1]
        return cls(
            chosen_logratios=chosen_logratios,
            rejected_logratios=rejected_logratios,
            chosen_scores=f_divergence_scores(chosen_logratios, *divergence),
            rejected_scores=f_divergence_scores(rejected_logratios, *divergence),
            policy_logratios=policy[0] - policy[1],
            reference_logratios=reference[0] - reference[1],
            chosen_lengths=extras[0],
            rejected_lengths=extras[1],
            chosen_nll=extras[2],
            beta=scalars[0],
            label_smoothing=scalars[1],
            discopop_tau=scalars[2],
        )

    @property
    def delta(self) -> torch.Tensor:
        return self.chosen_scores - self.rejected_scores

    def normalised(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores divided by their completion lengths (per-token means)."""
        if self.chosen_lengths is None or self.rejected_lengths is None:
            raise ValueError("length-normalised DPO loss types need chosen_lengths and rejected_lengths")
        return (
            self.chosen_scores / self.chosen_lengths.clamp(min=1),
            self.rejected_scores / self.rejected_lengths.clamp(min=1),
        )


LOSS_TYPES = Registry("algo.loss_type")
#: Loss types that compare per-token mean log-ratios (their rewards are normalised too).
LENGTH_NORMALISED = frozenset({"ipo", "sigmoid_norm"})
#: Loss types that are functions of ``h`` alone, so f-DPO's ``f'`` may replace the log-ratios (TRL's set).
F_DIVERGENCE_TYPES = frozenset(
    {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
)
#: Loss types whose per-pair losses depend on the batch's order (WPO's per-pair weights do not apply).
SORTED_TYPES = frozenset({"aot", "aot_unpaired"})


@LOSS_TYPES.register("sigmoid")
def _sigmoid(t: PairTerms) -> torch.Tensor:
    return sigmoid_loss(t.beta * t.delta, t.label_smoothing)


@LOSS_TYPES.register("robust")
def _robust(t: PairTerms) -> torch.Tensor:
    z, eps = t.beta * t.delta, t.label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


@LOSS_TYPES.register("hinge")
def _hinge(t: PairTerms) -> torch.Tensor:
    return torch.relu(1 - t.beta * t.delta)


@LOSS_TYPES.register("ipo")
def _ipo(t: PairTerms) -> torch.Tensor:
    chosen, rejected = t.normalised()
    return (chosen - rejected - 1 / (2 * t.beta)) ** 2


@LOSS_TYPES.register("sigmoid_norm")
def _sigmoid_norm(t: PairTerms) -> torch.Tensor:
    chosen, rejected = t.normalised()
    return -F.logsigmoid(t.beta * (chosen - rejected))


@LOSS_TYPES.register("exo_pair")
def _exo_pair(t: PairTerms) -> torch.Tensor:
    z, eps = t.beta * t.delta, t.label_smoothing
    chosen_term = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
    return chosen_term + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps))


@LOSS_TYPES.register("nca_pair")
def _nca_pair(t: PairTerms) -> torch.Tensor:
    chosen, rejected = t.beta * t.chosen_logratios, t.beta * t.rejected_logratios
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


@LOSS_TYPES.register("bco_pair")
def _bco_pair(t: PairTerms) -> torch.Tensor:
    return -F.logsigmoid(t.beta * t.chosen_logratios) - F.logsigmoid(-t.beta * t.rejected_logratios)


@LOSS_TYPES.register("sppo_hard")
def _sppo_hard(t: PairTerms) -> torch.Tensor:
    return (t.chosen_logratios - 0.5 / t.beta) ** 2 + (t.rejected_logratios + 0.5 / t.beta) ** 2


@LOSS_TYPES.register("aot")
def _aot(t: PairTerms) -> torch.Tensor:
    delta = t.policy_logratios.sort(dim=0).values - t.reference_logratios.sort(dim=0).values
    return sigmoid_loss(t.beta * delta, t.label_smoothing)


@LOSS_TYPES.register("aot_unpaired")
def _aot_unpaired(t: PairTerms) -> torch.Tensor:
    delta = t.chosen_logratios.sort(dim=0).values - t.rejected_logratios.sort(dim=0).values
    return sigmoid_loss(t.beta * delta, t.label_smoothing)


@LOSS_TYPES.register("apo_zero")
def _apo_zero(t: PairTerms) -> torch.Tensor:
    return 1 - torch.sigmoid(t.beta * t.chosen_logratios) + torch.sigmoid(t.beta * t.rejected_logratios)


@LOSS_TYPES.register("apo_down")
def _apo_down(t: PairTerms) -> torch.Tensor:
    chosen, rejected = t.chosen_logratios, t.rejected_logratios
    return torch.sigmoid(t.beta * chosen) + 1 - torch.sigmoid(t.beta * (chosen - rejected))


@LOSS_TYPES.register("discopop")
def _discopop(t: PairTerms) -> torch.Tensor:
    z = t.beta * t.delta
    modulation = torch.sigmoid(z / t.discopop_tau)
    return -F.logsigmoid(z) * (1 - modulation) + torch.exp(-z) * modulation


@LOSS_TYPES.register("sft")
def _sft(t: PairTerms) -> torch.Tensor:
    if t.chosen_nll is None or t.chosen_lengths is None:
        raise ValueError("loss_type=sft needs chosen_nll and chosen_lengths")
    lengths = t.chosen_lengths.to(t.chosen_nll.dtype)
    # Per example, scaled so that the batch mean is the batch's token-mean NLL (TRL's sft loss type).
    return t.chosen_nll * lengths * lengths.numel() / lengths.sum().clamp(min=1)


def _types(values: Mapping[str, Any]) -> list[str]:
    loss_type = values.get("loss_type", "sigmoid")
    return [loss_type] if isinstance(loss_type, str) else list(loss_type)


def _check(values: Mapping[str, Any]) -> None:
    types = _types(values)
    weights = values.get("loss_weights")
    if weights is not None and len(weights) != len(types):
        raise ConfigError(f"algo.loss_weights={list(weights)} needs one weight per algo.loss_type={types}")
    divergence = values.get("f_divergence_type", "reverse_kl")
    if divergence != "reverse_kl" and not set(types) <= F_DIVERGENCE_TYPES:
        raise ConfigError(
            f"algo.f_divergence_type={divergence} applies to loss types that are functions of the log-ratio "
            f"difference only ({', '.join(sorted(F_DIVERGENCE_TYPES))}); algo.loss_type={types} includes others"
        )
    if "exo_pair" in types and not values.get("label_smoothing"):
        raise ConfigError("algo.loss_type=exo_pair needs algo.label_smoothing > 0 (the EXO paper uses 1e-3)")
    if values.get("use_weighting") and SORTED_TYPES & set(types):
        raise ConfigError(
            f"algo.use_weighting=true (WPO) cannot weight algo.loss_type={types}: aot and aot_unpaired sort the "
            "batch, so a pair's loss is not its own"
        )


def nll_term(weight: float, chosen_nll: torch.Tensor | None, key: str) -> torch.Tensor | float:
    """``weight * NLL(y_c)``, or 0 when the weight is 0."""
    if not weight:
        return 0.0
    if chosen_nll is None:
        raise ValueError(f"{key}={weight} needs chosen_nll (the chosen completion's per-token NLL)")
    return weight * chosen_nll


F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@hyperparameters(
    check=_check,
    beta=BETA,
    loss_type=OneOf(tuple(LOSS_TYPES.names()), many=True),
    label_smoothing=LABEL_SMOOTHING,
    sft_beta=NON_NEGATIVE,
    f_divergence_type=OneOf(F_DIVERGENCES),
    f_alpha_divergence_coef=Range(0.0, None, low_inclusive=False),
    discopop_tau=POSITIVE,
    use_weighting=OneOf((False, True)),
)
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    chosen_nll: torch.Tensor | None = None,
    chosen_wpo_logps: torch.Tensor | None = None,
    rejected_wpo_logps: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    loss_type: str | list[str] = "sigmoid",
    loss_weights: list[float] | None = None,
    label_smoothing: float = 0.0,
    sft_beta: float = 0.0,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    discopop_tau: float = 0.05,
    use_weighting: bool = False,
) -> PreferenceLossOutput:
    """DPO loss for a batch of pairs.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs under the policy.
        reference_chosen_logps, reference_rejected_logps: ``[B]`` the same under the reference.
        chosen_lengths, rejected_lengths: ``[B]`` completion token counts (``ipo``, ``sigmoid_norm``, ``sft``).
        chosen_nll: ``[B]`` per-token NLL of the chosen completions; required by ``sft`` and ``sft_beta > 0``.
        chosen_wpo_logps, rejected_wpo_logps: ``[B]`` WPO's per-token mean ``log pi(y_t) - log sum_v
            pi(v)^2`` of the completions (detached); required by ``use_weighting``.
        beta: Inverse temperature (KL strength; IPO's tau).
        loss_type: One of `LOSS_TYPES` (the module docstring), or a list of them.
        loss_weights: One weight per loss type (default: all 1); ``loss/<type>`` metrics when several.
        label_smoothing: ``eps``: cDPO / robust DPO label noise, AOT's smoothing, EXO's target.
        sft_beta: Weight of ``chosen_nll`` added to each pair's loss (RPO's alpha).
        f_divergence_type, f_alpha_divergence_coef: f-DPO's divergence and ``alpha_divergence``'s alpha.
        discopop_tau: DiscoPOP's temperature of the mixing gate.
        use_weighting: WPO: weight each pair by its completions' probability under the policy.

    Returns:
        Per-example losses ``[B]`` and detached rewards (see the module docstring).
    """
    types = _types({"loss_type": loss_type})
    weights = [1.0] * len(types) if loss_weights is None else list(loss_weights)
    terms = PairTerms.of(
        (policy_chosen_logps, policy_rejected_logps),
        (reference_chosen_logps, reference_rejected_logps),
        (chosen_lengths, rejected_lengths, chosen_nll),
        (beta, label_smoothing, discopop_tau),
        (f_divergence_type, f_alpha_divergence_coef),
    )
    wpo = (chosen_wpo_logps, rejected_wpo_logps) if use_weighting else None
    total, metrics = _weighted_sum(terms, types, weights, wpo)
    chosen_rewards, rejected_rewards = _rewards(terms, types[0])
    return PreferenceLossOutput(
        losses=total + nll_term(sft_beta, chosen_nll, "algo.sft_beta"),
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        metrics=metrics,
    )


def _weighted_sum(
    terms: PairTerms,
    types: list[str],
    weights: list[float],
    wpo: tuple[torch.Tensor | None, torch.Tensor | None] | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sum_i weight_i * loss_i`` per pair (each times WPO's weight ``exp(wpo_c + wpo_r)`` under WPO), with
    ``loss/<type>`` metrics when there are several types and ``wpo_weight`` under WPO."""
    pair_weights = None
    if wpo is not None:
        if wpo[0] is None or wpo[1] is None:
            raise ValueError("use_weighting=True needs chosen_wpo_logps and rejected_wpo_logps")
        pair_weights = torch.exp(wpo[0] + wpo[1]).detach()
    total: torch.Tensor | float = 0.0
    metrics = {}
    for name, weight in zip(types, weights, strict=True):
        losses = LOSS_TYPES.get(name)(terms)
        if pair_weights is not None:
            losses = losses * pair_weights
        total = total + weight * losses
        if len(types) > 1:
            metrics[f"loss/{name}"] = losses.detach().mean()
    if pair_weights is not None:
        metrics["wpo_weight"] = pair_weights.mean()
    assert isinstance(total, torch.Tensor)
    return total, metrics


def _rewards(terms: PairTerms, loss_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``beta`` times the log-ratios the loss type compares (per-token means for `LENGTH_NORMALISED`)."""
    if loss_type in LENGTH_NORMALISED:
        assert terms.chosen_lengths is not None and terms.rejected_lengths is not None
        chosen = terms.chosen_logratios / terms.chosen_lengths.clamp(min=1)
        rejected = terms.rejected_logratios / terms.rejected_lengths.clamp(min=1)
    else:
        chosen, rejected = terms.chosen_logratios, terms.rejected_logratios
    return (terms.beta * chosen).detach(), (terms.beta * rejected).detach()
