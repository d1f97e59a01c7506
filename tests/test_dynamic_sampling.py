"""DAPO's dynamic sampling (``algo.dynamic_sampling``): constant groups replaced by fresh prompts' groups, the
rollout kept full, the round cap, resumable draws, the joining of rounds, and config errors."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.data.batches import Sequences
from rlhf_lab.errors import ConfigError
from rlhf_lab.rl.dynamic import (
    CONSTANT,
    DROPPED,
    USABLE,
    cat_rollouts,
    fill_rollout,
    group_quality,
    select_groups,
)
from rlhf_lab.rl.rollout import Rollout
from rlhf_lab.train import build, run
from tests import custom_rewards
from tests.conftest import compose_config
from tests.test_online import SMALL

DYNAMIC = (*SMALL, "algo=grpo", "algo.dynamic_sampling=true")


def _objective(*overrides: str):
    objective, datamodule, _ = build(compose_config([*DYNAMIC, *overrides]))
    objective.configure_model()
    return objective, next(iter(datamodule.train_dataloader()))


@pytest.fixture(autouse=True)
def _no_script():
    custom_rewards.SCRIPT.clear()
    yield
    custom_rewards.SCRIPT.clear()


# ------------------------------------------------------------------------------------------ rounds
def test_constant_groups_are_replaced_by_fresh_prompts_and_the_batch_stays_full() -> None:
    """4 prompts x 2: round 1 has groups 0 and 2 constant, round 2 (4 fresh prompts) group 0: the rollout is
    round 1's groups 1, 3 then round 2's groups 1, 2; 3 constant groups filtered over 2 rounds."""
    objective, batch = _objective("algo.reward_functions=[tests.custom_rewards.scripted_groups]")
    custom_rewards.SCRIPT.extend([[True, False, True, False], [True, False, False, False]])
    rollout, metrics = objective.make_rollout(batch)
    assert rollout.size == 4 * 2
    assert metrics["num_gen_batches"] == 2
    assert metrics["num_filtered_groups"] == 3
    assert metrics["frac_reward_zero_std"] == 0.5  # the first round, before filtering
    assert not custom_rewards.SCRIPT  # exactly two scoring calls
    fresh = objective.replacement_prompts(1, 4)
    assert fresh.index.tolist() != batch.index.tolist()
    expected = [batch.prompts[1], batch.prompts[3], fresh.prompts[1], fresh.prompts[2]]
    assert rollout.texts is not None and rollout.texts.prompts[::2] == expected
    assert rollout.texts.prompts[1::2] == expected
    assert_close(rollout.rewards, torch.tensor([0.0, 1.0] * 4))  # every group differs: none is constant
    assert (rollout.rewards.view(-1, 2).std(1) > 0).all()
    assert (rollout.require("advantages").view(-1, 2).abs().sum(1) > 0).all()
    # The joined rows keep their tokens: each completion ends where its mask does, prompts end at P.
    assert rollout.sequences.input_ids.shape[1] == rollout.prompt_width + rollout.mask.shape[1]
    assert bool(rollout.sequences.attention_mask[:, rollout.prompt_width - 1].all())


def test_the_round_cap_holds_and_keeps_the_rollout_size() -> None:
    """Every group constant: exactly max_num_gen_batches=3 rounds, 4 x 3 constant groups, and the rollout is
    the first round's (the least-bad groups drawn first)."""
    objective, batch = _objective(
        "algo.reward_functions=[tests.custom_rewards.constant]", "algo.max_num_gen_batches=3"
    )
    first, _ = objective.scored_rollout(batch, 0, 0)
    rollout, metrics = objective.make_rollout(batch)
    assert rollout.size == 4 * 2
    assert metrics["num_gen_batches"] == 3
    assert metrics["num_filtered_groups"] == 12
    assert metrics["frac_reward_zero_std"] == 1.0
    assert torch.equal(rollout.sequences.input_ids, first.sequences.input_ids)
    assert_close(rollout.require("advantages"), torch.zeros(8))


def test_extra_rounds_are_the_same_for_the_same_seed_and_rollout() -> None:
    """Two objectives with the same seed and rollouts_done draw the same extra groups (a resumed run);
    another rollout number draws other prompts. Round 1 all constant, round 2 groups 2 and 3 differ, round 3
    (unscripted) all differ: the rollout is round 2's groups 2, 3 and round 3's groups 0, 1, all extra."""
    rollouts, fresh = [], []
    for done in (3, 3, 4):
        objective, batch = _objective("algo.reward_functions=[tests.custom_rewards.scripted_groups]")
        objective.rollouts_done.fill_(done)
        custom_rewards.SCRIPT[:] = [[True, True, True, True], [True, True, False, False]]
        rollout, metrics = objective.make_rollout(batch)
        assert (metrics["num_gen_batches"], metrics["num_filtered_groups"]) == (3, 6)
        rounds = objective.replacement_prompts(1, 4), objective.replacement_prompts(2, 4)
        assert rollout.texts is not None
        assert rollout.texts.prompts[::2] == [*rounds[0].prompts[2:], *rounds[1].prompts[:2]]
        rollouts.append(rollout)
        fresh.append([index for prompts in rounds for index in prompts.index.tolist()])
    same, resumed, _ = rollouts
    assert torch.equal(same.sequences.input_ids, resumed.sequences.input_ids)
    assert fresh[0] == fresh[1] != fresh[2]


