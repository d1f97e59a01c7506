"""The training bar counts optimiser steps: its total is the run's steps with ``max_steps`` (the epoch's
otherwise), under gradient accumulation and manual optimisation; the other long loops show a bar too."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from rlhf_lab.progress import StepProgressBar, bar_total, epoch_optimizer_steps, progress


@pytest.mark.parametrize(
    ("batches", "accumulate", "steps_per_batch", "expected"),
    [
        (125, 1, 1, 125),
        (125, 4, 1, 32),  # the epoch's last (partial) accumulation steps too
        (128, 4, 1, 32),
        (500, 1, 4, 2000),  # online RL: 2 iterations x 2 mini-batches per prompt batch
        (math.inf, 2, 1, math.inf),  # an iterable dataset
    ],
)
def test_epoch_optimizer_steps(
    batches: float, accumulate: int, steps_per_batch: int, expected: float
) -> None:
    assert epoch_optimizer_steps(batches, accumulate, steps_per_batch) == expected


@pytest.mark.parametrize(
    ("max_steps", "max_epochs", "epoch_steps", "expected"),
    [
        (40, 1, 125, 40),  # the issue's `40/125`: now `40/40`
        (30, 1, 500, 30),  # GRPO's `30/500`
        (500, 1, 125, 125),  # the epochs end first
        (500, 3, 125, 375),
        (40, -1, 125, 40),  # max_steps alone (Lightning's max_epochs=-1)
        (40, None, math.inf, 40),
        (-1, 3, 125, 125),  # no max_steps: one epoch's steps
        (-1, 1, 32, 32),
    ],
)
def test_bar_total(max_steps: int, max_epochs: int | None, epoch_steps: float, expected: float) -> None:
    assert bar_total(max_steps, max_epochs, epoch_steps) == expected


class TwoStepsPerBatch(BoringModel):
    """Manual optimisation with two optimiser steps per batch, as an online objective's rollout takes."""

    steps_per_rollout = 2

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer: Any = self.optimizers()
        for _ in range(self.steps_per_rollout):
            loss = self.step(batch)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()


@pytest.mark.parametrize(
    ("model", "limits", "expected_total", "expected_steps"),
    [
        (BoringModel, {"max_steps": 7, "accumulate_grad_batches": 2}, 7, 7),  # over 2 epochs of 5 steps
        (BoringModel, {"max_epochs": 2, "accumulate_grad_batches": 3}, 4, 8),  # ceil(10 / 3) per epoch
        (TwoStepsPerBatch, {"max_steps": 6}, 6, 6),
        (TwoStepsPerBatch, {"max_epochs": 1}, 20, 20),
    ],
)
def test_bar_counts_optimizer_steps_in_a_real_trainer(
    model: type[BoringModel], limits: dict[str, int], expected_total: int, expected_steps: int
) -> None:
    torch.manual_seed(0)
    bar = StepProgressBar()
    trainer = L.Trainer(
        callbacks=[bar],
        limit_train_batches=10,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        **limits,  # type: ignore[arg-type]
    )
    trainer.fit(model())
    assert trainer.global_step == expected_steps
    assert (bar.train_progress_bar.total, bar.train_progress_bar.n) == (expected_total, expected_total)
    assert bar.train_progress_bar.unit == "step"


def test_progress_yields_every_item_and_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(5), "reference log-probs (train)")) == [0, 1, 2, 3, 4]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "reference log-probs (train): 100%" in captured.err and "5/5" in captured.err


def test_progress_is_silent_off_rank_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RANK", "1")
    assert list(progress(range(3), "teacher completions")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_leaderboard_prints_one_line_per_finished_run_with_its_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlhf_lab.leaderboard import Job, train_all

    run_dir = tmp_path / "runs" / "dpo_s0"
    # A stand-in for the training child: it writes the summary a finished run leaves.
    write_summary = (
        f"import json, pathlib; run = pathlib.Path({str(run_dir)!r}); run.mkdir(parents=True); "
        "(run / 'summary.json').write_text(json.dumps({'val/rewards/accuracies': 0.91}))"
    )
    job = Job(objective="dpo", seed=0, run_dir=run_dir, command=[sys.executable, "-c", write_summary])
    assert train_all([job], metric="val/rewards/accuracies") == {"dpo_s0": 0}
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "leaderboard: training dpo_s0"
    assert re.fullmatch(
        r"leaderboard: \[1/1\] dpo seed 0 done in \d+ s, val/rewards/accuracies 0\.9100", printed[1]
    )
    assert len(printed) == 2
