"""Issue 26's policy losses (dual-clip PPO, CISPO, SAPO), estimators (REINFORCE++-baseline, ReMax) and
controls (KL estimator, entropy bonus, the 80/20 high-entropy mask, DAPO's overlong punishment), against
hand-worked numbers and, where TRL has them, TRL's GRPOTrainer loss on the same tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.losses.advantages import (
    ADVANTAGE_ESTIMATORS,
    reinforce_pp_baseline_advantages,
    remax_advantages,
)
from rlhf_lab.losses.policy_gradient import POLICY_LOSSES, StepTotals, clipped_surrogate
from rlhf_lab.losses.surrogates import cispo_loss, sapo_loss
from rlhf_lab.rl.controls import Controls, high_entropy_mask
from rlhf_lab.rl.parts import RLParts
from rlhf_lab.rl.rollout import Rollout
from rlhf_lab.rl.update import micro_batch_loss
from tests.trl_grpo import trl_grpo_loss


def _logs(ratios: list[float], old: float = -1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, old_logps)`` ``[1, T]`` with the given ratios (logps with gradient)."""
    old_logps = torch.full((1, len(ratios)), old)
    logps = (old_logps + torch.tensor([ratios]).log()).requires_grad_()
    return logps, old_logps


# ------------------------------------------------------------------------------------------ dual clip
def test_dual_clip_caps_the_loss_of_negative_advantages_at_c() -> None:
    # A = -1: PPO's loss is max(rho, clip(rho, 0.8, 1.2)): rho = 4 -> 4, 0.5 -> 0.8, 1 -> 1.
    # Dual clip at c = 3: min(., 3) -> 3, 0.8, 1; the capped token has no gradient.
    logps, old = _logs([4.0, 0.5, 1.0])
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = clipped_surrogate(logps, old, torch.tensor([-1.0]), mask, clip_ratio_c=3.0)
    assert_close(out.losses, torch.tensor([[3.0, 0.8, 1.0]]))
    assert out.flags["clip_ratio/dual"].tolist() == [[True, False, False]]
    out.losses.sum().backward()
    assert_close(logps.grad, torch.tensor([[0.0, 0.0, 1.0]]))  # d(rho)/d(logp) = rho = 1 at the last
    # Positive advantages are untouched: -min(4, 1.2) = -1.2.
    logps, old = _logs([4.0])
    out = clipped_surrogate(logps, old, torch.tensor([1.0]), mask[:, :1], clip_ratio_c=3.0)
    assert_close(out.losses, torch.tensor([[-1.2]]))
    assert not out.flags["clip_ratio/dual"].any()
    # Off by default (TRL): the loss stays 4.
    logps, old = _logs([4.0])
    assert_close(
        clipped_surrogate(logps, old, torch.tensor([-1.0]), mask[:, :1]).losses, torch.tensor([[4.0]])
    )


def test_dual_clip_matches_verl_formula_on_random_tensors() -> None:
    """verl's ``compute_policy_loss_vanilla`` (clip_ratio_c), written out: pg1 = -A rho, pg2 = -A clip(rho),
    c1 = max(pg1, pg2), pg3 = -A c, where(A < 0, min(pg3, c1), c1); lower clipfrac (c1 > pg3) & (A < 0)."""
    torch.manual_seed(0)
    logps, old = torch.randn(4, 6), torch.randn(4, 6)
    advantages = torch.randn(4, 6)
    mask = torch.ones(4, 6, dtype=torch.bool)
    out = clipped_surrogate(logps, old, advantages, mask, epsilon=0.2, epsilon_high=0.28, clip_ratio_c=3.0)
    ratio = torch.exp(logps - old)
    c1 = torch.max(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.28))
    expected = torch.where(advantages < 0, torch.min(-advantages * 3.0, c1), c1)
    assert_close(out.losses, expected)
    assert torch.equal(out.flags["clip_ratio/dual"], (c1 > -advantages * 3.0) & (advantages < 0))