def test_a_process_already_full_still_samples_when_another_is_short() -> None:
    """fill_rollout runs the rounds every process agrees on; a full process keeps its own groups."""
    first = _rollout([0.0, 1.0, 2.0, 3.0], prompt_width=2, length=3)
    drawn: list[int] = []

    def draw(index: int) -> Rollout:
        drawn.append(index)
        return _rollout([5.0, 5.0, 6.0, 7.0], prompt_width=2, length=3)

    for others_short, rounds in ((False, 1), (True, 3)):
        drawn.clear()
        kept, count, filtered = fill_rollout(
            first,
            draw,
            num_generations=2,
            max_rounds=3,
            anyone_short=lambda short, others=others_short: short or others,
            pad_token_id=0,
        )
        # Each drawn round: one constant group (5, 5), one that differs (6, 7), surplus to a full process.
        assert (count, filtered, drawn) == (rounds, rounds - 1, list(range(1, rounds)))
        assert kept is first


# ------------------------------------------------------------------------------------- the pieces
def test_group_quality_and_selection_by_hand() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 0.5, 0.5])
    kept = torch.tensor([True, True, True, True, True, True, False, False])
    assert group_quality(rewards, kept, 2).tolist() == [CONSTANT, USABLE, CONSTANT, DROPPED]
    assert group_quality(rewards, None, 2).tolist() == [CONSTANT, USABLE, CONSTANT, CONSTANT]
    rounds = [torch.tensor([CONSTANT, USABLE, DROPPED]), torch.tensor([USABLE, CONSTANT, CONSTANT])]
    assert select_groups(rounds, 3) == [(0, 1), (1, 0), (0, 0)]
    assert select_groups(rounds, 5) == [(0, 1), (1, 0), (0, 0), (1, 1), (1, 2)]


def _rollout(rewards: list[float], prompt_width: int, length: int, first_id: int = 1) -> Rollout:
    rows = len(rewards)
    ids = torch.arange(first_id, first_id + rows * (prompt_width + length)).view(rows, -1)
    ones = torch.ones_like(ids)
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, prompt_width:] = True
    return Rollout(
        Sequences(ids, ones, completion),
        prompt_width,
        torch.ones(rows, length, dtype=torch.bool),
        rewards=torch.tensor(rewards),
        sampler_logps=-torch.ones(rows, length),
    )


def test_rounds_of_different_widths_join_with_padding_by_hand() -> None:
    """Prompt width 1 + 2 completion tokens joined with width 2 + 1: prompts left-padded, completions
    right-padded to P=2, L=2, padding out of every mask."""
    short_prompt = _rollout([0.0], prompt_width=1, length=2, first_id=10)  # ids 10 | 11 12
    long_prompt = _rollout([1.0], prompt_width=2, length=1, first_id=20)  # ids 20 21 | 22
    joined = cat_rollouts([short_prompt, long_prompt], pad_token_id=0)
    assert joined.prompt_width == 2
    assert joined.sequences.input_ids.tolist() == [[0, 10, 11, 12], [20, 21, 22, 0]]
    assert joined.sequences.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 0]]
    assert joined.sequences.completion_mask.tolist() == [
        [False, False, True, True],
        [False, False, True, False],
    ]
    assert joined.mask.tolist() == [[True, True], [True, False]]
    assert joined.require("sampler_logps").tolist() == [[-1.0, -1.0], [-1.0, 0.0]]
    assert joined.require("rewards").tolist() == [0.0, 1.0]


# ----------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("algo.num_generations=1",),
            r"algo.dynamic_sampling=true .* algo.num_generations=1 must be at least 2",
        ),
        (
            ("algo=ppo", "algo.dynamic_sampling=true"),
            r"algo.dynamic_sampling=true .* algo.advantage_estimator=gae",
        ),
        (
            ("algo=remax", "algo.dynamic_sampling=true"),
            r"algo.dynamic_sampling=true .* algo.advantage_estimator=remax",
        ),
        (("algo.max_num_gen_batches=0",), r"algo.max_num_gen_batches=0 is out of range"),
    ],
)
def test_bad_dynamic_sampling_config_names_the_key(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(compose_config([*DYNAMIC, *overrides]))


def test_metric_names_list_the_filtering_metrics_only_when_on() -> None:
    on, _, _ = build(compose_config(list(DYNAMIC)))
    off, _, _ = build(compose_config([*SMALL, "algo=grpo"]))
    assert {"num_gen_batches", "num_filtered_groups", "frac_reward_zero_std"} <= on.metric_names("train")
    assert not {"num_gen_batches", "num_filtered_groups"} & off.metric_names("train")


def test_training_logs_the_filtering_metrics(tmp_path) -> None:
    """Two optimiser steps from the entry point: the metrics are logged (and in the registry's names)."""
    result = run(compose_config([*DYNAMIC, "trainer.max_steps=2"], run_dir=tmp_path / "run"))
    assert result.trainer.global_step == 2
    assert 1 <= result.summary["train/num_gen_batches"] <= 4
    assert result.summary["train/num_filtered_groups"] >= 0
