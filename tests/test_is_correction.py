"""The importance-sampling correction of the sampler/trainer mismatch (issue 26): the weights by hand and
against TRL's lines, the corrected gradient against the exact on-policy gradient by enumeration, the
rollout's metrics with a mismatched and a matching engine, and config errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.losses.correction import (
    IS_CORRECTION_MODES,
    MISMATCH_METRICS,
    importance_weights,
    mismatch_metrics,
)
from rlhf_lab.losses.policy_gradient import StepTotals
from rlhf_lab.rl.controls import Controls
from rlhf_lab.rl.parts import RLParts
from rlhf_lab.rl.rollout import Rollout
from rlhf_lab.rl.update import correct_sampler, micro_batch_loss
from rlhf_lab.train import build
from tests.conftest import compose_config
from tests.test_online import SMALL, trained, weights
from tests.trl_grpo import trl_grpo_loss

LN = math.log


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows of 3 tokens; ratios ``pi_old / mu``: row 0 (2, 4, 0.5), row 1 (1.5, 0.5, padding)."""
    sampler = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    ratios = torch.tensor([[2.0, 4.0, 0.5], [1.5, 0.5, 1.0]])
    old = sampler + ratios.log()
    old[1, 2] = float("-inf")  # padding log-probs may be -inf: no NaN may come of them
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return old, sampler, mask


# --------------------------------------------------------------------------------- weights by hand
@pytest.mark.parametrize(
    ("mode", "weights", "capped"),
    [
        # min(rho_t, 3): the 4 is truncated.
        ("token_truncate", [[2.0, 3.0, 0.5], [1.5, 0.5, 1.0]], [[False, True, False], [False, False, False]]),
        # rho_t, 0 above 3.
        ("token_mask", [[2.0, 0.0, 0.5], [1.5, 0.5, 1.0]], [[False, True, False], [False, False, False]]),
        # Sequence ratios 2 * 4 * 0.5 = 4 -> min(4, 3) = 3, and 1.5 * 0.5 = 0.75, on every token of the row.
        ("sequence_truncate", [[3.0, 3.0, 3.0], [0.75, 0.75, 1.0]], [[True], [False]]),
        ("sequence_mask", [[0.0, 0.0, 0.0], [0.75, 0.75, 1.0]], [[True], [False]]),
    ],
)  # fmt: skip
def test_weights_by_hand(mode: str, weights: list[list[float]], capped: list[list[bool]]) -> None:
    old, sampler, mask = _hand_case()
    out = importance_weights(old, sampler, mask, mode=mode, cap=3.0)
    assert_close(out.weights, torch.tensor(weights))  # 1 off the mask (the loss is 0 there anyway)
    assert out.capped.tolist() == capped
    expected_ratio = [[4.0], [0.75]] if mode.startswith("sequence") else [[2.0, 4.0, 0.5], [1.5, 0.5, 1.0]]
    assert_close(out.ratio, torch.tensor(expected_ratio))


def test_metrics_by_hand() -> None:
    old, sampler, mask = _hand_case()
    # k3 = rho - log rho - 1 per token: (1 - ln2) + (3 - 2 ln2) + (ln2 - 0.5) + (0.5 - ln1.5) + (ln2 - 0.5)
    # = 3.5 - ln2 - ln1.5 = 3.5 - ln3, over 5 tokens.
    token = mismatch_metrics(old, sampler, mask, importance_weights(old, sampler, mask, mode="token_mask"))
    assert_close(token["sampler/kl"], torch.tensor((3.5 - LN(3)) / 5))
    assert_close(token["sampler/logp_diff/mean"], torch.tensor((5 * LN(2) + LN(1.5)) / 5))
    assert_close(token["sampler/logp_diff/max"], torch.tensor(2 * LN(2)))
    assert_close(token["is_ratio/min"], torch.tensor(0.5))
    assert_close(token["is_ratio/mean"], torch.tensor(8.5 / 5))  # (2 + 4 + 0.5 + 1.5 + 0.5) / 5
    assert_close(token["is_ratio/max"], torch.tensor(4.0))
    assert_close(token["is_ratio/clipped_frac"], torch.tensor(1 / 5))
    sequence = mismatch_metrics(
        old, sampler, mask, importance_weights(old, sampler, mask, mode="sequence_truncate")
    )
    assert_close(sequence["sampler/kl"], token["sampler/kl"])  # per token whatever the mode
    assert_close(sequence["is_ratio/min"], torch.tensor(0.75))
    assert_close(sequence["is_ratio/mean"], torch.tensor((4 + 0.75) / 2))
    assert_close(sequence["is_ratio/max"], torch.tensor(4.0))
    assert_close(sequence["is_ratio/clipped_frac"], torch.tensor(0.5))
    # No correction: the per-token ratios, nothing capped.
    plain = mismatch_metrics(old, sampler, mask)
    assert_close(plain["is_ratio/mean"], token["is_ratio/mean"])
    assert_close(plain["is_ratio/clipped_frac"], torch.tensor(0.0))
    assert set(plain) == set(MISMATCH_METRICS)
    # Nothing in the loss: zeros (as TRL), not NaN.
    empty = mismatch_metrics(old, sampler, torch.zeros_like(mask))
    assert all(float(v) == 0.0 for v in empty.values())


