"""trainer.nan_policy: a non-finite loss or gradient stops the run (naming the step and the examples, its
last finite state kept), or is skipped and counted, or ignored; a NaN model is never exported or ranked."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pytest
import torch

from rlhf_lab.checkpoints import read_checkpoint
from rlhf_lab.objectives import PairwiseObjective
from rlhf_lab.objectives.base import NonFiniteError
from rlhf_lab.train import run
from tests.conftest import compose_config
from tests.subprocesses import python_module

REPO = Path(__file__).resolve().parents[1]
SHORT = ["trainer.max_steps=6", "trainer.limit_val_batches=1", "trainer.val_check_interval=3"]
SHORT += ["checkpoint.every_n_train_steps=1", "trainer.log_every_n_steps=1"]


@pytest.fixture
def nan_at(monkeypatch: pytest.MonkeyPatch):
    """``nan_at(where, steps)``: NaN into the training loss, or into the batch's activations (the embedding
    output), or into one gradient, at the given (1-based) training steps."""

    def arm(where: str, steps: set[int]) -> None:
        original = PairwiseObjective.compute

        def compute(self, batch, split):
            step = self.trainer.global_step + 1
            hit = split == "train" and step in steps
            if where == "batch" and hit:
                embeddings = self.policy.model.get_input_embeddings()
                handle = embeddings.register_forward_hook(lambda m, i, out: out * float("nan"))
                try:
                    return original(self, batch, split)
                finally:
                    handle.remove()
            loss, metrics = original(self, batch, split)
            if where == "loss" and hit:
                loss = loss * float("nan")
            if where == "gradient" and hit:
                weight = self.policy.model.get_output_embeddings().weight
                weight.register_hook(lambda grad: grad * float("inf"))  # one use: removed with the graph
                loss = loss + 0.0 * weight.sum()
            return loss, metrics

        monkeypatch.setattr(PairwiseObjective, "compute", compute)

    return arm


@pytest.mark.parametrize("where", ["loss", "batch", "gradient"])
def test_stop_names_the_step_and_examples_and_keeps_the_last_finite_state(
    tmp_path: Path, nan_at, where: str
) -> None:
    nan_at(where, {4})
    with pytest.raises(NonFiniteError) as caught:
        run(compose_config(SHORT, run_dir=tmp_path))
    message = str(caught.value)
    what = "gradient" if where == "gradient" else "loss"
    # The fourth training batch: metrics.csv's step 3 (its step column counts from 0).
    assert f"non-finite {what} at step 3" in message and "nan_policy=skip" in message
    if what == "loss":
        assert "dataset examples [" in message
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3  # the three finite steps
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "export").exists() and not (tmp_path / "summary.json").exists()


def test_skip_counts_the_skipped_steps_and_trains_on(
    tmp_path: Path, nan_at, caplog: pytest.LogCaptureFixture
) -> None:
    nan_at("loss", {2, 5})
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.nan_policy"):
        result = run(compose_config([*SHORT, "trainer.nan_policy=skip"], run_dir=tmp_path))
    assert int(result.objective.nan_skipped) == 2
    assert result.summary["train/nan_skipped"] == 2
    assert math.isfinite(result.summary["val/loss"]) and result.summary["run/diverged"] == 0
    assert (tmp_path / "export" / "model.safetensors").exists()
    # The warnings name the steps as metrics.csv does, and a skipped step's row holds no loss, never the
    # previous step's (Lightning repeats a value a step does not log); its skip count is its own.
    warned = [r.getMessage().split(" (")[0] for r in caplog.records if "non-finite" in r.getMessage()]
    assert warned == ["non-finite loss at step 1", "non-finite loss at step 4"]
    training = [
        row
        for row in csv.DictReader((tmp_path / "metrics.csv").open())
        if row["train/lr"] or row["train/nan_skipped"]
    ]
    assert [row["step"] for row in training] == ["0", "1", "2", "3", "4", "5"]
    assert [row["train/nan_skipped"] for row in training] == ["", "1.0", "1.0", "1.0", "2.0", "2.0"]
    losses = [row["train/loss"] for row in training]
    assert losses[1] == losses[4] == ""
    assert all(losses[i] for i in (0, 2, 3, 5)) and len({losses[i] for i in (0, 2, 3, 5)}) == 4
    assert training[1]["train/grad_norm"] == training[4]["train/grad_norm"] == ""


def test_skip_stops_past_its_limit(tmp_path: Path, nan_at) -> None:
    nan_at("loss", {2, 3, 4, 5, 6})
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 3 .* after 2 skipped steps"):
        run(compose_config([*SHORT, "trainer.nan_policy=skip", "trainer.max_nan_skips=2"], run_dir=tmp_path))


def test_a_skipped_step_changes_no_weight(tmp_path: Path, nan_at) -> None:
    """A NaN loss at step 2 under skip: the weights after step 2 are those after step 1."""
    nan_at("loss", {2})
    overrides = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.nan_policy=skip"]
    overrides += ["checkpoint.every_n_train_steps=1", "export.enabled=false"]
    result = run(compose_config(overrides, run_dir=tmp_path))
    assert int(result.objective.nan_skipped) == 1
    first = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    for name, parameter in result.objective.named_parameters():
        if name in first:
            torch.testing.assert_close(parameter.detach(), first[name])


@pytest.mark.slow
def test_the_cli_stops_a_diverging_run_with_a_message_and_no_model(tmp_path: Path) -> None:
    """optim.lr=1e30 (a diverging run): exit status 2, one line naming the step, no export, no ranking."""
    overrides = [
        "optim.lr=1e30",
        "optim.warmup_ratio=0",
        "trainer.max_steps=8",
        "trainer.limit_val_batches=1",
    ]
    overrides += ["trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}"]
    result = python_module("rlhf_lab", *overrides, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: non-finite loss at step" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "export").exists()
    assert not list((tmp_path / "checkpoints").glob("step*.ckpt"))  # no "best" checkpoint of a NaN model


# --- the policy as a callback, the objective's thin hooks, old checkpoints ----------------------------------


def _fake_objective(step: int = 4):
    """What `NanPolicy.handle` reads of an objective: the trainer's metrics.csv step (and its logged values,
    none here), the skip buffer, ``log``."""
    from types import SimpleNamespace

    logged: dict[str, float] = {}
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=step))
    return SimpleNamespace(
        trainer=SimpleNamespace(fit_loop=loop, _results=None),
        nan_skipped=torch.zeros((), dtype=torch.long),
        log=lambda name, value, **_: logged.__setitem__(name, float(value)),
        logged=logged,
    )


def test_nan_policy_handles_skip_and_stop_on_its_own() -> None:
    from rlhf_lab.nan_policy import NanPolicy

    objective = _fake_objective()
    policy = NanPolicy("skip", max_skips=1)
    policy.handle(objective, "loss", None)
    assert int(objective.nan_skipped) == 1 and objective.logged == {"train/nan_skipped": 1.0}
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 4 after 1 skipped steps"):
        policy.handle(objective, "gradient", None)
    with pytest.raises(NonFiniteError, match=r"at step 4; the run stops \(trainer.nan_policy=stop\)"):
        NanPolicy("stop").handle(_fake_objective(), "loss", None)
    assert not NanPolicy("ignore").active and NanPolicy("skip").active


def test_invalid_nan_policy_names_the_key_and_choices() -> None:
    from rlhf_lab.errors import ConfigError
    from rlhf_lab.nan_policy import NanPolicy

    with pytest.raises(
        ConfigError, match=r"trainer.nan_policy='retry' is not supported; choose one of: stop, skip"
    ):
        NanPolicy("retry")
    with pytest.raises(ConfigError, match=r"trainer.max_nan_skips=-1 is out of range"):
        NanPolicy("skip", max_skips=-1)


def test_the_trainer_gets_the_objectives_nan_policy_and_the_skip_count_stays_a_state_dict_key(
    make_config, tmp_path: Path
) -> None:
    """`build_callbacks` hands the objective's `NanPolicy` to the trainer; ``nan_skipped`` is where checkpoints
    written before the callback existed hold it (a state-dict key of the objective), so they load and resume."""
    from rlhf_lab import nan_policy
    from rlhf_lab.objectives import base
    from rlhf_lab.train import build, build_callbacks

    assert base.NonFiniteError is nan_policy.NonFiniteError  # importable from where it used to live
    cfg = make_config("trainer.nan_policy=skip", "trainer.max_nan_skips=3")
    objective, _, _ = build(cfg)
    callbacks = build_callbacks(cfg, tmp_path, objective)
    (policy,) = [c for c in callbacks if isinstance(c, nan_policy.NanPolicy)]
    assert policy is objective.nan_policy and (policy.policy, policy.max_skips) == ("skip", 3)
    objective.configure_model()
    assert "nan_skipped" in objective.checkpoint_keys() and "nan_skipped" in objective.state_dict()
    objective.nan_skipped += 2
    state = {k: v for k, v in objective.state_dict().items() if k in objective.checkpoint_keys()}
    again, _, _ = build(cfg)
    again.configure_model()
    again.load_trained_state(state, "a checkpoint")
    assert int(again.nan_skipped) == 2
