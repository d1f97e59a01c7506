"""The registered online-RL parts: estimators by hand, registry names and aliases, the aggregations and
policy losses against the functions they wrap."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.losses.advantages import (
    ADVANTAGE_ESTIMATORS,
    gae_estimator,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_estimator,
)
from rlhf_lab.losses.policy_gradient import (
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    StepTotals,
    clipped_surrogate,
    reduce_token_losses,
)
from rlhf_lab.losses.registry import declared_metrics

TOKEN_REWARDS = torch.tensor([[0.1, -0.2, 1.0], [0.0, 0.5, 9.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])


def _whitened(values: list[float]) -> list[float]:
    """Zero mean, unit (unbiased) variance: by hand."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) + 1e-8)
    return [(v - mean) / std for v in values]


def test_reinforce_pp_returns_to_go_whitened_over_the_rollout() -> None:
    # gamma = 1: returns-to-go row 0: 0.1 - 0.2 + 1.0 = 0.9, -0.2 + 1.0 = 0.8, 1.0; row 1: 0.5, 0.5 (the 9.0
    # sits past the mask and is ignored).
    out = reinforce_pp_advantages(TOKEN_REWARDS, MASK, gamma=1.0)
    expected = _whitened([0.9, 0.8, 1.0, 0.5, 0.5])
    assert_close(out.advantages[MASK], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert float(out.advantages[1, 2]) == 0.0 and out.returns is None
    # gamma = 0.5: row 0: 1.0, -0.2 + 0.5 * 1.0 = 0.3, 0.1 + 0.5 * 0.3 = 0.25; row 1: 0.5, 0.0 + 0.25.
    discounted = reinforce_pp_advantages(TOKEN_REWARDS, MASK, gamma=0.5)
    expected = _whitened([0.25, 0.3, 1.0, 0.25, 0.5])
    assert_close(discounted.advantages[MASK], torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_grpo_and_rloo_estimators_by_hand() -> None:
    scores = torch.tensor([1.0, 0.0, 2.0, 2.0])
    # Groups (1, 0) and (2, 2): centred +-0.5 and 0, over the group std sqrt(0.5) (+ 1e-4).
    grpo = grpo_advantages(scores, 2, scale_rewards="group").advantages
    assert_close(grpo, torch.tensor([0.5, -0.5, 0.0, 0.0]) / (math.sqrt(0.5) + 1e-4))
    assert_close(
        grpo_advantages(scores, 2, scale_rewards="none").advantages, torch.tensor([0.5, -0.5, 0.0, 0.0])
    )
    # Leave-one-out: 1 - 0, 0 - 1, 2 - 2, 2 - 2.
    assert_close(rloo_estimator(scores, 2).advantages, torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_gae_estimator_declares_and_returns_its_metric() -> None:
    values = torch.zeros(2, 3)
    out = gae_estimator(TOKEN_REWARDS, values, MASK, gamma=1.0, lam=1.0)
    # With V = 0 and lam = gamma = 1 the advantages are the returns-to-go: mean (0.9+0.8+1.0+0.5+0.5) / 5.
    assert_close(out.metrics["advantages/mean"], torch.tensor(3.7 / 5))
    assert declared_metrics(gae_estimator) == ("advantages/mean",)
    assert_close(out.returns, torch.tensor([[0.9, 0.8, 1.0], [0.5, 0.5, 0.0]]))


def test_registry_names_aliases_and_errors() -> None:
    assert ADVANTAGE_ESTIMATORS.get("reinforce_plus_plus") is reinforce_pp_advantages
    # verl's hyphenated names and TRL's loss_type names reach the same aggregations.
    assert LOSS_AGGREGATIONS.get("seq-mean-token-mean") is LOSS_AGGREGATIONS.get("grpo")
    assert LOSS_AGGREGATIONS.get("dapo") is LOSS_AGGREGATIONS.get("token_mean_global")
    with pytest.raises(ConfigError, match=r"algo.advantage_estimator='ppo' is not one of: grpo, rloo, gae"):
        ADVANTAGE_ESTIMATORS.get("ppo")
    with pytest.raises(
        ConfigError, match=r"algo.policy_loss='nope' is not one of: ppo_clip, gspo, cispo, sapo, vanilla"
    ):
        POLICY_LOSSES.get("nope")


@pytest.mark.parametrize(
    ("name", "loss_type"),
    [
        ("token_mean", "bnpo"),
        ("token_mean_global", "dapo"),
        ("seq_mean_token_mean", "grpo"),
        ("seq_mean_token_sum", "sequence"),
        ("seq_mean_token_sum_norm", "dr_grpo"),
    ],
)
def test_aggregations_equal_reduce_token_losses(name: str, loss_type: str) -> None:
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    totals = StepTotals(sequences=4.0, tokens=10.0, global_tokens=20.0, world_size=2, max_completion_length=3)
    expected = reduce_token_losses(
        losses,
        MASK,
        loss_type=loss_type,
        num_sequences=4.0,
        num_tokens=20.0 if loss_type == "dapo" else 10.0,
        max_completion_length=3,
    )
    expected = expected * 2 if loss_type == "dapo" else expected
    assert_close(LOSS_AGGREGATIONS.get(name)(losses, MASK, totals), expected)


def test_gspo_is_the_sequence_level_clipped_surrogate() -> None:
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, 0.0]])
    old = logps - torch.tensor([[0.1, -0.05, 0.2], [0.0, 0.3, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    gspo = POLICY_LOSSES.get("gspo")(logps, old, advantages, MASK)
    expected = clipped_surrogate(
        logps, old, advantages, MASK, epsilon=3e-4, epsilon_high=4e-4, importance_sampling_level="sequence"
    )
    assert_close(gspo.losses, expected.losses)