def test_dual_clip_constant_must_exceed_one() -> None:
    with pytest.raises(ConfigError, match=r"algo.clip_ratio_c=1.0"):
        RLParts.resolve("grpo", "ppo_clip", "grpo", {"clip_ratio_c": 1.0}, {})


# ---------------------------------------------------------------------------------------------- CISPO
def test_cispo_by_hand() -> None:
    # old p = e^-1; ratios 2 and 6; the weight is capped at 1 + 4 = 5: w = [2, 5] (constants).
    # loss = -w A log p with A = 1: [-2 (log 2 - 1), -5 (log 6 - 1)]; gradient -w A = [-2, -5].
    logps, old = _logs([2.0, 6.0])
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = cispo_loss(logps, old, torch.tensor([1.0]), mask)
    assert_close(out.losses, torch.tensor([[-2 * (math.log(2) - 1), -5 * (math.log(6) - 1)]]))
    assert out.high_clipped.tolist() == out.flags["cispo_clip_ratio"].tolist() == [[False, True]]
    out.losses.sum().backward()
    assert_close(logps.grad, torch.tensor([[-2.0, -5.0]]))  # the clipped token keeps its gradient (PPO: 0)


def test_cispo_lower_bound_and_padding() -> None:
    # epsilon_is_low = 0.5: a ratio of 0.25 is weighted 0.5; with A = -2 its loss is -0.5 * -2 * logp.
    logps, old = _logs([0.25, 1.0])
    mask = torch.tensor([[True, False]])
    out = cispo_loss(logps, old, torch.tensor([-2.0]), mask, epsilon_is_low=0.5)
    assert_close(out.losses, torch.tensor([[1.0 * (math.log(0.25) - 1), 0.0]]))
    assert out.low_clipped.tolist() == [[True, False]]


# ----------------------------------------------------------------------------------------------- SAPO
def test_sapo_by_hand() -> None:
    # f(rho) = 4/tau sigmoid(tau (rho - 1)); at rho = 1: f = 2/tau, df/drho = 1.
    logps, old = _logs([1.0, 1.0])
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = sapo_loss(logps, old, torch.tensor([[1.0, -1.0]]), mask, tau_pos=1.0, tau_neg=1.05)
    assert_close(out.losses, torch.tensor([[-2.0, 2 / 1.05]]))
    out.losses.sum().backward()
    assert_close(logps.grad, torch.tensor([[-1.0, 1.0]]))  # the plain policy gradient -A on-policy
    # Off-policy, rho = 2, A = 1, tau = 2: loss -2 sigmoid(2) = -1.7616; gradient -4 s(1-s) rho = -0.8399.
    logps, old = _logs([2.0])
    out = sapo_loss(logps, old, torch.tensor([1.0]), mask[:, :1], tau_pos=2.0)
    s = 1 / (1 + math.exp(-2.0))
    assert_close(out.losses, torch.tensor([[-2 * s]]))
    out.losses.sum().backward()
    assert_close(logps.grad, torch.tensor([[-4 * s * (1 - s) * 2.0]]))


# ---------------------------------------------------------------------------------------------- TRL
def _our_loss(parts: RLParts, logps, old, advantages, mask, entropies=None, token_mask=None) -> torch.Tensor:
    rollout = Rollout(None, 0, mask, advantages=advantages, old_logps=old, token_mask=token_mask)  # type: ignore[arg-type]
    entropies = torch.zeros_like(logps) if entropies is None else entropies
    totals = StepTotals(float(mask.shape[0]), float(mask.sum()), float(mask.sum()),
                        policy_tokens=rollout.policy_tokens())  # fmt: skip
    loss, _ = micro_batch_loss(parts, rollout, logps, entropies, None, totals, beta=0.0, kl_in_reward=False)
    return loss


def _random_case(seed: int = 0):
    torch.manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    old = -torch.rand(3, 5) * 2
    logps = (old + torch.randn(3, 5)).requires_grad_()  # ratios well off 1: the clips bind
    return logps, old, torch.tensor([1.0, -0.5, 2.0]), mask


