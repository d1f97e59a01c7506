"""User code that fails, failing clearly: a reward function that raises, returns the wrong number of values,
strings, None for a whole batch, NaN or inf, or outlasts ``algo.reward_timeout`` stops the run with one line
naming it, the step and the first offending prompt (exit 2, ``last.ckpt`` kept), or, under
``algo.reward_errors=skip``, loses its prompts and counts them (``train/reward_errors``); a reward model,
teacher or value model that does not load names its key, its path and the cause."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch.testing import assert_close

import tests.custom_rewards as custom
from rlhf_lab.checkpoints import read_checkpoint
from rlhf_lab.errors import ConfigError, RunStopped
from rlhf_lab.losses.advantages import grpo_advantages
from rlhf_lab.models.build import Companion, ModelLoadError, load_companions
from rlhf_lab.models.hub import HubModel
from rlhf_lab.rewards import RewardError, RewardFailure, failure_message, reward_values
from rlhf_lab.rl.rollout import Completions
from rlhf_lab.rl.scoring import RewardScorer
from rlhf_lab.train import build, run
from tests.conftest import compose_config
from tests.subprocesses import python_module

# Three prompts x 2 completions (consecutive rows: a prompt's group).
PROMPTS = [
    prompt for prompt in ("Is a dog an animal?", "Is a cat an animal?", "Is a saw a tool?") for _ in "ab"
]
COMPLETIONS = ["yes", "no", "yes", "no", "yes", "no"]
IDS = [[2, 4], [1], [2], [3, 3], [], [4]]
EVEN = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]  # even_tokens of IDS (an empty completion scores 0)
ALL = [0, 1, 2, 3, 4, 5]
FINITE = "a reward must be finite (None: not applicable)"

SMALL = (
    "algo=grpo",
    "data=synthetic_rl",
    "data.source.num_train=32",
    "data.source.num_eval=8",
    "data.batch_size=4",
    "algo.num_generations=2",
    "algo.max_new_tokens=8",
    "trainer.limit_val_batches=0",
    "trainer.val_check_interval=1",
    "trainer.log_every_n_steps=1",
    "export.enabled=false",
    "checkpoint.save_top_k=0",
    "optim.lr=1e-2",
    "optim.warmup_ratio=0",
)


def _values(function, timeout: float | None = None) -> tuple[list[float], list[tuple[str, list[int]]]]:
    values, failures = reward_values(
        function, PROMPTS, COMPLETIONS, IDS, {"answer": ["x"] * 6}, timeout=timeout, group_size=2
    )
    return values.tolist(), [(failure.problem, failure.rows) for failure in failures]


def _nan_is(values: list[float], expected: list[float]) -> bool:
    return all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(values, expected, strict=True))


# --- the scoring path, one failure kind at a time -----------------------------------------------------------
@pytest.mark.parametrize(
    ("function", "problem", "rows"),
    [
        (custom.raises, "raised ValueError: the grader is down", ALL),
        (custom.too_few, "returned 5 values for 6 completions", ALL),
        (custom.not_a_list, "returned int, not a list of 6 rewards", ALL),
        (custom.strings, "returned '1.0' for a completion; a reward is a number (or None)", ALL),
        (
            custom.all_none,
            "returned None for every completion of the batch (no reward would reach any of them)",
            ALL,
        ),
        (custom.nan_rewards, f"returned nan for a completion; {FINITE}", ALL),
        (custom.inf_on_last, f"returned inf for a completion; {FINITE}", [5]),
        (custom.nan_on_first_prompt, f"returned nan for a completion; {FINITE}", [0, 1]),
        (custom.raises_on_cat, "raised KeyError: 'cat'", [2, 3]),
    ],
)
def test_each_failure_is_named_with_the_completions_it_failed_on(
    function, problem: str, rows: list[int]
) -> None:
    """Exactly the failing completions fail (NaN); a call that raises on one prompt is retried prompt by
    prompt, so the other prompts keep their rewards."""
    values, failures = _values(function)
    assert failures == [(problem, rows)]
    scores = [0.0] * 6 if function is custom.inf_on_last else EVEN
    expected = [math.nan if row in rows else score for row, score in enumerate(scores)]
    assert _nan_is(values, expected), values


def test_none_for_some_completions_is_not_a_failure() -> None:
    """None means "not applicable" (a mixed batch): only None for the whole batch fails."""

    def yes_only(prompts, completions, completion_ids, **columns):
        return [1.0 if completion == "yes" else None for completion in completions]

    values, failures = reward_values(yes_only, PROMPTS, COMPLETIONS, IDS, {})
    assert failures == [] and _nan_is(values.tolist(), [1.0, math.nan, 1.0, math.nan, 1.0, math.nan])


def test_a_slow_function_times_out_without_waiting_for_it() -> None:
    """custom.slow sleeps 2 s; with a 0.2 s timeout the caller has its answer well before (the function's
    thread is left to finish on its own), and a timed-out call is not retried prompt by prompt."""
    started = time.perf_counter()
    _, failures = _values(custom.slow, timeout=0.2)
    elapsed = time.perf_counter() - started
    problem = "did not return within algo.reward_timeout=0.2 s (its thread is left running)"
    assert failures == [(problem, ALL)] and elapsed < 1.0
    assert _values(custom.even_tokens, timeout=0.2) == (EVEN, [])  # a quick function is not affected


def test_the_message_names_where_the_reward_and_the_first_offending_prompt() -> None:
    failure = RewardFailure("reward function pkg.fn", "raised KeyError: 'cat'", [2, 3])
    long_prompt = [{"role": "user", "content": "Is a cat " + "very " * 20 + "much an animal?"}]
    prompts = PROMPTS[:2] + [long_prompt] * 2 + PROMPTS[4:]
    assert failure_message(failure, prompts, "at training step 3") == (
        "at training step 3, reward function pkg.fn raised KeyError: 'cat'; first offending prompt "
        "'Is a cat very very very very very very very very very ver...' (2 of 6 completions)"
    )


def test_a_reward_model_with_a_non_finite_score_fails_like_a_function() -> None:
    scorer = RewardScorer(["tests.custom_rewards.even_tokens"], ["/models/rm"], None)
    model = SimpleNamespace(score_examples=lambda examples: torch.tensor([0.5, 1.0, 0.0, math.inf, 2.0, 1.0]))
    scores = scorer.score(Completions(PROMPTS, COMPLETIONS, IDS, {}), [model], torch.device("cpu"), 2)
    [failure] = scores.failures
    assert failure.reward == "reward model algo.reward_models[0] (/models/rm)"
    assert failure.problem == "scored inf for a completion (a non-finite score)" and failure.rows == [3]
    assert scores.failed_rows() == {3}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("algo.reward_errors=drop",),
            "algo.reward_errors='drop' is not supported; choose one of: stop, skip",
        ),
        (
            ("algo.reward_timeout=0",),
            "algo.reward_timeout=0.0 is out of range; expected a value in (0.0, inf)",
        ),
    ],
)
def test_bad_reward_settings_fail_before_training(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(compose_config([*SMALL, *overrides]))
    assert str(caught.value) == message


# --- skip: the group leaves the step, the other groups keep their advantages --------------------------------
def _rollout(function: str, *overrides: str):
    objective, datamodule, _ = build(
        compose_config([*SMALL, f"algo.reward_functions=[{function}]", "algo.reward_errors=skip", *overrides])
    )
    objective.configure_model()
    return objective, objective.make_rollout(next(iter(datamodule.train_dataloader())))


def test_skip_drops_the_failing_group_and_keeps_the_others_advantages() -> None:
    """4 prompts x 2: the first prompt's rewards are NaN. Its completions leave the loss with advantage 0;
    the other three groups' advantages are GRPO's of their own rewards, as if the first had not been there."""
    objective, (rollout, metrics) = _rollout("tests.custom_rewards.nan_on_first_prompt")
    assert rollout.require("kept").tolist() == [False, False] + [True] * 6
    assert not rollout.mask[:2].any() and rollout.mask[2:].any()
    advantages = rollout.require("advantages")
    assert advantages[:2].tolist() == [0.0, 0.0]
    expected = grpo_advantages(rollout.require("per_reward")[2:, 0], 2).advantages
    assert_close(advantages[2:], expected)
    assert objective.dropped_groups == 1 and float(metrics["reward_errors"]) == 1.0
    assert_close(metrics["reward"], rollout.require("per_reward")[2:, 0].mean())  # kept completions only


def test_skip_with_every_group_dropped_prepares_nothing() -> None:
    objective, (rollout, metrics) = _rollout("tests.custom_rewards.nan_rewards")
    assert not rollout.require("kept").any() and not rollout.mask.any()
    assert rollout.advantages is None and "reward" not in metrics
    assert objective.dropped_groups == 4 and float(metrics["reward_errors"]) == 4.0


@pytest.mark.slow
def test_skip_counts_dropped_prompts_in_the_metrics_and_a_step_with_none_left_changes_nothing(
    tmp_path: Path,
) -> None:
    """train/reward_errors is the run's count of dropped prompts (every process), logged per rollout: one
    prompt of 4 per step with nan_on_first_prompt -> 1, 2, 3. With every prompt dropped (nan_rewards), each
    step is taken without gradients: 3 steps counted, 4 prompts dropped each, weights as they started."""
    common = [*SMALL, "algo.reward_errors=skip", "trainer.max_steps=3", "checkpoint.every_n_train_steps=1"]
    one = run(
        compose_config(
            [*common, "algo.reward_functions=[tests.custom_rewards.nan_on_first_prompt]"], tmp_path / "one"
        )
    )
    metrics = pd.read_csv(tmp_path / "one" / "metrics.csv")
    assert metrics["train/reward_errors"].dropna().tolist() == [1.0, 2.0, 3.0]
    checkpoint = read_checkpoint(tmp_path / "one" / "checkpoints" / "last.ckpt")
    assert checkpoint["rlhf_lab"]["reward_errors"] == 3
    one.objective.dropped_groups = 0
    one.objective.on_load_checkpoint(checkpoint)  # a resume counts on from the checkpoint's count
    assert one.objective.dropped_groups == 3

    initial = build(compose_config(common))[0]
    initial.configure_model()
    every = run(
        compose_config(
            [*common, "algo.reward_functions=[tests.custom_rewards.nan_rewards]"], tmp_path / "all"
        )
    )
    assert every.trainer.global_step == 3
    assert pd.read_csv(tmp_path / "all" / "metrics.csv")["train/reward_errors"].dropna().tolist() == [
        4.0,
        8.0,
        12.0,
    ]
    for name, parameter in every.objective.policy.named_parameters():
        assert torch.equal(parameter.detach(), dict(initial.policy.named_parameters())[name].detach()), name
    assert one.summary["train/reward_errors"] == 3.0


# --- stop: one line, the last state kept -------------------------------------------------------------------
@pytest.mark.slow
def test_stop_names_the_function_the_step_and_the_prompt_and_keeps_the_last_state(tmp_path: Path) -> None:
    function = "{_target_:tests.custom_rewards.RaisesFromCall,call:3}"
    with pytest.raises(RewardError) as caught:
        run(compose_config([*SMALL, f"algo.reward_functions=[{function}]", "trainer.max_steps=4"], tmp_path))
    assert isinstance(caught.value, RunStopped)
    assert str(caught.value) == (
        "at training step 3, reward function tests.custom_rewards.RaisesFromCall (raises_from_call) raised "
        "RuntimeError: the grader went down; first offending prompt 'Quick question from the garage: is the "
        "tiger a tool or an...' (8 of 8 completions); the run stops (algo.reward_errors=stop; "
        "algo.reward_errors=skip drops such prompts and trains on). Its last state is in checkpoints/last.ckpt"
    )
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2


@pytest.mark.slow
def test_the_cli_prints_one_line_and_exits_2_with_last_ckpt_kept(tmp_path: Path) -> None:
    """End to end: a reward function that raises from its second call stops the run at step 2 with one
    ``error:`` line (no traceback through Lightning), exit status 2, and step 1's state in last.ckpt."""
    function = "{_target_:tests.custom_rewards.RaisesFromCall,call:2}"
    result = python_module(
        "rlhf_lab",
        *SMALL,
        f"algo.reward_functions=[{function}]",
        "trainer.max_steps=3",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path}",
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: at training step 2, reward function tests.custom_rewards.RaisesFromCall (raises_from_call) "
        "raised RuntimeError: the grader went down; first offending prompt 'In the attic, Dev picked up a "
        "dog. Would you call it an a...' (8 of 8 completions); the run stops (algo.reward_errors=stop; "
        "algo.reward_errors=skip drops such prompts and trains on). Its last state is in checkpoints/last.ckpt"
    ]
    assert "Traceback" not in result.stderr
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 1


