"""Policy-gradient losses (RLOO, GRPO and its variants, PPO) against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.losses.policy_gradient import (
    LOSS_TYPES,
    STD_EPS,
    clipped_surrogate,
    clipped_value_loss,
    gae_advantages,
    group_advantages,
    kl_estimate,
    masked_mean,
    masked_whiten,
    reduce_token_losses,
    rloo_advantages,
)

# ---------------------------------------------------------------------------------------------------------
# rloo_advantages
# ---------------------------------------------------------------------------------------------------------


def test_rloo_subtracts_the_mean_of_the_other_samples() -> None:
    """Each advantage is r_i minus the mean of the group's other G - 1 rewards, per group."""
    # G = 3, groups [1, 2, 6] and [3, 3, 0]:
    #   1 - (2 + 6)/2 = -3     2 - (1 + 6)/2 = -1.5   6 - (1 + 2)/2 = 4.5
    #   3 - (3 + 0)/2 = 1.5    3 - (3 + 0)/2 = 1.5    0 - (3 + 3)/2 = -3
    rewards = torch.tensor([1.0, 2.0, 6.0, 3.0, 3.0, 0.0])
    expected = torch.tensor([-3.0, -1.5, 4.5, 1.5, 1.5, -3.0])
    assert_close(rloo_advantages(rewards, 3), expected)


def test_rloo_group_of_four() -> None:
    """G = 4: the baseline averages three rewards (and A_i = G/(G-1) (r_i - mean))."""
    # [1, 2, 3, 6]: 1 - 11/3 = -8/3, 2 - 10/3 = -4/3, 3 - 9/3 = 0, 6 - 6/3 = 4
    # check with G/(G-1)(r - mean), mean 3: 4/3 * [-2, -1, 0, 3] = [-8/3, -4/3, 0, 4]
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert_close(rloo_advantages(rewards, 4), torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0]))


def test_rloo_needs_two_generations() -> None:
    """With G = 1 there is no other sample to form the baseline."""
    with pytest.raises(ValueError, match="num_generations >= 2"):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)


def test_rloo_rejects_rewards_not_splitting_into_groups() -> None:
    """5 rewards do not split into groups of 2."""
    with pytest.raises(ValueError, match="num_generations=2"):
        rloo_advantages(torch.arange(5.0), 2)


# ---------------------------------------------------------------------------------------------------------
# group_advantages
# ---------------------------------------------------------------------------------------------------------

# Groups [0, 2, 4] and [2, 2, 2] (G = 3).
#   group 0: mean 2, centred [-2, 0, 2], unbiased var (4 + 0 + 4)/2 = 4, std 2
#   group 1: mean 2, centred [0, 0, 0], std 0
#   batch:   mean 2, centred [-2, 0, 2, 0, 0, 0], unbiased var 8/5 = 1.6, std sqrt(1.6)
GROUP_REWARDS = torch.tensor([0.0, 2.0, 4.0, 2.0, 2.0, 2.0])
CENTRED = torch.tensor([-2.0, 0.0, 2.0, 0.0, 0.0, 0.0])


def test_group_scaling_divides_by_group_std_plus_epsilon() -> None:
    """scale_rewards=group: (r - mean) / (std + 1e-4); a group of equal rewards gets zeros, not NaN."""
    advantages, std = group_advantages(GROUP_REWARDS, 3, scale_rewards="group")
    # 2 / (2 + 1e-4) = 0.99995000..., distinguishable from 1 at float32 tolerance
    a = 2.0 / (2.0 + 1e-4)
    assert_close(advantages, torch.tensor([-a, 0.0, a, 0.0, 0.0, 0.0]))
    assert not torch.allclose(advantages[2], torch.tensor(1.0), rtol=1e-6, atol=0.0)
    assert_close(std, torch.tensor([2.0, 0.0]))
    assert STD_EPS == 1e-4


