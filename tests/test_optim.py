"""Optimiser schedule, the logged lr and tokens/s, and determinism from the seed."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from rlhf_lab.errors import ConfigError
from rlhf_lab.objectives import OptimConfig
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
