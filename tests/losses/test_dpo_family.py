"""The DPO loss family against TRL 1.16's own ``DPOTrainer._compute_loss`` (tests/trl_dpo.py), values and
gradients, on random per-token log-probs of pairs of different lengths; plus hand-worked values for the
types whose formula is short enough to work by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.losses import check_hyperparameters, dpo_loss, ld_logps
from rlhf_lab.losses.dpo import F_DIVERGENCE_TYPES, LOSS_TYPES
from tests.trl_dpo import trl_dpo_loss

PAIRS, WIDTH = 6, 9


def batch(seed: int = 0):
    """Per-token log-probs of ``PAIRS`` pairs (chosen rows first) with completions of 1..8 tokens."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, WIDTH, (2 * PAIRS,), generator=generator)
    positions = torch.arange(WIDTH)
    mask = (positions >= WIDTH - lengths[:, None]) & (positions > 0)
    policy = (-torch.rand(2 * PAIRS, WIDTH, generator=generator) * 3).masked_fill(~mask, 0.0)
    reference = (policy.detach() + torch.randn(2 * PAIRS, WIDTH, generator=generator) * 0.7).masked_fill(
        ~mask, 0.0
    )
    sum_sq = (-torch.rand(2 * PAIRS, WIDTH, generator=generator) * 2 - 0.1).masked_fill(~mask, 0.0)
    return policy.requires_grad_(True), reference, mask, sum_sq