@pytest.mark.parametrize(
    ("loss_type", "policy_loss", "agg", "ours", "theirs"),
    [
        ("cispo", "cispo", "token_mean", {}, {"epsilon_high": 5.0}),
        ("cispo", "cispo", "token_mean", {"epsilon_is_high": 1.0}, {"epsilon_high": 2.0}),
        ("sapo", "sapo", "seq_mean_token_mean", {}, {}),
        ("sapo", "sapo", "seq_mean_token_mean", {"tau_pos": 0.5, "tau_neg": 2.0},
         {"sapo_temperature_pos": 0.5, "sapo_temperature_neg": 2.0}),
    ],
)  # fmt: skip
def test_loss_and_gradient_equal_trl(loss_type, policy_loss, agg, ours, theirs) -> None:
    logps, old, advantages, mask = _random_case()
    parts = RLParts.resolve("grpo", policy_loss, agg, dict(ours), {})
    loss = _our_loss(parts, logps, old, advantages, mask)
    (grad,) = torch.autograd.grad(loss, logps)
    trl = trl_grpo_loss(loss_type, logps, old, advantages, mask, **theirs)
    (trl_grad,) = torch.autograd.grad(trl, logps)
    assert_close(loss, trl)
    assert_close(grad, trl_grad)


def test_high_entropy_mask_and_entropy_bonus_equal_trl() -> None:
    """80/20 (top_entropy_quantile = 0.2) and an entropy bonus, with GRPO's clipped loss: TRL's value."""
    logps, old, advantages, mask = _random_case(1)
    entropies = (torch.rand(3, 5) * 3).requires_grad_()
    token_mask = high_entropy_mask(entropies.detach(), mask, 0.2)
    settings = {"top_entropy_quantile": 0.2, "entropy_coef": 0.01}
    parts = RLParts.resolve("grpo", "ppo_clip", "grpo", dict(settings), {})
    loss = _our_loss(parts, logps, old, advantages, mask, entropies, token_mask)
    trl = trl_grpo_loss("grpo", logps, old, advantages, mask, entropies, **settings)
    assert_close(loss, trl)
    assert_close(torch.autograd.grad(loss, entropies)[0], torch.autograd.grad(trl, entropies)[0])


def test_high_entropy_mask_by_hand() -> None:
    # 5 masked entropies 0..4 (the off-mask 9 ignored): the 0.6 quantile is 2.4, so the top 40% are 3, 4.
    entropies = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert high_entropy_mask(entropies, mask, 0.4).tolist() == [[False, False, False], [True, True, False]]


# ------------------------------------------------------------------------------------------ estimators
def test_reinforce_pp_baseline_by_hand() -> None:
    # G = 2; rewards [1, 0 | 1, 1] on the last token; group means 0.5, 1 -> [0.5, -0.5 | 0, 0].
    # Returns-to-go (gamma 1) over masks of lengths 2, 1, 2, 2: [0.5, 0.5], [-0.5], [0, 0], [0, 0].
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    token_rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    out = reinforce_pp_baseline_advantages(token_rewards, rewards, mask, 2)
    values = torch.tensor([0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0])  # the 7 masked returns
    mean, std = values.mean(), values.std()  # unbiased, as TRL's masked_whiten
    expected = torch.zeros(4, 2)
    expected[mask] = (values - mean) / torch.sqrt(std**2 + 1e-8)
    assert_close(out.advantages, expected)
    assert ADVANTAGE_ESTIMATORS.get("reinforce_plus_plus_baseline") is reinforce_pp_baseline_advantages


