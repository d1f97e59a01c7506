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
    check_hyperparameters,
    clamp_kl,
    cpo_loss,
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    log1mexp,
    orpo_loss,
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
    ],
)
def test_cpo_hand_worked(loss_type: str, smoothing: float, expected: float) -> None:
    out = cpo_loss(C, R, beta=0.5, cpo_alpha=0.0, loss_type=loss_type, label_smoothing=smoothing)
    assert_close(out.losses, torch.tensor([expected]))
    assert_close(out.chosen_rewards, torch.tensor([-0.5]))
    assert_close(out.rejected_rewards, torch.tensor([-1.5]))


def test_cpo_ipo_uses_per_token_mean_log_probs() -> None:
    """Chosen -1 over 1 token, rejected -3 over 2 tokens: means -1 and -1.5, h_bar = 0.5;
    beta 0.5: (0.5 - 1/(2*0.5))^2 = 0.25; rewards 0.5 * means (what the loss compares), as TRL's CPO."""
    out = cpo_loss(C, R, torch.tensor([1]), torch.tensor([2]), beta=0.5, cpo_alpha=0.0, loss_type="ipo")
    assert_close(out.losses, torch.tensor([0.25]))
    assert_close(out.chosen_rewards, torch.tensor([-0.5]))
    assert_close(out.rejected_rewards, torch.tensor([-0.75]))
    # The same length-normalised IPO term as DPO's ipo with a zero reference.
    zero = torch.zeros(1)
    lengths = (torch.tensor([1]), torch.tensor([2]))
    assert_close(out.losses, dpo_loss(C, R, zero, zero, *lengths, beta=0.5, loss_type="ipo").losses)


def test_cpo_adds_cpo_alpha_times_the_chosen_nll() -> None:
    """Eq. 6: preference term 0.3132617 + cpo_alpha (2) * NLL (0.25) = 0.8132617."""
    out = cpo_loss(C, R, chosen_nll=torch.tensor([0.25]), beta=0.5, cpo_alpha=2.0)
    assert_close(out.losses, torch.tensor([SIGMOID_1 + 0.5]))
    with pytest.raises(ValueError, match="cpo_alpha"):
        cpo_loss(C, R, beta=0.5, cpo_alpha=1.0)  # the NLL term needs the NLL


def test_cpo_is_the_reference_free_sigmoid_loss() -> None:
    """CPO's preference term equals DPO's with a zero reference (cpo_alpha = 0 leaves only this term)."""
    c, r = torch.tensor([-4.0, -2.5, -9.0]), torch.tensor([-3.0, -6.0, -1.0])
    zero = torch.zeros(3)
    assert_close(cpo_loss(c, r, beta=0.3, cpo_alpha=0.0).losses, dpo_loss(c, r, zero, zero, beta=0.3).losses)


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


def test_cpo_simpo_adds_the_nll_term() -> None:
    c, r, lengths = torch.tensor([-2.0]), torch.tensor([-6.0]), (torch.tensor([2]), torch.tensor([3]))
    nll = torch.tensor([1.0])
    out = simpo_loss(c, r, *lengths, nll, beta=2.0, gamma=1.0, cpo_alpha=0.5)
    assert_close(out.losses, torch.tensor([SIGMOID_1 + 0.5]))


# --------------------------------------------------------------------------------------------- ORPO
def test_log1mexp_is_accurate_at_both_ends() -> None:
    x = torch.tensor([-1e-8, -0.1, -0.6931, -5.0, -50.0], dtype=torch.float64)
    assert_close(log1mexp(x), torch.log(-torch.expm1(x)))
    assert torch.isfinite(log1mexp(torch.tensor([-1e-8]))).all()  # the naive form gives -inf in float32


def test_orpo_hand_worked() -> None:
    """Mean log-probs ln 0.5 (chosen) and ln 0.25 (rejected): odds 1 and 1/3, log odds ratio ln 3,
    log sigma(ln 3) = ln 0.75; lambda 0.1 -> odds-ratio term -0.1 ln 0.75 = 0.0287682, plus the NLL
    (Eq. 6; here -mean logp = ln 2); rewards 0.1 * mean logp."""
    chosen = torch.tensor([2 * math.log(0.5)])  # two tokens
    rejected = torch.tensor([math.log(0.25)])  # one token
    nll = torch.tensor([math.log(2.0)])
    out = orpo_loss(chosen, rejected, torch.tensor([2]), torch.tensor([1]), nll, lambda_=0.1)
    assert_close(out.metrics["log_odds_chosen"], torch.tensor(math.log(3.0)))
    assert_close(out.metrics["log_odds_ratio"], torch.tensor(math.log(0.75)))
    assert_close(out.losses, torch.tensor([math.log(2.0) - 0.1 * math.log(0.75)]))
    assert_close(out.chosen_rewards, torch.tensor([0.1 * math.log(0.5)]))
    assert_close(out.rejected_rewards, torch.tensor([0.1 * math.log(0.25)]))


def test_orpo_gradient_is_finite_when_probabilities_approach_one() -> None:
    chosen = torch.tensor([-1e-9, -30.0], requires_grad=True)
    out = orpo_loss(
        chosen, torch.tensor([-5.0, -1e-9]), torch.tensor([1, 3]), torch.tensor([1, 1]), torch.zeros(2)
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


def test_kto_kl_estimate_is_detached_and_clamped_after_the_mean() -> None:
    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    assert_close(kto_kl_estimate(policy, torch.tensor([-2.0, -2.0])), torch.tensor(0.5))
    # Unclamped until `clamp_kl`, so ranks can average first: means 0.5 and -1.5 give z0 = max(0, -0.5) = 0,
    # where clamping each rank first would give 0.25.
    assert_close(kto_kl_estimate(policy, torch.tensor([0.0, 0.0])), torch.tensor(-1.5))
    assert clamp_kl(torch.stack([torch.tensor(0.5), torch.tensor(-1.5)]).mean()) == 0
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
    """Each loss declares its constraints; they are checked once, when an objective is configured."""
    with pytest.raises(ConfigError, match="algo.loss_type='robust'"):
        check_hyperparameters(cpo_loss, {"loss_type": "robust"})
    with pytest.raises(ConfigError, match="algo.beta"):
        check_hyperparameters(simpo_loss, {"beta": -1.0})
    with pytest.raises(ConfigError, match="algo.lambda"):
        check_hyperparameters(orpo_loss, {"lambda_": -0.1})
    with pytest.raises(ConfigError, match="algo.desirable_weight"):
        check_hyperparameters(kto_loss, {"desirable_weight": -1.0})
    with pytest.raises(ConfigError, match="algo.center_rewards_coefficient"):
        check_hyperparameters(bradley_terry_loss, {"center_rewards_coefficient": -1.0})
    with pytest.raises(ConfigError, match="algo.cpo_alpha.*must be a number"):
        check_hyperparameters(cpo_loss, {"cpo_alpha": "a lot"})
    check_hyperparameters(simpo_loss, {"beta": 2.5, "gamma": -0.3, "label_smoothing": 0.1})
