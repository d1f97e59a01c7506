"""Online RL learns from the CLI: held-out reward of greedy completions rises from the warm start's.

The warm start is SFT on the bundled task with half the answers wrong: the policy answers in the right form
("It is an animal.") but picks the category at random, so held-out exact-match starts near 0.5 and can only
rise by reading the object in the prompt, on held-out prompts it never trained on. A reward model trained
with ``algo=reward`` on the task's preference pairs (its own tokenizer, built from other text) is the other
reward source.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.subprocesses import built_once
from tests.test_e2e import cli

WARM_START = (
    "algo=sft",
    "data=synthetic",
    "data.source.rows=sft",
    "data.source.correct_rate=0.5",
    "trainer.max_epochs=4",
    "optim.lr=1e-3",
    "checkpoint.save_top_k=0",
)
RL = ("data=synthetic_rl", "model=hub", "model.dtype=float32", "trainer.enable_progress_bar=false")


@pytest.fixture(scope="session")
def warm_start() -> Path:
    return built_once("sft_half_right", *WARM_START)


@pytest.fixture(scope="session")
def reward_model() -> Path:
    # A random score head needs the higher learning rate (docs/objectives.md); held-out accuracy ~1.0. Its
    # own, smaller vocabulary: the policy's completions must be decoded and re-encoded to be scored.
    return built_once(
        "reward_model",
        "algo=reward",
        "data=synthetic",
        "model.vocab_size=400",
        "optim.lr=2e-3",
        "checkpoint.save_top_k=0",
    )


def summary(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())


def held_out(policy: Path, run_dir: Path, *overrides: str) -> dict[str, float]:
    """Held-out metrics of ``policy`` untrained (``max_steps=0``: validation only)."""
    result = cli(*RL, f"model.name_or_path={policy}", *overrides, "trainer.max_steps=0", run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return summary(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("algo=grpo", "algo.loss_type=grpo"),
        # Unscaled advantages learn more slowly: 240 steps sat at the threshold (seed 7 missed it either way).
        ("algo=grpo", "algo.loss_type=dr_grpo", "algo.scale_rewards=none", "trainer.max_steps=360"),
        ("algo=grpo", "algo.loss_type=dapo", "algo.epsilon_high=0.28", "algo.num_iterations=2"),
        ("algo=grpo", "algo.loss_type=bnpo", "algo.beta=0.04"),
        ("algo=rloo",),
        # The registry's worked example: REINFORCE++'s estimator is one function and a YAML.
        ("algo=reinforce_pp",),
        ("algo=reinforce_pp", "algo.advantage_estimator=reinforce_pp_baseline"),
        ("algo=remax",),  # one greedy completion per prompt is the baseline
        ("algo=grpo", "algo.dynamic_sampling=true"),  # DAPO: groups whose rewards agree are replaced
        # Online DPO: best of 8 against worst of 8 (2 samples tie on half the prompts: docs/objectives.md).
        ("algo=online_dpo", "algo.num_generations=8", "data.batch_size=8", "optim.lr=2e-3"),
        # 4 optimiser steps per rollout: 100 rollouts of 16 prompts.
        (
            "algo=ppo",
            "data.batch_size=16",
            "algo.num_ppo_epochs=2",
            "algo.num_mini_batches=2",
            "trainer.max_steps=400",
        ),
    ],
    ids=[
        "grpo",
        "dr_grpo",
        "dapo",
        "bnpo",
        "rloo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "remax",
        "dynamic_sampling",
        "online_dpo",
        "ppo",
    ],
)
def test_online_rl_raises_held_out_exact_match(
    warm_start: Path, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    initial = held_out(warm_start, tmp_path / "initial", overrides[0])["val/reward"]
    assert 0.3 <= initial <= 0.7  # the warm start guesses the category
    steps = () if any(o.startswith("trainer.max_steps=") for o in overrides) else ("trainer.max_steps=240",)
    result = cli(
        *RL,
        f"model.name_or_path={warm_start}",
        *overrides,
        *steps,
        "trainer.val_check_interval=60",
        run_dir=tmp_path / "trained",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = summary(tmp_path / "trained")
    assert final["val/reward"] >= initial + 0.3, (initial, final["val/reward"])
    # The answer keeps its form: completions are the one sentence, ended by EOS.
    assert final["val/completions/clipped_ratio"] == 0.0
    if "train/kl" in final:  # beta > 0: the policy stays near the reference
        assert 0.0 <= final["train/kl"] < 0.5
    assert (tmp_path / "trained" / "samples").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [("algo=rloo",), ("algo=ppo", "data.batch_size=16", "algo.num_ppo_epochs=2", "algo.num_mini_batches=2")],
    ids=["rloo", "ppo"],
)
def test_online_rl_raises_a_trained_reward_models_held_out_score(
    warm_start: Path, reward_model: Path, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    """The reward model (another tokenizer: completions are decoded and re-encoded with its own template)
    is the only reward, and its held-out score of the policy's greedy completions rises.

    Exact match is logged beside it (weight 0) and barely rises: the policy learns to answer "It is an
    animal." to nearly everything, which this imperfect reward model (held-out pair accuracy ~0.8) scores
    higher on average than the warm start's guesses. The score rising while the true reward does not is
    reward hacking, which is what the side-by-side metric is there to show."""
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(reward_model)) != len(AutoTokenizer.from_pretrained(warm_start))
    scored = (
        *overrides,
        f"algo.reward_models=[{reward_model}]",
        "algo.reward_functions=[rlhf_lab.rewards.exact_match]",
        "algo.reward_weights=[0.0,1.0]",  # exact match is logged, not optimised
    )
    initial = held_out(warm_start, tmp_path / "initial", *scored)
    result = cli(
        *RL,
        f"model.name_or_path={warm_start}",
        *scored,
        "trainer.max_steps=240",
        "trainer.val_check_interval=60",
        run_dir=tmp_path / "trained",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = summary(tmp_path / "trained")
    assert final["val/rewards/reward_model/mean"] > initial["val/rewards/reward_model/mean"] + 0.2
    assert final["val/reward"] == pytest.approx(final["val/rewards/reward_model/mean"])  # weights [0, 1]
    assert "val/rewards/exact_match/mean" in final


@pytest.mark.slow
def test_a_critic_with_another_tokenizer_is_refused_before_training(
    warm_start: Path, reward_model: Path, tmp_path: Path
) -> None:
    """The value model reads the policy's token ids: one from a reward model with another vocabulary fails
    before any step, naming both tokenizers (a reward model's own tokenizer is fine as a reward)."""
    result = cli(
        *RL,
        f"model.name_or_path={warm_start}",
        "algo=ppo",
        f"algo.value_model={reward_model}",
        "trainer.max_steps=4",
        run_dir=tmp_path,
    )
    assert result.returncode != 0
    assert "the value_model and the policy must share a vocabulary" in result.stderr
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