def test_batch_scaling_divides_by_the_std_of_all_rewards() -> None:
    """scale_rewards=batch: centred within each group, divided by the unbiased std of all N rewards."""
    advantages, std = group_advantages(GROUP_REWARDS, 3, scale_rewards="batch")
    assert_close(advantages, CENTRED / (math.sqrt(1.6) + 1e-4))
    assert_close(std, torch.tensor([2.0, 0.0]))  # still the per-group std


def test_no_scaling_only_centres() -> None:
    """scale_rewards=none (Dr. GRPO): r - group mean."""
    advantages, std = group_advantages(GROUP_REWARDS, 3, scale_rewards="none")
    assert_close(advantages, CENTRED)
    assert_close(std, torch.tensor([2.0, 0.0]))


def test_group_std_is_unbiased() -> None:
    """[1, 3]: unbiased var (1 + 1)/1 = 2 (the biased one would be 1)."""
    _, std = group_advantages(torch.tensor([1.0, 3.0]), 2)
    assert_close(std, torch.tensor([math.sqrt(2.0)]))


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_equal_rewards_give_zero_advantages(scale_rewards: str) -> None:
    """All rewards equal: no learning signal, and no NaN from dividing by a zero std."""
    advantages, std = group_advantages(torch.full((4,), 0.7), 2, scale_rewards=scale_rewards)
    assert_close(advantages, torch.zeros(4))
    assert_close(std, torch.zeros(2))


def test_group_std_matches_trl_nanstd() -> None:
    """The per-group std is TRL's (``trl.trainer.utils.nanstd``, as GRPOTrainer computes it)."""
    utils = pytest.importorskip("trl.trainer.utils")
    if not hasattr(utils, "nanstd"):
        pytest.skip("this TRL has no nanstd")
    rewards = torch.randn(24, generator=torch.Generator().manual_seed(0))
    _, std = group_advantages(rewards, 4)
    assert_close(std, utils.nanstd(rewards.view(-1, 4), dim=1))
    advantages, _ = group_advantages(rewards, 4, scale_rewards="batch")
    centred = rewards.view(-1, 4) - rewards.view(-1, 4).mean(1, keepdim=True)
    assert_close(advantages, centred.reshape(-1) / (utils.nanstd(rewards) + 1e-4))


# ---------------------------------------------------------------------------------------------------------
# kl_estimate
# ---------------------------------------------------------------------------------------------------------

# logps = [-1, -2], reference = [-2, -1]: log_ratio = ref - logp = [-1, 1]
#   k1 = -log_ratio                  = [1, -1]
#   k2 = log_ratio^2 / 2             = [0.5, 0.5]
#   k3 = exp(lr) - lr - 1            = [e^-1 + 1 - 1, e - 1 - 1] = [0.3678794, 0.7182818]
KL_LOGPS = torch.tensor([-1.0, -2.0])
KL_REF = torch.tensor([-2.0, -1.0])


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        ("k1", [1.0, -1.0]),
        ("k2", [0.5, 0.5]),
        ("k3", [math.exp(-1.0), math.e - 2.0]),
    ],
)
def test_kl_estimators_hand_values(estimator: str, expected: list[float]) -> None:
    """k1/k2/k3 on log-ratios -1 and +1."""
    assert_close(kl_estimate(KL_LOGPS, KL_REF, estimator=estimator), torch.tensor(expected))


def test_k3_is_non_negative_and_zero_at_equal_logps() -> None:
    """k3 = e^x - x - 1 >= 0 everywhere, and exactly 0 where the policies agree (k1 goes negative)."""
    g = torch.Generator().manual_seed(0)
    logps, ref = torch.randn(64, generator=g), torch.randn(64, generator=g)
    assert (kl_estimate(logps, ref, estimator="k3") >= 0).all()
    assert (kl_estimate(logps, ref, estimator="k1") < 0).any()
    for estimator in ("k1", "k2", "k3"):
        assert_close(kl_estimate(logps, logps.clone(), estimator=estimator), torch.zeros(64))


# ---------------------------------------------------------------------------------------------------------
# clipped_surrogate
# ---------------------------------------------------------------------------------------------------------