def tails(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's completion log-probs past its pair's shared length ``min(|y_c|, |y_r|)`` (a loop: the oracle)."""
    lengths = mask.sum(1)
    out = []
    for row in range(mask.shape[0]):
        shared = min(lengths[row % PAIRS], lengths[row % PAIRS + PAIRS]).item()
        values = token_logps[row][mask[row]]
        out.append(values[int(shared) :].sum())
    return torch.stack(out)


def ours(policy, reference, mask, sum_sq, ld_alpha=None, sft_weight=0.0, **settings) -> torch.Tensor:
    lengths = mask.sum(1)
    logps, reference_logps = (policy * mask).sum(1), (reference * mask).sum(1)
    if ld_alpha is not None:
        logps = ld_logps(logps, tails(policy, mask), ld_alpha)
        reference_logps = ld_logps(reference_logps, tails(reference, mask), ld_alpha)
    wpo = ((policy.detach() - sum_sq) * mask).sum(1) / lengths
    nll = -(policy * mask).sum(1) / lengths
    out = dpo_loss(
        logps[:PAIRS], logps[PAIRS:], reference_logps[:PAIRS], reference_logps[PAIRS:],
        chosen_lengths=lengths[:PAIRS], rejected_lengths=lengths[PAIRS:], chosen_nll=nll[:PAIRS],
        chosen_wpo_logps=wpo[:PAIRS], rejected_wpo_logps=wpo[PAIRS:], **settings,
    )  # fmt: skip
    return out.losses.mean()


def settings_for(loss_type: str) -> dict:
    return {"beta": 0.3, "loss_type": [loss_type], "label_smoothing": 0.1 if loss_type == "exo_pair" else 0.0}


def equal_to_trl(ld_alpha=None, **settings) -> None:
    policy, reference, mask, sum_sq = batch()
    mine = ours(policy, reference, mask, sum_sq, ld_alpha=ld_alpha, **settings)
    (my_grad,) = torch.autograd.grad(mine, policy)
    theirs = trl_dpo_loss(policy, reference, mask, sum_sq, ld_alpha=ld_alpha, **settings)
    (their_grad,) = torch.autograd.grad(theirs, policy)
    assert_close(mine, theirs, atol=1e-6, rtol=1e-6)
    assert_close(my_grad, their_grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("loss_type", LOSS_TYPES.names())
def test_every_loss_type_equals_trl(loss_type: str) -> None:
    equal_to_trl(**settings_for(loss_type))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("loss_type", ["robust", "aot", "aot_unpaired"])
def test_label_smoothing_equals_trl(loss_type: str, label_smoothing: float) -> None:
    equal_to_trl(beta=0.5, loss_type=[loss_type], label_smoothing=label_smoothing)


def test_sigmoid_keeps_cdpo_label_smoothing_which_trl_1_16_dropped() -> None:
    """TRL 1.16's ``sigmoid`` ignores ``label_smoothing`` (cDPO lives on in ``robust``'s sibling formula only);
    here ``sigmoid`` with ``eps > 0`` is still cDPO (Mitchell, 2023), and with ``eps = 0`` equals TRL."""
    policy, reference, mask, sum_sq = batch()
    smoothed = ours(policy, reference, mask, sum_sq, beta=0.5, loss_type="sigmoid", label_smoothing=0.2)
    plain = ours(policy, reference, mask, sum_sq, beta=0.5, loss_type="sigmoid")
    trl = trl_dpo_loss(policy, reference, mask, sum_sq, beta=0.5, loss_type=["sigmoid"], label_smoothing=0.2)
    assert_close(plain, trl)
    # -(1-eps) log s(z) - eps log s(-z) = -log s(z) + eps z, since log s(z) - log s(-z) = z.
    logratios = ((policy - reference) * mask).sum(1).detach()
    z = 0.5 * (logratios[:PAIRS] - logratios[PAIRS:])
    assert_close(smoothed, plain + 0.2 * z.mean())


@pytest.mark.parametrize(
    ("divergence", "coef"),
    [("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.3), ("alpha_divergence", 1.0),
     ("alpha_divergence", 1.7)],
)  # fmt: skip
@pytest.mark.parametrize("loss_type", sorted(F_DIVERGENCE_TYPES))
def test_f_divergences_equal_trl(loss_type: str, divergence: str, coef: float) -> None:
    equal_to_trl(**settings_for(loss_type), f_divergence_type=divergence, f_alpha_divergence_coef=coef)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero", "sppo_hard"])
def test_wpo_weighting_equals_trl(loss_type: str) -> None:
    equal_to_trl(**settings_for(loss_type), use_weighting=True)


@pytest.mark.parametrize("ld_alpha", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "bco_pair"])
def test_ld_dpo_equals_trl(loss_type: str, ld_alpha: float) -> None:
    equal_to_trl(ld_alpha=ld_alpha, **settings_for(loss_type))


def test_combined_types_with_weights_equal_trl() -> None:
    equal_to_trl(beta=0.2, loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[1.0, 0.5, 0.3])


def test_sft_beta_is_the_per_pair_mean_and_sft_type_the_token_mean() -> None:
    """``sft_beta`` (RPO's alpha) adds each pair's per-token NLL; TRL's ``sft`` type is the batch's token mean.

    Chosen NLLs per token 1 and 3: with lengths (1, 3) the per-pair mean is 2 and the token mean (1 + 9) / 4
    = 2.5; with lengths (2, 2) both are 2.
    """
    zero = torch.zeros(2)
    for lengths, rpo_expected, sft_expected in (([1, 3], 2.0, 2.5), ([2, 2], 2.0, 2.0)):
        common = {"chosen_lengths": torch.tensor(lengths), "chosen_nll": torch.tensor([1.0, 3.0])}
        rpo = dpo_loss(zero, zero, zero, zero, **common, sft_beta=1.0).losses - math.log(2)
        sft = dpo_loss(zero, zero, zero, zero, **common, loss_type="sft").losses
        assert_close(rpo.mean(), torch.tensor(rpo_expected))
        assert_close(sft.mean(), torch.tensor(sft_expected))


# Hand-worked values (the worked example of tests/losses/test_dpo.py): beta = 0.5, log-ratios c = +1, r = -1.
WORKED = {"policy_chosen_logps": torch.tensor([-1.0]), "policy_rejected_logps": torch.tensor([-3.0]),
          "reference_chosen_logps": torch.tensor([-2.0]), "reference_rejected_logps": torch.tensor([-2.0]),
          "chosen_lengths": torch.tensor([2]), "rejected_lengths": torch.tensor([4]), "beta": 0.5}  # fmt: skip
S = 1 / (1 + math.exp(-0.5))  # sigma(beta c) = sigma(0.5)


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        # -log s(.5) - log s(.5): both terms log(1 + e^-0.5)
        ("bco_pair", 2 * math.log1p(math.exp(-0.5))),
        # -log s(.5) - .5 log s(-.5) - .5 log s(.5) = 1.5 log(1+e^-.5) + .5 log(1+e^.5)
        ("nca_pair", 1.5 * math.log1p(math.exp(-0.5)) + 0.5 * math.log1p(math.exp(0.5))),
        # (1 - 1)^2 + (-1 + 1)^2 with 1/(2 beta) = 1
        ("sppo_hard", 0.0),
        # (1 - s(.5)) + s(-.5) = 2 (1 - S)
        ("apo_zero", 2 * (1 - S)),
        # s(.5) + 1 - s(1)
        ("apo_down", S + 1 - 1 / (1 + math.exp(-1))),
        # h_bar = 1/2 + 1/4 = .75: -log s(.375)
        ("sigmoid_norm", math.log1p(math.exp(-0.375))),
        # one pair: aot compares the pair with its reference: h = (-1 + 3) - 0 = 2 -> -log s(1)
        ("aot", math.log1p(math.exp(-1))),
        # m = s(1 / .05) ~ 1: ~ e^-1
        (
            "discopop",
            (1 - 1 / (1 + math.exp(-20))) * math.log1p(math.exp(-1)) + math.exp(-1) / (1 + math.exp(-20)),
        ),
    ],
)
def test_hand_worked_values(loss_type: str, expected: float) -> None:
    assert_close(dpo_loss(**WORKED, loss_type=loss_type).losses, torch.tensor([expected]))


def test_exo_pair_hand_worked() -> None:
    # z = 1, eps = 0.1: s(1) (log s(1) - log .9) + s(-1) (log s(-1) - log .1)
    s1 = 1 / (1 + math.exp(-1))
    expected = s1 * (math.log(s1) - math.log(0.9)) + (1 - s1) * (math.log(1 - s1) - math.log(0.1))
    assert_close(
        dpo_loss(**WORKED, loss_type="exo_pair", label_smoothing=0.1).losses, torch.tensor([expected])
    )


def test_ld_logps_hand_worked() -> None:
    # shared + alpha * tail: -5 total with a -2 tail -> -3 + 0.25 * -2 = -3.5
    assert_close(ld_logps(torch.tensor([-5.0]), torch.tensor([-2.0]), 0.25), torch.tensor([-3.5]))


def test_wpo_weight_is_reported() -> None:
    out = dpo_loss(**WORKED, chosen_wpo_logps=torch.tensor([-0.5]), rejected_wpo_logps=torch.tensor([-1.0]),
                   use_weighting=True)  # fmt: skip
    assert_close(out.metrics["wpo_weight"], torch.tensor(math.exp(-1.5)))
    assert_close(out.losses, torch.tensor([math.log1p(math.exp(-1)) * math.exp(-1.5)]))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"loss_type": "exo_pair"}, "algo.label_smoothing > 0"),
        ({"loss_type": "bco_pair", "f_divergence_type": "forward_kl"}, "algo.f_divergence_type=forward_kl"),
        ({"loss_type": "aot", "use_weighting": True}, "algo.use_weighting=true"),
        (
            {"f_divergence_type": "kl"},
            "algo.f_divergence_type='kl' is not supported; choose one of: reverse_kl",
        ),
        ({"loss_type": "nca"}, "algo.loss_type='nca' is not supported; choose one of: sigmoid"),
        ({"discopop_tau": 0.0}, "algo.discopop_tau"),
    ],
)
def test_invalid_settings_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_hyperparameters(dpo_loss, values)