def test_a_nan_sampler_log_prob_is_not_corrected() -> None:
    old, sampler, mask = _hand_case()
    sampler[0, 1] = float("nan")  # a token the engine could not score
    out = importance_weights(old, sampler, mask, mode="token_truncate")
    assert_close(out.weights[0], torch.tensor([2.0, 1.0, 0.5]))


# --------------------------------------------------------------------------------------------- TRL
def _trl_is_ratio(
    old_per_token_logps, sampling_per_token_logps, completion_mask, mode, clip_max, clip_min=None
):
    """TRL 1.16's ``GRPOTrainer._generate_and_score_completions`` lines computing
    ``vllm_importance_sampling_ratio``, copied verbatim (``self.`` dropped, ``tool_mask = None``): the
    computation is inline in that method, so it cannot be called on its own."""
    tool_mask = None
    mask = completion_mask if tool_mask is None else completion_mask * tool_mask
    per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask
    per_token_logps_diff = torch.nan_to_num(per_token_logps_diff, nan=0.0)

    sequence_level_is = mode in ["sequence_mask", "sequence_truncate"]
    if sequence_level_is:
        per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
        logps_diff = per_sequence_logps_diff
    else:
        logps_diff = per_token_logps_diff

    vllm_importance_sampling_ratio = torch.exp(logps_diff)

    if mode in ["sequence_truncate", "token_truncate"]:
        vllm_importance_sampling_ratio = torch.clamp(
            vllm_importance_sampling_ratio, min=clip_min, max=clip_max
        )
    elif mode in ["sequence_mask", "token_mask"]:
        min_val = clip_min if clip_min is not None else -math.inf
        max_val = clip_max if clip_max is not None else math.inf
        invalid_mis_mask = (vllm_importance_sampling_ratio < min_val) | (
            vllm_importance_sampling_ratio > max_val
        )
        vllm_importance_sampling_ratio = vllm_importance_sampling_ratio.masked_fill(
            invalid_mis_mask, value=0.0
        )
    return vllm_importance_sampling_ratio


def _trl_loss_with_ratio(logps, old, advantages, mask, ratio) -> torch.Tensor:
    """TRL's own ``GRPOTrainer._compute_loss`` (loss_type grpo) with the vLLM correction on."""
    return trl_grpo_loss("grpo", logps, old, advantages, mask, importance_sampling_ratio=ratio)


@pytest.mark.parametrize("mode", IS_CORRECTION_MODES)
@pytest.mark.parametrize("cap", [3.0, 1.5])
def test_weights_and_loss_equal_trl(mode: str, cap: float) -> None:
    torch.manual_seed(0)
    mask = torch.tensor(
        [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool
    )
    sampler = -torch.rand(4, 5) * 2 * mask
    old = (sampler + 0.8 * torch.randn(4, 5)) * mask  # ratios well off 1: the cap binds somewhere
    theirs = _trl_is_ratio(old, sampler, mask.long(), mode, cap)
    ours = importance_weights(old, sampler, mask, mode=mode, cap=cap)
    assert_close(ours.weights * mask, theirs.expand_as(old) * mask)
    assert bool(ours.capped.any()) and not bool(ours.capped.all())
    # The loss and its gradient: micro_batch_loss with the weights = TRL's _compute_loss with its ratio.
    logps = (old + 0.1 * torch.randn(4, 5)).requires_grad_()
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.0])
    rollout = Rollout(None, 0, mask, advantages=advantages, old_logps=old, is_weights=ours.weights)  # type: ignore[arg-type]
    parts = RLParts.resolve("grpo", "ppo_clip", "grpo", {}, {})
    totals = StepTotals(4.0, float(mask.sum()), float(mask.sum()))
    loss, _ = micro_batch_loss(
        parts, rollout, logps, torch.zeros_like(logps), None, totals, beta=0.0, kl_in_reward=False
    )
    trl = _trl_loss_with_ratio(logps, old, advantages, mask, theirs)
    assert_close(loss, trl)
    assert_close(torch.autograd.grad(loss, logps)[0], torch.autograd.grad(trl, logps)[0])


