"""rlhf_lab.diagnostics: warnings that explain a run that looks broken, each once, from hand-made metric
sequences; and one real GRPO run whose reward never varies (it also starts from a held-out reward)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rlhf_lab.diagnostics import (
    Diagnostics,
    NoRewardVariance,
    RewardModelAtChance,
    StuckLoss,
    diagnostics_for,
)
from rlhf_lab.train import run

ZERO_STD = "train/frac_reward_zero_std"


def train_steps(check: Any, values: list[dict[str, float]]) -> list[int]:
    """The (1-based) steps at which ``check`` returns a warning."""
    return [step for step, metrics in enumerate(values, 1) if check.train_step(metrics) is not None]


def test_no_reward_variance_warns_after_k_rollouts_in_a_row_with_the_keys_to_try() -> None:
    check = NoRewardVariance(rollouts=3, num_generations=8, temperature=0.7)
    # Variance at rollout 3 resets the count: 1.0 at rollouts 4, 5, 6 makes three in a row.
    fractions = [1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert train_steps(check, [{ZERO_STD: value} for value in fractions]) == [6, 7]
    message = check.message()
    assert message.startswith(f"no reward variance: {ZERO_STD} has been 1.0 for 4 rollouts in a row")
    assert "algo.num_generations, e.g. 16" in message
    assert "algo.temperature, now 0.7" in message
    assert "model.name_or_path=<sft run>/export" in message and "denser reward" in message


def test_no_reward_variance_ignores_runs_without_groups() -> None:
    # num_generations=1 (PPO) logs no frac_reward_zero_std.
    check = NoRewardVariance(rollouts=1)
    assert train_steps(check, [{"train/loss": 0.0}] * 5) == []


def test_stuck_loss_warns_at_n_steps_on_its_initial_value_and_not_once_it_moves() -> None:
    check = StuckLoss(steps=4, rtol=1e-4, lr=0.0)
    ln2 = math.log(2)
    losses = [ln2, ln2 + 1e-6, ln2 - 1e-6, ln2, ln2]
    assert train_steps(check, [{"train/loss": value} for value in losses]) == [4, 5]
    message = check.message()
    assert message.startswith("train/loss has stayed at its initial value 0.693147 (ln 2")
    assert "for 5 steps (within 1e-04 relative)" in message
    assert "optim.lr, now 0" in message and "frozen" in message

    moving = StuckLoss(steps=3)
    losses = [2.0, 2.0, 1.9, 2.0, 2.0, 2.0, 2.0]  # left it once: never "stuck at its initial value"
    assert train_steps(moving, [{"train/loss": value} for value in losses]) == []


def test_stuck_loss_leaves_a_zero_variance_rollout_to_no_reward_variance() -> None:
    check = StuckLoss(steps=2)
    assert train_steps(check, [{"train/loss": 0.0, ZERO_STD: 1.0}] * 5) == []
    # A loss of 0 with variance in the groups: stuck (the absolute tolerance covers a zero start).
    assert train_steps(check, [{"train/loss": 0.0, ZERO_STD: 0.5}] * 2) == [2]


def test_reward_model_at_chance_after_an_epoch_or_at_the_end() -> None:
    check = RewardModelAtChance(epochs=1.0, max_accuracy=0.55, min_steps=10, lr=5e-4)
    chance = {"val/rewards/accuracies": 0.5, "val/loss": math.log(2)}
    assert check.validation(chance, epochs=0.5, steps=60, final=False) is None  # half an epoch in
    assert check.validation(chance, epochs=0.5, steps=5, final=True) is None  # too short to tell
    assert check.validation({"val/rewards/accuracies": 0.9}, epochs=2.0, steps=250, final=False) is None
    message = check.validation(chance, epochs=1.0, steps=125, final=False)
    assert message == (
        "the reward model is at chance after 1.00 epochs (125 steps): held-out accuracy 0.50 "
        "(val/rewards/accuracies), loss 0.6931 (val/loss = ln 2: chosen and rejected score alike). "
        "Likely causes: a learning rate too small for its new score head (optim.lr, now 0.0005; the README's "
        "example uses optim.lr=2e-3), too little training (trainer.max_steps, trainer.max_epochs), or pairs "
        "this model cannot tell apart (chosen and rejected identical, swapped or noisily labelled)"
    )
    # A shorter run is checked at its last validation; without an accuracy, a loss at ln 2 is chance.
    final = check.validation({"val/loss": 0.69}, epochs=0.48, steps=60, final=True)
    assert final is not None and final.startswith(
        "the reward model is at chance after 0.48 epochs (60 steps)"
    )


class FakeTrainer(SimpleNamespace):
    """What `Diagnostics` reads of a trainer, after a stepping batch."""


def test_diagnostics_warns_once_per_run_resumes_included(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rlhf_lab.diagnostics.should_accumulate", lambda trainer: False)
    trainer = FakeTrainer(
        sanity_checking=False,
        fast_dev_run=False,
        is_global_zero=True,
        num_training_batches=4,
        current_epoch=0,
        callback_metrics={ZERO_STD: 1.0, "train/loss": 0.0},
    )
    callback = Diagnostics([NoRewardVariance(rollouts=2)])
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.diagnostics"):
        for batch_idx in range(3):
            callback.on_train_batch_end(trainer, None, None, None, batch_idx)  # type: ignore[arg-type]
        resumed = Diagnostics([NoRewardVariance(rollouts=2)])
        resumed.load_state_dict(callback.state_dict())
        resumed.on_train_batch_end(trainer, None, None, None, 3)  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if r.name == "rlhf_lab.diagnostics"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "for 2 rollouts in a row" in warnings[0].getMessage()
    assert resumed.epochs == 1.0 and resumed.checks[0].state_dict() == {"streak": 4}


def test_checks_for_a_run_follow_its_objective(make_config: Any) -> None:
    from rlhf_lab.objectives.reward import RewardModel

    cfg = make_config("algo=grpo", "data=synthetic_rl", "algo.num_generations=4", "algo.temperature=0.9")
    checks = diagnostics_for(cfg).checks
    assert [type(check) for check in checks] == [NoRewardVariance, StuckLoss]
    assert isinstance(checks[0], NoRewardVariance)
    assert (checks[0].num_generations, checks[0].temperature) == (4, 0.9)
    reward_model = RewardModel.__new__(RewardModel)  # only its class matters
    assert isinstance(
        diagnostics_for(make_config("algo=reward"), reward_model).checks[-1], RewardModelAtChance
    )


@pytest.mark.slow
def test_a_grpo_run_without_reward_variance_says_why_once(
    make_config: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tiny random policy never matches an answer: every rollout's reward is 0 (the issue's short run)."""
    cfg = make_config(
        "algo=grpo",
        "data=synthetic_rl",
        "data.batch_size=2",
        "data.source.num_eval=4",
        "data.eval_batch_size=4",
        "algo.num_generations=2",
        "algo.max_new_tokens=4",
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
        "checkpoint.save_top_k=0",
        "export.enabled=false",
    )
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.diagnostics"):
        run(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.name == "rlhf_lab.diagnostics"]
    assert len(warnings) == 1  # no StuckLoss too: a loss of 0 here is what NoRewardVariance explains
    assert warnings[0].startswith(f"no reward variance: {ZERO_STD} has been 1.0 for 10 rollouts in a row")
    assert "algo.num_generations, e.g. 4" in warnings[0]
    # Online RL starts from a held-out reward (trainer.val_on_start): 0, as at the end.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_start/reward"] == 0.0 and summary["val/reward"] == 0.0


