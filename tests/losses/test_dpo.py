"""DPO loss variants against hand-worked numbers.

The worked example used throughout: beta = 0.5, policy log-probs (chosen, rejected) = (-1, -3),
reference log-probs = (-2, -2). Then the log-ratios are +1 (chosen) and -1 (rejected), h = 2, beta*h = 1:

    sigmoid  -log sigma(1)             = log(1 + e^-1)                     = 0.3132617
    cDPO     0.9 log(1+e^-1) + 0.1 log(1+e^1)                              = 0.4132617   (eps = 0.1)
    robust   (0.9 log(1+e^-1) - 0.1 log(1+e^1)) / 0.8                      = 0.1882617   (eps = 0.1)
    hinge    max(0, 1 - 1)                                                  = 0
    rewards  chosen 0.5 * 1 = 0.5, rejected 0.5 * -1 = -0.5
With completion lengths 2 (chosen) and 4 (rejected), IPO's h_bar = 1/2 - (-1/4) = 0.75 and
    ipo      (0.75 - 1/(2*0.5))^2 = 0.0625
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.losses import check_hyperparameters, dpo_loss

POLICY_C, POLICY_R = torch.tensor([-1.0]), torch.tensor([-3.0])
REF_C, REF_R = torch.tensor([-2.0]), torch.tensor([-2.0])
LEN_C, LEN_R = torch.tensor([2]), torch.tensor([4])


def loss_of(loss_type: str, **kwargs) -> torch.Tensor:
    return dpo_loss(
        POLICY_C,
        POLICY_R,
        REF_C,
        REF_R,
        beta=0.5,
        loss_type=loss_type,
        chosen_lengths=LEN_C,
        rejected_lengths=LEN_R,
        **kwargs,
    ).losses


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing", "expected"),
    [
        ("sigmoid", 0.0, math.log1p(math.exp(-1))),
        ("sigmoid", 0.1, 0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1))),
        ("robust", 0.1, (0.9 * math.log1p(math.exp(-1)) - 0.1 * math.log1p(math.exp(1))) / 0.8),
        ("hinge", 0.0, 0.0),
        ("ipo", 0.0, 0.0625),
    ],
)
def test_hand_worked_values(loss_type: str, label_smoothing: float, expected: float) -> None:
    assert_close(loss_of(loss_type, label_smoothing=label_smoothing), torch.tensor([expected]))


def test_rewards_are_beta_times_log_ratios_and_detached() -> None:
    c = POLICY_C.clone().requires_grad_()
    out = dpo_loss(c, POLICY_R, REF_C, REF_R, beta=0.5)
    assert_close(out.chosen_rewards, torch.tensor([0.5]))
    assert_close(out.rejected_rewards, torch.tensor([-0.5]))
    assert not out.chosen_rewards.requires_grad and out.losses.requires_grad


def test_loss_is_ln2_when_policy_equals_reference() -> None:
    logps = torch.tensor([-3.7, -12.0, -0.4])
    out = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    assert_close(out.losses, torch.full((3,), math.log(2.0)))
    assert_close(out.chosen_rewards, torch.zeros(3))


def test_robust_with_zero_smoothing_equals_sigmoid() -> None:
    assert_close(loss_of("robust", label_smoothing=0.0), loss_of("sigmoid"))


def test_batch_is_per_example() -> None:
    policy_c = torch.tensor([-1.0, -2.0])
    policy_r = torch.tensor([-3.0, -2.0])
    ref = torch.tensor([-2.0, -2.0])
    out = dpo_loss(policy_c, policy_r, ref, ref, beta=0.5)
    assert_close(out.losses, torch.tensor([math.log1p(math.exp(-1)), math.log(2.0)]))


def test_gradient_pushes_chosen_up_and_rejected_down() -> None:
    c = torch.tensor([-2.0], requires_grad=True)
    r = torch.tensor([-2.0], requires_grad=True)
    dpo_loss(c, r, REF_C, REF_R, beta=0.5).losses.sum().backward()
    # d/dc -log sigma(beta (c - r)) at h = 0 = -beta * sigma(0) = -0.25
    assert_close(c.grad, torch.tensor([-0.25]))
    assert_close(r.grad, torch.tensor([0.25]))


def test_ipo_rewards_are_length_normalised_like_its_loss() -> None:
    """IPO compares per-token mean log-ratios, and so do its rewards: 0.5 * 1/2 and 0.5 * -1/4."""
    out = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, LEN_C, LEN_R, beta=0.5, loss_type="ipo")
    assert_close(out.chosen_rewards, torch.tensor([0.25]))
    assert_close(out.rejected_rewards, torch.tensor([-0.125]))


def test_combined_loss_types_are_weighted_and_reported() -> None:
    """[sigmoid, hinge] with weights [1, 0.5]: 0.3132617 + 0.5 * 0; the rewards are sigmoid's."""
    out = dpo_loss(
        POLICY_C, POLICY_R, REF_C, REF_R, beta=0.5, loss_type=["sigmoid", "hinge"], loss_weights=[1.0, 0.5]
    )
    assert_close(out.losses, torch.tensor([math.log1p(math.exp(-1))]))
    assert set(out.metrics) == {"loss/sigmoid", "loss/hinge"}
    assert_close(out.chosen_rewards, torch.tensor([0.5]))


def test_sft_beta_adds_the_chosen_nll() -> None:
    out = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, chosen_nll=torch.tensor([2.0]), beta=0.5, sft_beta=0.25)
    assert_close(out.losses, torch.tensor([math.log1p(math.exp(-1)) + 0.5]))


def test_invalid_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"algo.loss_type='nope'.*sigmoid"):
        check_hyperparameters(dpo_loss, {"loss_type": "nope"})
    with pytest.raises(ConfigError, match=r"algo.loss_type='nope'"):
        check_hyperparameters(dpo_loss, {"loss_type": ["sigmoid", "nope"]})
    with pytest.raises(ConfigError, match="algo.loss_type is empty"):
        check_hyperparameters(dpo_loss, {"loss_type": []})
    with pytest.raises(ConfigError, match="algo.beta"):
        check_hyperparameters(dpo_loss, {"beta": 0.0})
    with pytest.raises(ConfigError, match="algo.label_smoothing"):
        check_hyperparameters(dpo_loss, {"loss_type": "robust", "label_smoothing": 0.5})
    with pytest.raises(ConfigError, match=r"algo.loss_weights=\[1.0\] needs one weight per"):
        check_hyperparameters(dpo_loss, {"loss_type": ["sigmoid", "hinge"], "loss_weights": [1.0]})