def _surrogate(ratios: list[float], advantages: torch.Tensor, mask: torch.Tensor | None = None, **kwargs):
    """One token per row, old log-probs 0, so rho = exp(logp) = the given ratio."""
    logps = torch.tensor(ratios).log().unsqueeze(-1)
    mask = torch.ones_like(logps, dtype=torch.bool) if mask is None else mask
    return clipped_surrogate(logps, torch.zeros_like(logps), advantages, mask, **kwargs)


def test_surrogate_symmetric_clip() -> None:
    """epsilon = 0.2: the pessimistic min of the clipped and unclipped objectives, per token."""
    # ratio, A -> -min(rho A, clip(rho, 0.8, 1.2) A)
    #   1.1,  2  -> -min(2.2, 2.2)    = -2.2   inside the range: -rho A
    #   1.5,  2  -> -min(3.0, 2.4)    = -2.4   clipped at 1 + eps (high_clipped)
    #   0.5, -1  -> -min(-0.5, -0.8)  =  0.8   clipped at 1 - eps (low_clipped)
    #   1.5, -1  -> -min(-1.5, -1.2)  =  1.5   above the range but A < 0: unclipped is the min
    #   0.5,  2  -> -min(1.0, 1.6)    = -1.0   below the range but A > 0: unclipped is the min
    out = _surrogate([1.1, 1.5, 0.5, 1.5, 0.5], torch.tensor([2.0, 2.0, -1.0, -1.0, 2.0]), epsilon=0.2)
    assert_close(out.losses.squeeze(-1), torch.tensor([-2.2, -2.4, 0.8, 1.5, -1.0]))
    assert_close(out.ratio.squeeze(-1), torch.tensor([1.1, 1.5, 0.5, 1.5, 0.5]))
    assert out.high_clipped.squeeze(-1).tolist() == [False, True, False, False, False]
    assert out.low_clipped.squeeze(-1).tolist() == [False, False, True, False, False]


def test_surrogate_decoupled_upper_bound() -> None:
    """epsilon = 0.2, epsilon_high = 0.28 (DAPO): the range is [0.8, 1.28]."""
    #   1.25,  2 -> inside [0.8, 1.28]: -2.5 (epsilon_high=0.2 would have clipped it to -2.4)
    #   1.5,   2 -> clipped at 1.28:    -2.56
    #   0.7,  -1 -> clipped at 0.8:      0.8  (the lower bound is still 1 - epsilon)
    out = _surrogate([1.25, 1.5, 0.7], torch.tensor([2.0, 2.0, -1.0]), epsilon=0.2, epsilon_high=0.28)
    assert_close(out.losses.squeeze(-1), torch.tensor([-2.5, -2.56, 0.8]))
    assert out.high_clipped.squeeze(-1).tolist() == [False, True, False]
    assert out.low_clipped.squeeze(-1).tolist() == [False, False, True]


def test_surrogate_per_token_advantages_and_mask() -> None:
    """[N, L] advantages; off-mask tokens give loss 0 and are never flagged clipped, whatever their ratio."""
    # row: ratios [1.1, 3.0 (masked), 0.1 (masked)], A [1, 1, -1]: -1.1, then 0, 0
    logps = torch.tensor([[1.1, 3.0, 0.1]]).log()
    mask = torch.tensor([[True, False, False]])
    out = clipped_surrogate(logps, torch.zeros_like(logps), torch.tensor([[1.0, 1.0, -1.0]]), mask)
    assert_close(out.losses, torch.tensor([[-1.1, 0.0, 0.0]]))
    assert not out.high_clipped.any()
    assert not out.low_clipped.any()


