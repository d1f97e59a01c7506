"""Optimiser schedule, the logged lr and tokens/s, and determinism from the seed."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from rlhf_lab.errors import ConfigError
from rlhf_lab.objectives import OptimConfig
from rlhf_lab.optim import configure_optimizers
from rlhf_lab.train import run
from tests.conftest import compose_config


def test_cosine_with_warmup_ratio_hand_computed() -> None:
    """10 steps, warm-up ratio 0.2 -> 2 warm-up steps: factors 1/3, 2/3, then cosine from 1 to 0 over 8."""
    factor = OptimConfig(scheduler="cosine", warmup_ratio=0.2).lr_lambda(10)
    assert factor(0) == pytest.approx(1 / 3)
    assert factor(1) == pytest.approx(2 / 3)
    assert factor(2) == pytest.approx(1.0)
    assert factor(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))  # = 0.5
    assert factor(10) == pytest.approx(0.0)


def test_linear_constant_and_warmup_steps() -> None:
    linear = OptimConfig(scheduler="linear", warmup_ratio=0.0).lr_lambda(4)
    assert [linear(step) for step in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    constant = OptimConfig(scheduler="constant", warmup_steps=1, warmup_ratio=0.9).lr_lambda(100)
    assert [constant(step) for step in range(3)] == pytest.approx([0.5, 1.0, 1.0])  # steps win over ratio
    floor = OptimConfig(scheduler="cosine", warmup_ratio=0.0, min_lr_ratio=0.1).lr_lambda(4)
    assert floor(4) == pytest.approx(0.1)


def test_invalid_scheduler_names_the_key_and_choices() -> None:
    with pytest.raises(ConfigError, match=r"optim.scheduler='step'.*constant, linear, cosine"):
        OptimConfig(scheduler="step")


def test_logged_lr_and_tokens_per_sec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lr 1e-3, linear, 2 warm-up steps over 4: steps log 1e-3 * (1/3, 2/3, 1, 0.5).

    tokens_per_sec is the batch's real tokens over the step's wall time; the clock is replaced so that every
    step takes exactly 0.5 s, making it 2 x the batch's token count.
    """
    import rlhf_lab.objectives.base as base

    ticks = iter(range(10_000))
    monkeypatch.setattr(base.time, "perf_counter", lambda: next(ticks) * 0.5)
    seen_tokens: list[int] = []
    original = base.AlignmentObjective.on_train_batch_end

    def record(self, outputs, batch, batch_idx):
        seen_tokens.append(int(batch.sequences.attention_mask.sum()))
        return original(self, outputs, batch, batch_idx)

    monkeypatch.setattr(base.AlignmentObjective, "on_train_batch_end", record)
    cfg = compose_config(
        [
            "optim.lr=1e-3",
            "optim.scheduler=linear",
            "optim.warmup_steps=2",
            "trainer.max_steps=4",
            "trainer.limit_val_batches=1",
        ],
        run_dir=tmp_path,
    )
    run(cfg)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    logged_lr = metrics["train/lr"].dropna().tolist()
    assert logged_lr == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 0.5e-3])
    logged_rate = metrics["train/tokens_per_sec"].dropna().tolist()
    assert logged_rate == pytest.approx([2.0 * tokens for tokens in seen_tokens])


def test_same_seed_same_run(tmp_path: Path) -> None:
    """On CPU a run is a function of its config: two runs log identical metrics."""
    overrides = ["trainer.max_steps=3", "trainer.limit_val_batches=1", "seed=7"]
    first = run(compose_config(overrides, run_dir=tmp_path / "a")).summary
    second = run(compose_config(overrides, run_dir=tmp_path / "b")).summary
    timing = {"train/tokens_per_sec"}
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in second.items() if k not in timing
    }
    other = run(compose_config([*overrides[:-1], "seed=8"], run_dir=tmp_path / "c")).summary
    assert other["train/loss"] != first["train/loss"]


# --- the optimiser and schedule named by target ---------------------------------------------------------------


def _parameters() -> list[torch.nn.Parameter]:
    layer = torch.nn.Linear(3, 2)
    return list(layer.parameters())


def _optim(*overrides: str) -> OptimConfig:
    from hydra.utils import instantiate

    return instantiate(compose_config(overrides).optim, _convert_="all")