def test_learned_judges_the_held_out_objective_from_step_0() -> None:
    from rlhf_lab.diagnostics import learned, not_learned_message

    ln2 = math.log(2)
    # optim.lr=1e4 on DPO: the loss stays at ln 2, the policy gives chosen and rejected the same log-probs.
    collapsed = {
        "val_start/loss": ln2,
        "val/loss": 0.6928,
        "val/rewards/accuracies": 0.5156,
        "val/logps/chosen": -37.3829,
        "val/logps/rejected": -37.3829,
        "trainer/global_step": 20.0,
    }
    assert learned(collapsed, "val/loss", "min") is False  # 0.05% better: not learning
    assert learned({**collapsed, "val/loss": 0.69}, "val/loss", "min") is True  # 0.45% better
    assert learned({**collapsed, "val/loss": 0.8}, "val/loss", "min") is False  # worse, and collapsed
    # Worse but the pairs still separated (KTO, SimPO, IPO after 20 steps on 32 held-out pairs): not judged.
    apart = {**collapsed, "val/loss": 0.70, "val/logps/rejected": -37.2}
    assert learned(apart, "val/loss", "min") is None
    # A reward model (no log-probs): its mean margin.
    reward = {
        "val_start/loss": ln2,
        "val/loss": 0.694,
        "val/rewards/accuracies": 0.5,
        "trainer/global_step": 20,
    }
    assert learned({**reward, "val/rewards/margins": 0.0}, "val/loss", "min") is False
    assert learned({**reward, "val/rewards/margins": -0.0018}, "val/loss", "min") is None
    # Judged by the loss alone (SFT): not better is not learned.
    assert (
        learned({"val_start/loss": 6.23, "val/loss": 6.23, "trainer/global_step": 20}, "val/loss", "min")
        is False
    )
    assert learned({**collapsed, "trainer/global_step": 19.0}, "val/loss", "min") is None  # too short
    assert learned({**collapsed, "val/loss": math.nan}, "val/loss", "min") is None  # diverged: said elsewhere
    assert learned({"val/loss": 0.5, "trainer/global_step": 50.0}, "val/loss", "min") is None  # no step 0
    assert learned({**collapsed, "val_start/reward": 0.0, "val/reward": 0.0}, "val/reward", "max") is None
    assert not_learned_message(collapsed, "val/loss").startswith(
        "the run did not learn: held-out val/loss 0.6931 at step 0 -> 0.6928 (chosen and rejected score alike: "
        "a collapsed model) after 20 steps (not 0.1% better; run/learned: false in summary.json)"
    )