def test_remax_by_hand() -> None:
    # Token rewards: a KL penalty on each token and the reward 1 on the last; greedy baseline 0.5.
    # Returns-to-go [0.7, 0.8] -> advantages [0.2, 0.3]; the short row: [0 - 0.5, 0 (off mask)].
    token_rewards = torch.tensor([[-0.1, 0.8], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    out = remax_advantages(token_rewards, torch.tensor([0.5, 0.5]), mask)
    assert_close(out.advantages, torch.tensor([[0.2, 0.3], [-0.5, 0.0]]))
    assert_close(out.metrics["baseline_reward"], torch.tensor(0.5))


# -------------------------------------------------------------------------------------------- controls
def test_overlong_punishment_by_hand() -> None:
    # DAPO Eq. 13 with L_max = 10, L_cache = 4: 0 up to 6 tokens, then -(|y| - 6) / 4, -1 at 10.
    controls = Controls(overlong_buffer_len=4, overlong_penalty_factor=1.0)
    penalty = controls.overlong_penalty(torch.tensor([3, 6, 7, 8, 10]), 10)
    assert_close(penalty, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0]))
    assert_close(Controls(overlong_buffer_len=4, overlong_penalty_factor=0.5).overlong_penalty(
        torch.tensor([10]), 10), torch.tensor([-0.5]))  # fmt: skip


def test_kl_estimator_in_the_loss() -> None:
    """beta * k (k1/k2/k3 by ``kl_estimator``) is added per token: loss(k) - loss(ppo alone) is beta k."""
    logps, old, advantages, mask = _random_case(2)
    reference = old + 0.3
    totals = StepTotals(3.0, float(mask.sum()), float(mask.sum()))
    rollout = Rollout(None, 0, mask, advantages=advantages, old_logps=old, reference_logps=reference)  # type: ignore[arg-type]
    log_ratio = (reference - logps.detach())[mask]
    expected = {"k1": -log_ratio, "k2": log_ratio**2 / 2, "k3": log_ratio.exp() - log_ratio - 1}
    base = None
    for name in (None, "k1", "k2", "k3"):
        parts = RLParts.resolve("grpo", "ppo_clip", "token_mean", {"kl_estimator": name}, {})
        beta = 0.0 if name is None else 0.5
        loss, _ = micro_batch_loss(parts, rollout, logps, torch.zeros_like(logps), None, totals,
                                   beta=beta, kl_in_reward=False)  # fmt: skip
        if name is None:
            base = loss
        else:
            assert_close(loss - base, 0.5 * expected[name].sum() / mask.sum())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kl_estimator": "k4"}, r"algo.kl_estimator='k4'"),
        ({"top_entropy_quantile": 0.0}, r"algo.top_entropy_quantile"),
        ({"entropy_coef": -0.1}, r"algo.entropy_coef"),
        ({"tau_neg": 0.0}, r"algo.tau_neg"),
        ({"epsilon_is_high": -1.0}, r"algo.epsilon_is_high"),
    ],
)
def test_controls_and_losses_fail_at_config_time(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        RLParts.resolve("grpo", "sapo", "grpo", settings, {})


def test_combinations_that_make_no_sense_fail() -> None:
    parts = RLParts.resolve("grpo", "ppo_clip", "grpo", {"kl_estimator": "k2"}, {})
    with pytest.raises(ConfigError, match=r"algo.kl_estimator=k2 .* algo.beta=0"):
        parts.check("grpo", 4, beta=0.0, max_new_tokens=8)
    for key in ("min_new_tokens", "overlong_buffer_len"):
        parts = RLParts.resolve("grpo", "ppo_clip", "grpo", {key: 8}, {})
        with pytest.raises(ConfigError, match=rf"algo.{key}=8 must be below algo.max_new_tokens=8"):
            parts.check("grpo", 4, beta=0.0, max_new_tokens=8)


def test_trl_names_are_aliases() -> None:
    from rlhf_lab.rl.parts import take_aliases

    settings = {"sapo_temperature_neg": 2.0, "entropy_coeff": 0.1}
    take_aliases(settings)
    parts = RLParts.resolve("grpo", "sapo", "grpo", settings, {})
    assert parts.policy_loss_kwargs["tau_neg"] == 2.0 and parts.controls.entropy_coef == 0.1
    assert POLICY_LOSSES.get("sapo") is sapo_loss