def test_surrogate_sequence_level_ratio() -> None:
    """GSPO: one ratio per sequence, exp(mean over its masked tokens of log(pi/pi_old)), shared by them."""
    # row 0: log-ratios [0.2, 0.0, 5.0 (masked)] -> mean over 2 tokens 0.1 -> rho = e^0.1 = 1.1051709
    #        A = 1, inside [0.8, 1.2]: losses [-1.1051709, -1.1051709, 0]
    #        (a leak of the masked 5.0 would make the mean 2.6)
    # row 1: log-ratios [0.6, 0.0, 0.0] -> mean 0.2 -> rho = e^0.2 = 1.2214028 > 1.2
    #        A = 1: clipped to 1.2 at every token: losses [-1.2] * 3, all high_clipped
    logps = torch.tensor([[0.2, 0.0, 5.0], [0.6, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = clipped_surrogate(
        logps, torch.zeros_like(logps), torch.tensor([1.0, 1.0]), mask, importance_sampling_level="sequence"
    )
    r0, r1 = math.exp(0.1), math.exp(0.2)
    assert_close(out.ratio[0, :2], torch.tensor([r0, r0]))
    assert_close(out.ratio[1], torch.tensor([r1, r1, r1]))
    assert_close(out.losses, torch.tensor([[-r0, -r0, 0.0], [-1.2, -1.2, -1.2]]))
    assert out.high_clipped.tolist() == [[False, False, False], [True, True, True]]


def test_surrogate_gradient_at_ratio_one_is_minus_advantage() -> None:
    """On-policy (rho = 1): d loss / d logp_t = -A per unmasked token, 0 off the mask."""
    # loss_t = -rho_t A = -exp(logp_t - old_t) A, d/d logp_t = -rho_t A = -A at rho = 1
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -4.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantages = torch.tensor([2.0, -0.5])
    out = clipped_surrogate(logps, logps.detach(), advantages, mask)
    out.losses.sum().backward()
    assert_close(logps.grad, torch.tensor([[-2.0, -2.0, -2.0], [0.5, 0.5, 0.0]]))
    assert not out.ratio.requires_grad


# ---------------------------------------------------------------------------------------------------------
# reduce_token_losses
# ---------------------------------------------------------------------------------------------------------

# Two sequences, lengths 1 and 3; the padding holds 100s that must never count.
#   per-sequence sums 4 and 1 + 2 + 6 = 9, total 13, 4 tokens, max_completion_length 4
#   grpo      (4/1 + 9/3) / 2   = 3.5
#   sequence  (4 + 9) / 2       = 6.5
#   dr_grpo   13 / (2 * 4)      = 1.625
#   dapo      13 / 4            = 3.25
#   bnpo      13 / 4            = 3.25
LOSSES = torch.tensor([[4.0, 100.0, 100.0], [1.0, 2.0, 6.0]])
MASK = torch.tensor([[True, False, False], [True, True, True]])


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [("grpo", 3.5), ("sequence", 6.5), ("dr_grpo", 1.625), ("dapo", 3.25), ("bnpo", 3.25)],
)
def test_reduce_hand_values(loss_type: str, expected: float) -> None:
    """Each normalisation on sequences of lengths 1 and 3."""
    out = reduce_token_losses(LOSSES, MASK, loss_type=loss_type, max_completion_length=4)
    assert_close(out, torch.tensor(expected))


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo"])
def test_reduce_token_level_uses_given_token_count(loss_type: str) -> None:
    """num_tokens overrides the batch's own count: 13 / 10."""
    out = reduce_token_losses(LOSSES, MASK, loss_type=loss_type, num_tokens=10)
    assert_close(out, torch.tensor(1.3))


def test_reduce_grpo_counts_an_empty_sequence_without_nan() -> None:
    """A sequence with no tokens adds 0 but still counts in the mean over sequences: (4 + 3 + 0) / 3."""
    losses = torch.cat([LOSSES, torch.full((1, 3), 7.0)])
    mask = torch.cat([MASK, torch.zeros(1, 3, dtype=torch.bool)])
    assert_close(reduce_token_losses(losses, mask, loss_type="grpo"), torch.tensor(7.0 / 3))


def test_reduce_dr_grpo_needs_max_completion_length() -> None:
    """dr_grpo's constant normaliser must be given."""
    with pytest.raises(ValueError, match="max_completion_length"):
        reduce_token_losses(LOSSES, MASK, loss_type="dr_grpo")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_reduce_micro_batches_sum_to_the_whole_batch(loss_type: str) -> None:
    """Gradient accumulation is exact: micro-batch results, given the whole batch's totals, sum to it."""
    # 3 sequences of lengths 1, 3, 2 (6 tokens), split [0] + [1, 2]
    losses = torch.tensor([[4.0, 9.0, 9.0], [1.0, 2.0, 6.0], [-3.0, 5.0, 9.0]])
    mask = torch.tensor([[True, False, False], [True, True, True], [True, True, False]])
    whole = reduce_token_losses(losses, mask, loss_type=loss_type, max_completion_length=3)
    parts = [
        reduce_token_losses(
            losses[rows],
            mask[rows],
            loss_type=loss_type,
            num_sequences=3,
            num_tokens=6,
            max_completion_length=3,
        )
        for rows in (slice(0, 1), slice(1, 3))
    ]
    assert_close(parts[0] + parts[1], whole)
    # and the whole batch's value itself, by hand: sums 4, 9, 2 (total 15); means 4, 3, 1
    expected = {"grpo": 8 / 3, "sequence": 5.0, "dr_grpo": 15 / 9, "dapo": 2.5, "bnpo": 2.5}[loss_type]
    assert_close(whole, torch.tensor(expected))


# ---------------------------------------------------------------------------------------------------------
# gae_advantages
# ---------------------------------------------------------------------------------------------------------


def test_gae_hand_worked_episode_and_short_row() -> None:
    """gamma = 0.9, lam = 0.8 (gamma lam = 0.72); the second row ends after 2 tokens."""
    # row 0: r = [0, 0, 0, 1], V = [0.5, 0.6, 0.7, 0.8], V past the end 0
    #   delta_3 = 1 + 0.9*0   - 0.8 = 0.2
    #   delta_2 = 0 + 0.9*0.8 - 0.7 = 0.02
    #   delta_1 = 0 + 0.9*0.7 - 0.6 = 0.03
    #   delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04
    #   A_3 = 0.2
    #   A_2 = 0.02 + 0.72*0.2     = 0.164
    #   A_1 = 0.03 + 0.72*0.164   = 0.14808
    #   A_0 = 0.04 + 0.72*0.14808 = 0.1466176
    #   R = A + V = [0.6466176, 0.74808, 0.864, 1.0]
    # row 1: mask [1, 1, 0, 0], r = [0, 1, 5, 5], V = [0.5, 0.6, 9, 9] (junk past the end)
    #   delta_1 = 1 + 0.9*0 - 0.6 = 0.4   (V_2 = 9 must not leak in)
    #   delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04
    #   A = [0.04 + 0.72*0.4, 0.4, 0, 0] = [0.328, 0.4, 0, 0]; R = [0.828, 1.0, 0, 0]
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 5.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 9.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    assert_close(advantages, torch.tensor([[0.1466176, 0.14808, 0.164, 0.2], [0.328, 0.4, 0.0, 0.0]]))
    assert_close(returns, torch.tensor([[0.6466176, 0.74808, 0.864, 1.0], [0.828, 1.0, 0.0, 0.0]]))
    assert_close(returns, (advantages + values.detach()) * mask)
    assert not advantages.requires_grad and not returns.requires_grad


def test_gae_with_gamma_and_lambda_one_is_monte_carlo() -> None:
    """gamma = lam = 1: A_t = (sum of rewards from t) - V_t, so every return is the episode's total."""
    # r = [0, 0, 1], V = [0.2, 0.3, 0.4]: A = [0.8, 0.7, 0.6], R = [1, 1, 1]
    advantages, returns = gae_advantages(
        torch.tensor([[0.0, 0.0, 1.0]]),
        torch.tensor([[0.2, 0.3, 0.4]]),
        torch.ones(1, 3, dtype=torch.bool),
        gamma=1.0,
        lam=1.0,
    )
    assert_close(advantages, torch.tensor([[0.8, 0.7, 0.6]]))
    assert_close(returns, torch.ones(1, 3))


# ---------------------------------------------------------------------------------------------------------
# clipped_value_loss
# ---------------------------------------------------------------------------------------------------------


def test_clipped_value_loss_hand_values() -> None:
    """0.5 max((V - R)^2, (clip(V, V_old +- 0.2) - R)^2), and which term won."""
    # V,   V_old, R  -> clip(V)  unclipped  clipped   loss    clipped larger?
    # 1.1, 1.0,  2.0 -> 1.1      0.81       0.81      0.405   no (inside the range)
    # 1.5, 1.0,  2.0 -> 1.2      0.25       0.64      0.32    yes
    # 1.5, 1.0,  0.0 -> 1.2      2.25       1.44      1.125   no
    # 0.5, 1.0,  0.0 -> 0.8      0.25       0.64      0.32    yes
    # 0.5, 1.0,  1.0 -> 0.8      0.25       0.04      0.125   no
    # 9.0, 1.0,  0.0 -> masked: 0, not flagged
    values = torch.tensor([[1.1, 1.5, 1.5, 0.5, 0.5, 9.0]])
    old = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    losses, clipped = clipped_value_loss(values, old, returns, mask, cliprange_value=0.2)
    assert_close(losses, torch.tensor([[0.405, 0.32, 1.125, 0.32, 0.125, 0.0]]))
    assert clipped.tolist() == [[False, True, False, True, False, False]]


# ---------------------------------------------------------------------------------------------------------
# masked_mean / masked_whiten
# ---------------------------------------------------------------------------------------------------------


def test_masked_mean_ignores_off_mask_entries() -> None:
    """(1 + 2 + 3) / 3 = 2; the 100s are off the mask; an empty mask gives 0."""
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert_close(masked_mean(values, mask), torch.tensor(2.0))
    assert_close(masked_mean(values, torch.zeros_like(mask)), torch.tensor(0.0))


def test_masked_whiten_uses_unbiased_variance() -> None:
    """[2, 4, 6] (+ an off-mask 50): mean 4, unbiased var (4 + 0 + 4)/2 = 4, std 2 -> [-1, 0, 1, 0].

    The biased variance (8/3) would give +-1.2247 instead.
    """
    values = torch.tensor([[2.0, 4.0], [6.0, 50.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert_close(masked_whiten(values, mask), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))


def test_masked_whiten_without_shift_keeps_the_mean() -> None:
    """shift_mean=False scales by 1/std about the mean and adds the mean back: [3, 4, 5], off-mask 0."""
    values = torch.tensor([[2.0, 4.0], [6.0, 50.0]])
    mask = torch.tensor([[True, True], [True, False]])
    out = masked_whiten(values, mask, shift_mean=False)
    assert_close(out, torch.tensor([[3.0, 4.0], [5.0, 0.0]]))
    assert_close(masked_mean(out, mask), torch.tensor(4.0))


def _trl_helper(name: str):
    """A pure helper of the installed TRL, wherever this version keeps it (skip if none has it)."""
    for module in ("trl.trainer.utils", "trl.core", "trl.trainer.ppo_trainer", "trl.experimental.ppo"):
        try:
            found = getattr(pytest.importorskip(module), name, None)
        except pytest.skip.Exception:
            continue
        if found is not None:
            return found
    pytest.skip(f"this TRL exposes no {name}")


def test_masked_mean_matches_trl() -> None:
    """Ours against TRL's masked_mean on random inputs."""
    trl_masked_mean = _trl_helper("masked_mean")
    g = torch.Generator().manual_seed(0)
    values, mask = torch.randn(4, 7, generator=g), torch.rand(4, 7, generator=g) > 0.3
    assert_close(masked_mean(values, mask), trl_masked_mean(values, mask.float()))


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_trl(shift_mean: bool) -> None:
    """Ours against TRL's masked_whiten on random inputs (on the mask; ours zeroes the rest)."""
    trl_masked_whiten = _trl_helper("masked_whiten")
    g = torch.Generator().manual_seed(0)
    values, mask = torch.randn(4, 7, generator=g) * 3 + 1, torch.rand(4, 7, generator=g) > 0.3
    theirs = trl_masked_whiten(values, mask.float(), shift_mean=shift_mean)
    assert_close(masked_whiten(values, mask, shift_mean=shift_mean)[mask], theirs[mask])