def test_any_optimiser_and_scheduler_by_target() -> None:
    """``optim.optimizer`` / ``optim.lr_scheduler``: `_target_` nodes with `_partial_: true` replace the presets;
    the optimiser gets the groups and ``optim.lr``, the schedule the optimiser."""
    config = _optim(
        "optim.lr=0.1",
        "optim.optimizer={_target_:torch.optim.SGD,_partial_:true,momentum:0.9}",
        "optim.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:2,gamma:0.5}",
    )
    built = configure_optimizers(config, _parameters(), total_steps=10)
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
    assert (
        isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and built["lr_scheduler"]["interval"] == "step"
    )
    rates = []
    for _ in range(4):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_a_scheduler_taking_total_steps_gets_the_runs_length() -> None:
    config = OptimConfig(
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1),
    )
    scheduler = configure_optimizers(config, _parameters(), total_steps=7)["lr_scheduler"]["scheduler"]
    assert scheduler.total_steps == 7
    # A node that sets the argument itself keeps its value.
    config = OptimConfig(
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=3)
    )
    assert (
        configure_optimizers(config, _parameters(), total_steps=7)["lr_scheduler"]["scheduler"].total_steps
        == 3
    )


def test_presets_by_name_and_by_option() -> None:
    """``optim=adamw`` (default), ``optim=adamw_8bit`` / ``paged_adamw_8bit``, and ``optim.name=...`` as before."""
    assert _optim().name == "adamw" and _optim().optimizer is None
    assert _optim("optim=adamw_8bit").name == "adamw_8bit"
    assert _optim("optim=paged_adamw_8bit", "optim.lr=1e-3").lr == 1e-3
    assert _optim("optim.name=adamw_8bit").name == "adamw_8bit"
    optimizer = configure_optimizers(OptimConfig(betas=(0.8, 0.9), eps=1e-6), _parameters(), 4)["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["betas"] == (0.8, 0.9) and optimizer.defaults["eps"] == 1e-6


def test_weight_decay_groups() -> None:
    """No decay on biases (1-D); one group when there is no decay at all (ZeRO-3 regroups parameters)."""
    parameters = _parameters()
    one = configure_optimizers(OptimConfig(), parameters, 4)["optimizer"]
    assert len(one.param_groups) == 1
    two = configure_optimizers(OptimConfig(weight_decay=0.1), parameters, 4)["optimizer"]
    assert [(len(g["params"]), g["weight_decay"]) for g in two.param_groups] == [(1, 0.1), (1, 0.0)]


def test_a_run_config_written_before_targets_still_instantiates() -> None:
    """A saved config.yaml of an older run (the flat keys, ``rlhf_lab.objectives.OptimConfig``) still builds,
    for evaluation and resume."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    old = OmegaConf.create(
        {
            "_target_": "rlhf_lab.objectives.OptimConfig",
            "name": "adamw",
            "lr": 0.001,
            "weight_decay": 0.0,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "scheduler": "linear",
            "warmup_ratio": 0.1,
            "warmup_steps": 0,
            "min_lr_ratio": 0.0,
        }
    )
    config = instantiate(old, _convert_="all")
    assert (config.lr, config.scheduler, config.optimizer, config.lr_scheduler) == (
        0.001,
        "linear",
        None,
        None,
    )
    assert type(configure_optimizers(config, _parameters(), 4)["optimizer"]) is torch.optim.AdamW


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "sgd"},
            r"optim.name='sgd' is not supported; choose one of: adamw, adamw_8bit, paged_adamw_8bit",
        ),
        (
            {"optimizer": "torch.optim.NoSuchThing"},
            r"optim.optimizer='torch.optim.NoSuchThing' names no class",
        ),
        (
            {"lr_scheduler": {"step_size": 2}},
            r"optim.lr_scheduler=\{'step_size': 2\} is not supported; choose a target",
        ),
        ({"min_lr_ratio": 2.0}, r"optim.min_lr_ratio=2.0 is out of range"),
    ],
)
def test_invalid_optim_settings_name_the_key_value_and_choices(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OptimConfig(**kwargs)


def test_no_trainable_parameters_fails_clearly() -> None:
    with pytest.raises(ConfigError, match="no trainable parameters"):
        configure_optimizers(OptimConfig(), [], 4)