# --- companions that do not load ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def causal_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM saved with its tokenizer (a policy's export: not a sequence classifier)."""
    from rlhf_lab.models import TinyModel

    spec = TinyModel(
        vocab_size=300, hidden_size=16, num_layers=1, cache_dir=str(tmp_path_factory.mktemp("lm"))
    )
    spec.prepare(lambda: ["Is a dog an animal? It is an animal.", "Is a saw a tool? It is a tool."] * 20)
    return Path(spec.name_or_path)


def _load(path: Path, **companion) -> str:
    spec = HubModel(name_or_path=str(path), dtype="float32")
    with pytest.raises(ModelLoadError) as caught:
        load_companions({"x": Companion(spec, **companion)}, spec)
    assert isinstance(caught.value, RunStopped)
    return str(caught.value)


def test_a_policy_given_as_a_reward_model_is_named_not_a_sequence_classifier(causal_lm_dir: Path) -> None:
    message = _load(
        causal_lm_dir, task="sequence_classification", key="algo.reward_models[0]", role="reward model"
    )
    assert message == (
        f"algo.reward_models[0]={str(causal_lm_dir)!r}: the reward model does not load: it is not a sequence "
        "classifier: score.weight would be newly initialised (a reward model is the export of an algo=reward run)"
    )


def test_an_unknown_architecture_names_the_teacher_key(causal_lm_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "teacher"
    broken.mkdir()
    for file in causal_lm_dir.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "no_such_architecture"}))
    message = _load(broken, key="teacher.name_or_path", role="teacher")
    assert message.startswith(
        f"teacher.name_or_path={str(broken)!r}: the teacher does not load: ValueError: "
    )
    assert "no_such_architecture" in message and "\n" not in message


def test_unreadable_weights_name_the_value_model_key(causal_lm_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "critic"
    broken.mkdir()
    for file in causal_lm_dir.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    message = _load(
        broken, task="sequence_classification", trainable=True, key="algo.value_model", role="value model"
    )
    assert message.startswith(f"algo.value_model={str(broken)!r}: the value model does not load: ")
    assert "\n" not in message