#: 20 optimiser steps (what `learned` needs) on the tiny data, validated at step 0 and at the end.
LEARNING_RUN = (
    "data.source.num_train=160",
    "trainer.max_steps=20",
    "trainer.val_check_interval=20",
    "checkpoint.save_top_k=0",
)


@pytest.mark.slow
def test_a_collapsed_run_is_flagged_and_with_require_learning_not_exported(
    make_config: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """optim.lr=1e4 collapses DPO without a NaN (held-out loss ln 2 at every validation): run/learned is
    false, one warning says so, and export.require_learning=true refuses the export with a named error."""
    from rlhf_lab.train import NotLearned

    cfg = make_config(*LEARNING_RUN, "optim.lr=1e4", "export.require_learning=true")
    with caplog.at_level(logging.WARNING), pytest.raises(NotLearned) as stopped:
        run(cfg)
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run/learned"] is False and summary["run/complete"] is True
    assert summary["run/diverged"] == 0.0
    assert summary["val/loss"] >= summary["val_start/loss"] * (1 - 1e-3)
    assert str(stopped.value).startswith("the run did not learn: held-out val/loss 0.6931 at step 0 -> 0.69")
    assert str(stopped.value).endswith("; not exported (export.require_learning=true)")
    assert not (run_dir / "export").exists()
    warnings = [r.getMessage() for r in caplog.records if "did not learn" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("the run did not learn: held-out val/loss 0.6931")


@pytest.mark.slow
def test_a_normal_run_learned_and_is_exported_without_a_warning(
    make_config: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(*LEARNING_RUN, "export.require_learning=true")
    with caplog.at_level(logging.WARNING):
        summary = run(cfg).summary
    assert summary["run/learned"] is True
    assert summary["val/loss"] < summary["val_start/loss"] * (1 - 1e-3)
    assert (tmp_path / "run" / "export" / "config.json").is_file()
    assert "did not learn" not in (tmp_path / "run" / "export" / "README.md").read_text()
    assert "did not learn" not in caplog.text


def test_require_learning_takes_true_or_false(make_config: Any, tmp_path: Path) -> None:
    from rlhf_lab.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"^export.require_learning='maybe' is not supported; choose true or false$"
    ):
        run(make_config("export.require_learning=maybe"))
    assert not (tmp_path / "run" / "config.yaml").exists()  # before anything is written
