"""Online DPO: pairs ranked by the rewards, the loss and metrics against hand computations, accumulation
equivalence, config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.logprobs import naive_completion_logps
from rlhf_lab.objectives.online_dpo import preference_pairs
from rlhf_lab.train import build
from tests.conftest import compose_config
from tests.custom_rewards import even_tokens
from tests.naive import naive_logps
from tests.test_online import SMALL, trained, weights

DPO = ("algo=online_dpo", *SMALL)


# ------------------------------------------------------------------------------------------ pairs
def test_pairs_are_best_against_worst_and_ties_leave_the_loss() -> None:
    chosen, rejected, trains = preference_pairs(torch.tensor([0.2, 0.7, 1.0, 1.0, 0.0, -1.0]), 2)
    assert chosen.tolist() == [1, 2, 4] and rejected.tolist() == [0, 2, 5]
    assert trains.tolist() == [True, False, True]  # the second prompt's completions tie
    # A reward failed on the third prompt (reward_errors=skip): its pair leaves the loss too.
    kept = torch.tensor([True, True, True, True, False, False])
    assert preference_pairs(torch.tensor([0.2, 0.7, 1.0, 1.0, 0.0, 0.0]), 2, kept)[2].tolist() == [
        True,
        False,
        False,
    ]
    # Three completions per prompt: the best and the worst (the first of equals).
    chosen, rejected, trains = preference_pairs(torch.tensor([0.5, 0.9, 0.1, 0.3, 0.3, 0.3]), 3)
    assert chosen.tolist() == [1, 3] and rejected.tolist() == [2, 3] and trains.tolist() == [True, False]


def _sampled_pairs(*overrides: str):
    """A built objective (its policy moved off the reference), one rollout of the first training batch and
    its pairs."""
    objective, datamodule, _ = build(compose_config([*DPO, *overrides]))
    objective.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in objective.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    batch = next(iter(datamodule.train_dataloader()))
    scored = objective.scored_samples(batch, objective.sampling, objective.num_generations, (0, 0), "train")
    rollout = objective.pair_rollout(scored)
    ranking = objective.ranking_rewards(rollout)
    chosen, rejected, trains = preference_pairs(ranking, objective.num_generations, scored.kept)
    return objective, scored, rollout, (chosen, rejected, trains)


def _completion_ids(scored, row: int) -> list[int]:
    generation = scored.generation
    ids = generation.completion_ids[row][generation.completion_mask[row]].tolist()
    return ids[:-1] if not bool(generation.truncated[row]) else ids  # without EOS, as the rewards see them


def test_the_chosen_completion_is_the_one_the_reward_prefers() -> None:
    """even_tokens (the share of even token ids) recomputed from the sampled ids: the chosen completion has
    the higher share; a tied prompt trains no pair."""
    _, scored, _, (chosen, rejected, trains) = _sampled_pairs("data.batch_size=8")
    share = [even_tokens([], [], [_completion_ids(scored, row)])[0] for row in range(len(chosen) * 2)]
    assert bool(trains.any())
    for c, r, t in zip(chosen.tolist(), rejected.tolist(), trains.tolist(), strict=True):
        assert {c, r} <= {c - c % 2, c - c % 2 + 1}  # both completions of the same prompt
        if t:
            assert share[c] > share[r]
        else:
            assert share[c] == share[r]


def test_missing_eos_penalty_ranks_a_truncated_completion_below() -> None:
    """With max_new_tokens=2 nothing ends: each completion loses the penalty (TRL's) before ranking."""
    objective, _, rollout, _ = _sampled_pairs("algo.max_new_tokens=2", "algo.missing_eos_penalty=1.5")
    assert bool(rollout.require("truncated").all())
    assert_close(objective.ranking_rewards(rollout), rollout.require("rewards") - 1.5)


# ------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_loss_gradient_and_metrics_equal_the_registered_loss_by_hand(loss: str) -> None:
    """One micro-batch of every untied pair: the loss (and its gradient) is dpo_loss on log-probs computed
    here from the full logits of the policy and of the reference, and the DPO metrics are those pairs'."""
    objective, _, rollout, (chosen, rejected, trains) = _sampled_pairs(
        "data.batch_size=8", "algo.beta=0.5", f"algo.loss_type={loss}", "algo.missing_eos_penalty=0.1"
    )
    chosen, rejected = chosen[trains], rejected[trains]
    pairs = len(chosen)
    assert pairs >= 2
    loss_value, metrics = objective.micro_loss(rollout, chosen, rejected, pairs)
    objective.zero_grad()
    loss_value.backward()
    grads = {name: p.grad.clone() for name, p in objective.policy.named_parameters() if p.grad is not None}
    objective.zero_grad()

    sequences = rollout.sequences.rows(torch.cat([chosen, rejected]))
    # The policy's full logits with their gradient (tests.naive's are without).
    logits = objective.policy.model(
        input_ids=sequences.input_ids, attention_mask=sequences.attention_mask
    ).logits
    policy = naive_completion_logps(logits, sequences.input_ids, sequences.completion_mask)
    with torch.no_grad():
        reference = naive_logps(objective.reference.model.model, sequences)
    ratio = policy - reference
    if loss == "ipo":
        ratio = ratio / sequences.completion_mask[:, 1:].sum(1)
    h = ratio[:pairs] - ratio[pairs:]
    expected = (-F.logsigmoid(0.5 * h) if loss == "sigmoid" else (h - 1 / (2 * 0.5)) ** 2).mean()
    assert_close(loss_value, expected, rtol=1e-4, atol=1e-5)
    expected.backward()
    for name, p in objective.policy.named_parameters():
        if name in grads:
            assert_close(grads[name], p.grad, rtol=1e-3, atol=1e-6, msg=name)
    rewards = (0.5 * ratio).detach()
    hand = {
        "rewards/chosen": rewards[:pairs].mean(),
        "rewards/rejected": rewards[pairs:].mean(),
        "rewards/margins": (rewards[:pairs] - rewards[pairs:]).mean(),
        "rewards/accuracies": (rewards[:pairs] > rewards[pairs:]).float().mean(),
        "logps/chosen": policy[:pairs].detach().mean(),
        "logps/rejected": policy[pairs:].detach().mean(),
    }
    for name, value in hand.items():
        assert_close(metrics[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_uneven_micro_batches_add_up_to_the_step_mean() -> None:
    """Pairs split 3 + 1: the micro-batches' losses and metrics add up to the one micro-batch's (the mean
    over the step's pairs, not a mean of the micro-batches' means)."""
    objective, _, rollout, (chosen, rejected, trains) = _sampled_pairs("data.batch_size=8", "algo.beta=0.5")
    chosen, rejected = chosen[trains][:4], rejected[trains][:4]
    assert len(chosen) == 4
    whole, whole_metrics = objective.micro_loss(rollout, chosen, rejected, 4)
    parts = [
        objective.micro_loss(rollout, chosen[rows], rejected[rows], 4) for rows in (slice(0, 3), slice(3, 4))
    ]
    assert_close(parts[0][0] + parts[1][0], whole, rtol=1e-5, atol=1e-6)
    for name, value in whole_metrics.items():
        assert_close(parts[0][1][name] + parts[1][1][name], value, rtol=1e-5, atol=1e-6, msg=name)
    stand_in, metrics = objective.micro_loss(rollout, chosen[:1], rejected[:1], 0)
    assert float(stand_in) == 0.0 and stand_in.requires_grad and metrics == {}


def test_pair_metrics_by_hand() -> None:
    """frac_tied_pairs over the prompts, reward_margin over the trained pairs (after the EOS penalty), and
    the sample table's +1 / -1 marks."""
    objective, _, rollout, _ = _sampled_pairs("data.batch_size=8")
    rollout.rewards = torch.tensor([0.5, 0.2, 1.0, 1.0, 0.0, 0.75, 0.3, 0.3] * 2)
    rollout.truncated = torch.zeros(16, dtype=torch.bool)
    chosen, rejected, trains = preference_pairs(rollout.rewards, 2)
    metrics = objective.pair_metrics(rollout, chosen, rejected, trains)
    assert_close(metrics["frac_tied_pairs"], torch.tensor(4 / 8))
    assert_close(metrics["reward_margin"], torch.tensor((0.3 + 0.75) / 2))
    assert rollout.require("advantages")[:8].tolist() == [1, -1, 0, 0, -1, 1, 0, 0]


# --------------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize(
    "overrides",
    [("algo.beta=0.3",), ("algo.num_generations=3", "algo.loss_type=ipo", "algo.missing_eos_penalty=0.2")],
    ids=["dpo", "best_of_3-ipo"],
)
def test_batch_4_accumulation_1_equals_2_x_2(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    """Two rollouts of 4 prompts: each optimiser step's pairs in one micro-batch or two gives the same
    weights (the loss is the mean over the step's untied pairs either way)."""
    common = ["algo=online_dpo", *overrides, "trainer.max_steps=2", "optim.eps=1e-5"]
    whole = trained(tmp_path, "whole", *common, "trainer.accumulate_grad_batches=1")
    split = trained(tmp_path, "split", *common, "trainer.accumulate_grad_batches=2")
    assert whole.trainer.global_step == split.trainer.global_step == 2
    initial = build(compose_config([*SMALL, *common]))[0]
    initial.configure_model()
    before = dict(initial.named_parameters())
    moved = 0
    for name, value in weights(whole).items():
        # Adam (lr 1e-2) turns the rounding of a 2-part gradient sum into ~2e-6 on rarely seen embeddings.
        assert_close(weights(split)[name], value, rtol=1e-5, atol=1e-5, msg=name)
        moved += not torch.equal(before[name], value)
    assert moved, "no weight moved: the equivalence would be vacuous"
    assert whole.summary["train/loss"] == pytest.approx(split.summary["train/loss"], rel=1e-4, abs=1e-6)
    margins = split.summary["train/rewards/margins"]
    assert whole.summary["train/rewards/margins"] == pytest.approx(margins, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("algo.num_generations=1",), r"algo.num_generations=1: online DPO pairs .* at least 2"),
        (("algo.gamma=0.5",), r"algo.gamma=0.5: algo.loss=dpo_loss takes no gamma"),
        (("algo.loss_type=nope",), r"algo.loss_type='nope' is not supported"),
        (("algo.reference=precomputed",), r"algo.reference=precomputed"),
        (("algo.reward_functions=[]",), r"online RL needs a reward"),
        (("trainer.accumulate_grad_batches=3",), r"data.batch_size=4 .* equal micro-batches"),
    ],
)
def test_bad_online_dpo_config_fails_before_training(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(compose_config([*DPO, *overrides]))


def test_any_pairwise_loss_by_import_path() -> None:
    """simpo_loss is reference-free: no reference model; its hyperparameters are the online keys too."""
    objective, _, _ = build(
        compose_config([*DPO, "algo.loss=rlhf_lab.losses.simpo_loss", "algo.beta=2.0", "algo.gamma=0.5"])
    )
    assert objective.reference_mode == "none"
    assert objective.pair_loss.kwargs == {"beta": 2.0, "gamma": 0.5, "cpo_alpha": 0.0, "label_smoothing": 0.0}


# --------------------------------------------------------------------------------- failing rewards
def test_a_prompt_a_reward_failed_on_trains_no_pair() -> None:
    """reward_errors=skip, the first prompt's rewards NaN: its pair leaves the loss, the others may train."""
    _, scored, rollout, (_, _, trains) = _sampled_pairs(
        "algo.reward_errors=skip", "algo.reward_functions=[tests.custom_rewards.nan_on_first_prompt]"
    )
    assert rollout.require("kept").tolist() == [False, False] + [True] * 6
    assert not bool(trains[0])
    assert float(scored.metrics["reward"]) == pytest.approx(float(rollout.require("rewards")[2:].mean()))


def test_a_step_with_no_pair_to_train_changes_nothing(tmp_path: Path) -> None:
    """Every reward fails (reward_errors=skip): both steps are taken without gradients, the weights stay."""
    result = trained(
        tmp_path,
        "run",
        "algo=online_dpo",
        "algo.reward_errors=skip",
        "algo.reward_functions=[tests.custom_rewards.nan_rewards]",
        "trainer.max_steps=2",
    )
    assert result.trainer.global_step == 2 and result.summary["train/reward_errors"] == 8.0
    assert result.summary["train/loss"] == 0.0 and "train/rewards/margins" not in result.summary
    initial = build(compose_config([*DPO, "algo.reward_functions=[tests.custom_rewards.nan_rewards]"]))[0]
    initial.configure_model()
    before = dict(initial.policy.named_parameters())
    for name, parameter in result.objective.policy.named_parameters():
        assert torch.equal(parameter.detach(), before[name].detach()), name