# ------------------------------------------------------------------------- the gradient, by enumeration
VOCAB = 3


class Enumerated:
    """Every completion of ``length`` tokens over a 3-token vocabulary under a tabular policy (logits of
    the first token; of the second given the first), and a sampler: the same logits shifted."""

    def __init__(self, length: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.length = length
        self.first = torch.randn(VOCAB, generator=generator).requires_grad_()
        self.second = torch.randn(VOCAB, VOCAB, generator=generator).requires_grad_()
        shift = (
            0.7 * torch.randn(VOCAB, generator=generator),
            0.7 * torch.randn(VOCAB, VOCAB, generator=generator),
        )
        self.sequences = list(itertools.product(range(VOCAB), repeat=length))
        self.advantages = torch.randn(len(self.sequences), generator=generator)
        with torch.no_grad():
            self.sampler_logps = self.token_logps(self.first + shift[0], self.second + shift[1])

    @property
    def params(self) -> tuple[torch.Tensor, ...]:
        return (self.first, self.second)[: self.length]

    def token_logps(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``[V^length, length]`` log-probs of every sequence's tokens."""
        one, two = first.log_softmax(-1), second.log_softmax(-1)
        rows = [
            torch.stack([one[y[0]], *([two[y[0], y[1]]] if self.length == 2 else [])]) for y in self.sequences
        ]
        return torch.stack(rows)

    def corrected_gradient(self, mode: str | None, cap: float) -> tuple[tuple[torch.Tensor, ...], float]:
        """The gradient of the run's loss path (`correct_sampler`, then `micro_batch_loss` with ppo_clip at
        ``rho = 1``), every sequence in the batch once with its advantage times ``N mu(y)``: the loss, linear
        in the advantages, is then ``E_{y ~ mu}`` of one sequence's (``seq_mean_token_sum`` divides by
        ``N``). Also the share of sequences (or tokens) above the cap (``mode`` None: no correction)."""
        logps = self.token_logps(self.first, self.second)
        mask = torch.ones_like(logps, dtype=torch.bool)
        mu = self.sampler_logps.sum(-1).exp()
        n = len(self.sequences)
        rollout = Rollout(
            None,  # type: ignore[arg-type]
            0,
            mask,
            advantages=self.advantages * mu * n,
            old_logps=logps.detach(),
            sampler_logps=self.sampler_logps,
        )
        controls = Controls(importance_sampling_correction=mode, importance_sampling_cap=cap)
        metrics = correct_sampler(rollout, controls)
        parts = RLParts.resolve("grpo", "ppo_clip", "seq_mean_token_sum", {}, {})
        totals = StepTotals(float(n), float(mask.sum()), float(mask.sum()))
        loss, _ = micro_batch_loss(
            parts, rollout, logps, torch.zeros_like(logps), None, totals, beta=0.0, kl_in_reward=False
        )
        return torch.autograd.grad(loss, self.params), float(metrics["is_ratio/clipped_frac"])

    def expected_gradient(self, coefficient: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``-grad sum_y c(y) pi(y) A(y)`` = ``-E_{y ~ pi}[c(y) A(y) grad log pi(y)]`` (c detached; 1: the
        on-policy policy gradient), by autograd through the sequence probabilities, not their logs."""
        pi = self.token_logps(self.first, self.second).sum(-1).exp()
        c = torch.ones_like(pi) if coefficient is None else coefficient
        return torch.autograd.grad(-(c * pi * self.advantages).sum(), self.params)

    def sequence_ratio(self) -> torch.Tensor:
        with torch.no_grad():
            return (self.token_logps(self.first, self.second) - self.sampler_logps).sum(-1).exp()


@pytest.mark.parametrize(
    ("mode", "length"),
    [("sequence_truncate", 2), ("sequence_mask", 2), ("token_truncate", 1), ("token_mask", 1)],
)
def test_corrected_gradient_is_the_on_policy_gradient_when_the_cap_does_not_bind(
    mode: str, length: int
) -> None:
    """``E_{y ~ mu}[w(y) grad loss(y)] = E_{y ~ pi}[-A(y) grad log pi(y)]`` exactly, enumerating every
    sequence (per-token weights: one-token completions, where a token is the sequence)."""
    case = Enumerated(length)
    ratio = case.sequence_ratio()
    assert float(ratio.min()) < 0.8 and float(ratio.max()) > 1.25  # the sampler really differs
    corrected, capped = case.corrected_gradient(mode, cap=1e3)
    assert capped == 0.0
    for ours, exact in zip(corrected, case.expected_gradient(), strict=True):
        assert_close(ours, exact)
    # Without the correction the same batch gives E_mu[-A grad log pi]: not the on-policy gradient.
    plain = torch.cat([g.flatten() for g in case.corrected_gradient(None, cap=1e3)[0]])
    exact = torch.cat([g.flatten() for g in case.expected_gradient()])
    assert float((plain - exact).norm()) > 0.05 * float(exact.norm())


@pytest.mark.parametrize(
    ("mode", "length"),
    [("sequence_truncate", 2), ("sequence_mask", 2), ("token_truncate", 1), ("token_mask", 1)],
)
def test_corrected_gradient_is_the_truncated_expectation_when_the_cap_binds(mode: str, length: int) -> None:
    """With ``C`` binding on some sequences: truncation gives ``E_pi[min(1, C mu/pi) (-A) grad log pi]``
    (the weight ``min(pi/mu, C)`` under ``mu`` is ``min(1, C mu/pi)`` under ``pi``), masking
    ``E_pi[1{pi/mu <= C} (-A) grad log pi]``."""
    case = Enumerated(length)
    ratio = case.sequence_ratio()
    cap = 1.25
    corrected, capped = case.corrected_gradient(mode, cap=cap)
    assert 0.0 < capped < 1.0
    coefficient = torch.clamp(cap / ratio, max=1.0) if mode.endswith("truncate") else (ratio <= cap).float()
    for ours, exact in zip(corrected, case.expected_gradient(coefficient), strict=True):
        assert_close(ours, exact)


def test_per_token_weights_on_longer_completions_are_not_the_on_policy_gradient() -> None:
    """Token-level weights correct each token's own probability but not its prefix's (nor the advantage's
    dependence on the continuation): with 2 tokens the gradient differs from the on-policy one, unlike a
    sequence mode's (TRL's default is ``sequence_mask``), though it is nearer than no correction."""
    case = Enumerated(2)
    exact = torch.cat([g.flatten() for g in case.expected_gradient()])
    token, sequence, plain = (
        torch.cat([g.flatten() for g in case.corrected_gradient(mode, cap=1e3)[0]])
        for mode in ("token_truncate", "sequence_truncate", None)
    )
    assert_close(sequence, exact)
    assert 1e-3 * float(exact.norm()) < float((token - exact).norm()) < float((plain - exact).norm())


# ----------------------------------------------------------------------------------------- end to end
MISMATCHED = (
    "algo=grpo",
    "algo.importance_sampling_correction=token_truncate",
    "algo.sampler_temperature=0.7",
)


def _rollout(*overrides: str):
    objective, datamodule, _ = build(compose_config([*SMALL, *overrides]))
    objective.configure_model()
    rollout, metrics = objective.make_rollout(next(iter(datamodule.train_dataloader())))
    return objective, rollout, metrics


def test_a_mismatched_engine_is_measured_and_corrected() -> None:
    """The engine samples at 0.7, the trainer scores at 1.0: the rollout's old log-probs are teacher-forced
    (num_iterations=1), the weights are min(rho, 3) of them, and the metrics show the gap."""
    objective, rollout, metrics = _rollout(*MISMATCHED)
    assert objective.needs_old_logps and objective.num_iterations == 1
    old, sampler, mask = rollout.require("old_logps"), rollout.require("sampler_logps"), rollout.mask
    with torch.no_grad():
        teacher, _ = objective.token_stats(rollout)
    assert_close(old, teacher)
    ratio = torch.exp(torch.where(mask, old - sampler, 0.0))
    assert_close(rollout.require("is_weights"), torch.where(mask, ratio.clamp(max=3.0), 1.0))
    assert float(metrics["sampler/kl"]) > 1e-3
    assert_close(metrics["is_ratio/max"], ratio[mask].max())
    assert_close(metrics["is_ratio/mean"], ratio[mask].mean())
    assert float(metrics["is_ratio/min"]) < 1.0 < float(metrics["is_ratio/max"])
    assert set(MISMATCH_METRICS) <= set(metrics) and set(MISMATCH_METRICS) <= objective.metric_names("train")
    # The weights reach the loss: it differs from the uncorrected one on the same rollout.
    totals = objective.step_totals(rollout)
    corrected, _ = objective.micro_loss(rollout, totals)
    rollout.is_weights = None
    plain, _ = objective.micro_loss(rollout, totals)
    assert not torch.allclose(corrected, plain)


def test_a_matching_engine_shows_no_mismatch() -> None:
    """The in-process engine at the trainer's temperature reports teacher forcing's log-probs (up to the
    KV-cache decode's rounding): no KL, ratios 1, weights 1, nothing capped."""
    _objective, rollout, metrics = _rollout("algo=grpo", "algo.importance_sampling_correction=sequence_mask")
    assert_close(metrics["sampler/kl"], torch.tensor(0.0), atol=1e-6, rtol=0)
    for name in ("is_ratio/min", "is_ratio/mean", "is_ratio/max"):
        assert_close(metrics[name], torch.tensor(1.0), atol=1e-5, rtol=0)
    assert float(metrics["is_ratio/clipped_frac"]) == 0.0
    assert_close(
        rollout.require("is_weights"), torch.ones_like(rollout.mask, dtype=torch.float), atol=1e-5, rtol=0
    )


def test_the_metrics_are_logged_beside_old_log_probs_even_without_the_correction() -> None:
    objective, rollout, metrics = _rollout(
        "algo=grpo", "algo.num_iterations=2", "algo.sampler_temperature=0.7"
    )
    assert rollout.is_weights is None and float(metrics["sampler/kl"]) > 1e-3
    assert float(metrics["is_ratio/clipped_frac"]) == 0.0
    assert set(MISMATCH_METRICS) <= objective.metric_names("train")
    plain, _, _ = build(compose_config([*SMALL, "algo=grpo"]))
    assert not plain.needs_old_logps and not set(MISMATCH_METRICS) & plain.metric_names("train")


def test_corrected_runs_are_exact_under_accumulation(tmp_path: Path) -> None:
    """Weights once per rollout, per row: 1 micro-batch of 8 = 2 of 4 (a sequence mode, where a row's
    weight depends on all its tokens, with a cap that binds); the sampler metrics are logged."""
    common = [
        "algo=grpo",
        "algo.importance_sampling_correction=sequence_truncate",
        "algo.sampler_temperature=0.7",
    ]
    # Unshared rows: packing a micro-batch's prompts changes its float rounding with the micro-batch
    # (`test_shared_and_unshared_rollouts_train_alike` bounds that), and this equality is exact.
    common += ["algo.importance_sampling_cap=1.1", "trainer.max_steps=2", "optim.eps=1e-5"]
    common.append("data.prefix_sharing=false")
    whole = trained(tmp_path, "whole", *common, "trainer.accumulate_grad_batches=1")
    split = trained(tmp_path, "split", *common, "trainer.accumulate_grad_batches=2")
    initial = build(compose_config([*SMALL, *common]))[0]
    initial.configure_model()
    before = dict(initial.named_parameters())
    for name, value in weights(whole).items():
        assert_close(weights(split)[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(before[name], value) for name, value in weights(whole).items())
    assert whole.summary["train/loss"] == pytest.approx(split.summary["train/loss"], rel=1e-4, abs=1e-6)
    assert whole.summary["train/sampler/kl"] > 0 and whole.summary["train/is_ratio/clipped_frac"] > 0
    assert whole.summary["train/is_ratio/clipped_frac"] == split.summary["train/is_ratio/clipped_frac"]


# ------------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("algo.importance_sampling_correction=token_clip",),
            r"algo.importance_sampling_correction='token_clip' is not supported; choose one of: token_truncate, "
            r"token_mask, sequence_truncate, sequence_mask",
        ),
        (("algo.importance_sampling_cap=0.5",), r"algo.importance_sampling_cap=0.5 is out of range; expected a value in \[1.0, inf\)"),
        (("algo.vllm_importance_sampling_cap=0.5",), r"algo.vllm_importance_sampling_cap=0.5 is out of range"),
        (("algo.vllm_importance_sampling_mode=tis",), r"algo.vllm_importance_sampling_mode='tis' is not supported"),
        (("algo.sampler_temperature=0",), r"algo.sampler_temperature=0.0 is out of range"),
    ],
)  # fmt: skip
def test_bad_correction_config_fails_before_training(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(compose_config([*SMALL, "algo=grpo", *overrides]))


def test_trl_names_are_aliases() -> None:
    settings = {
        "algo=grpo",
        "algo.vllm_importance_sampling_mode=token_mask",
        "algo.vllm_importance_sampling_clip_max=2.0",
    }
    objective, _, _ = build(compose_config([*SMALL, *sorted(settings)]))
    controls = objective.parts.controls
    assert controls.importance_sampling_correction == "token_mask" and controls.importance_sampling_cap == 2.0
    assert objective.needs_old_logps
