"""CPO, SimPO, ORPO, KTO and reward-model losses against hand-worked numbers and limiting cases.

Shared example: beta = 0.5, summed log-probs chosen -1, rejected -3, so h = 2 and beta*h = 1;
-log sigma(1) = log(1 + e^-1) = 0.3132617.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.losses import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    log1mexp,
    orpo_odds_ratio_loss,
    simpo_loss,
)

SIGMOID_1 = math.log1p(math.exp(-1))  # -log sigma(1)
C, R = torch.tensor([-1.0]), torch.tensor([-3.0])


# ---------------------------------------------------------------------------------------------- CPO
@pytest.mark.parametrize(
    ("loss_type", "smoothing", "expected"),
    [
        ("sigmoid", 0.0, SIGMOID_1),
        ("sigmoid", 0.1, 0.9 * SIGMOID_1 + 0.1 * math.log1p(math.exp(1))),
        ("hinge", 0.0, 0.0),  # max(0, 1 - 1)
        ("ipo", 0.0, 1.0),  # (2 - 1/(2*0.5))^2
    ],
)
def test_cpo_hand_worked(loss_type: str, smoothing: float, expected: float) -> None:
    out = cpo_loss(C, R, beta=0.5, loss_type=loss_type, label_smoothing=smoothing)
    assert_close(out.losses, torch.tensor([expected]))
    assert_close(out.chosen_rewards, torch.tensor([-0.5]))
    assert_close(out.rejected_rewards, torch.tensor([-1.5]))


def test_cpo_is_the_reference_free_sigmoid_loss() -> None:
    """CPO's preference term equals DPO's with a zero reference (cpo_alpha = 0 leaves only this term)."""
    c, r = torch.tensor([-4.0, -2.5, -9.0]), torch.tensor([-3.0, -6.0, -1.0])
    zero = torch.zeros(3)
    assert_close(cpo_loss(c, r, beta=0.3).losses, dpo_loss(c, r, zero, zero, beta=0.3).losses)


# -------------------------------------------------------------------------------------------- SimPO
def test_simpo_hand_worked() -> None:
    """Chosen -2 over 2 tokens (mean -1), rejected -6 over 3 (mean -2); beta 2: rewards -2, -4; gamma 1:
    -log sigma(2 - 1) = 0.3132617."""
    out = simpo_loss(
        torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([2]), torch.tensor([3]), beta=2.0, gamma=1.0
    )
    assert_close(out.losses, torch.tensor([SIGMOID_1]))
    assert_close(out.chosen_rewards, torch.tensor([-2.0]))
    assert_close(out.rejected_rewards, torch.tensor([-4.0]))


def test_simpo_without_margin_is_the_length_normalised_sigmoid_loss() -> None:
    c, r = torch.tensor([-4.0, -2.5]), torch.tensor([-3.0, -6.0])
    lc, lr = torch.tensor([4, 5]), torch.tensor([2, 3])
    expected = -torch.nn.functional.logsigmoid(1.5 * (c / lc - r / lr))
    assert_close(simpo_loss(c, r, lc, lr, beta=1.5, gamma=0.0).losses, expected)


# --------------------------------------------------------------------------------------------- ORPO
def test_log1mexp_is_accurate_at_both_ends() -> None:
    x = torch.tensor([-1e-8, -0.1, -0.6931, -5.0, -50.0], dtype=torch.float64)
    assert_close(log1mexp(x), torch.log(-torch.expm1(x)))
    assert torch.isfinite(log1mexp(torch.tensor([-1e-8]))).all()  # the naive form gives -inf in float32


def test_orpo_hand_worked() -> None:
    """Mean log-probs ln 0.5 (chosen) and ln 0.25 (rejected): odds 1 and 1/3, log odds ratio ln 3,
    log sigma(ln 3) = ln 0.75; lambda 0.1 -> loss -0.1 ln 0.75 = 0.0287682; rewards 0.1 * mean logp."""
    chosen = torch.tensor([2 * math.log(0.5)])  # two tokens
    rejected = torch.tensor([math.log(0.25)])  # one token
    out = orpo_odds_ratio_loss(chosen, rejected, torch.tensor([2]), torch.tensor([1]), lambda_=0.1)
    assert_close(out.log_odds_chosen, torch.tensor([math.log(3.0)]))
    assert_close(out.log_odds_ratio, torch.tensor([math.log(0.75)]))
    assert_close(out.losses, torch.tensor([-0.1 * math.log(0.75)]))
    assert_close(out.chosen_rewards, torch.tensor([0.1 * math.log(0.5)]))
    assert_close(out.rejected_rewards, torch.tensor([0.1 * math.log(0.25)]))


def test_orpo_gradient_is_finite_when_probabilities_approach_one() -> None:
    chosen = torch.tensor([-1e-9, -30.0], requires_grad=True)
    out = orpo_odds_ratio_loss(
        chosen, torch.tensor([-5.0, -1e-9]), torch.tensor([1, 3]), torch.tensor([1, 1])
    )
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(chosen.grad).all()


# ---------------------------------------------------------------------------------------------- KTO
def test_kto_equal_logratios_and_zero_kl_give_one_minus_sigmoid_zero() -> None:
    logps = torch.tensor([-3.0, -7.0])
    out = kto_loss(logps, logps, torch.tensor([True, False]), torch.tensor(0.0), beta=0.1)
    assert_close(out.losses, torch.tensor([0.5, 0.5]))  # 1 - sigma(0)


def test_kto_hand_worked_with_weights_and_kl() -> None:
    """beta 1, z0 0.5; desirable r = 1.5: 1 - sigma(1) = 0.2689414, weight 2 -> 0.5378828;
    undesirable r = -0.5: 1 - sigma(0.5 - (-0.5)) = 1 - sigma(1) = 0.2689414, weight 1."""
    out = kto_loss(
        torch.tensor([-1.0, -3.0]),
        torch.tensor([-2.5, -2.5]),
        torch.tensor([True, False]),
        torch.tensor(0.5),
        beta=1.0,
        desirable_weight=2.0,
        undesirable_weight=1.0,
    )
    one_minus_sigmoid_1 = 1 - 1 / (1 + math.exp(-1))
    assert_close(out.losses, torch.tensor([2 * one_minus_sigmoid_1, one_minus_sigmoid_1]))
    assert_close(out.rewards, torch.tensor([1.5, -0.5]))


def test_kto_kl_estimate_is_clamped_and_detached() -> None:
    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    assert_close(kto_kl_estimate(policy, torch.tensor([-2.0, -2.0])), torch.tensor(0.5))
    assert kto_kl_estimate(policy, torch.tensor([0.0, 0.0])) == 0  # mean -1.5 clamps to 0
    assert not kto_kl_estimate(policy, torch.tensor([-2.0, -2.0])).requires_grad


# ------------------------------------------------------------------------------------------- reward
def test_bradley_terry_hand_worked() -> None:
    chosen, rejected = torch.tensor([2.0]), torch.tensor([1.0])
    assert_close(bradley_terry_loss(chosen, rejected), torch.tensor([SIGMOID_1]))
    assert_close(
        bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0])), torch.tensor([math.log(2.0)])
    )
    assert_close(
        bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.01),
        torch.tensor([SIGMOID_1 + 0.09]),
    )


def test_invalid_hyperparameters_name_their_keys() -> None:
    with pytest.raises(ConfigError, match="algo.loss_type='robust'"):
        cpo_loss(C, R, loss_type="robust")
    with pytest.raises(ConfigError, match="algo.beta"):
        simpo_loss(C, R, torch.tensor([1]), torch.tensor([1]), beta=-1.0)
    with pytest.raises(ConfigError, match="algo.lambda"):
        orpo_odds_ratio_loss(C, R, torch.tensor([1]), torch.tensor([1]), lambda_=-0.1)
    with pytest.raises(ConfigError, match="algo.desirable_weight"):
        kto_loss(C, R, torch.tensor([True]), torch.tensor(0.0), desirable_weight=-1.0)
