"""Progress a person can trust: the training bar counts optimiser steps, and the long passes outside training
(reference log-probs, teacher completions, evaluation samples) show a bar of their own.

`StepProgressBar` is Lightning's `TQDMProgressBar` with another unit: optimiser steps (`Trainer.global_step`)
instead of batches. Its total is the run's steps when ``trainer.max_steps`` is set (fewer when the epochs
run out first), else the epoch's, so ``40/40`` and its ETA mean the run's end, under gradient accumulation
and for online RL (manual optimisation: several optimiser steps per batch) alike. `progress` wraps the
other loops in a tqdm bar on stderr, on rank zero only.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm.auto import tqdm

T = TypeVar("T")


def rank_zero() -> bool:
    """Whether this process is rank zero (or the only one): other ranks show no bars."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def progress(items: Iterable[T], desc: str, unit: str = "batch", total: int | None = None) -> Iterator[T]:
    """``items``, with a tqdm bar on stderr on rank zero (refreshed every 30 s when stderr is a log file)."""
    interactive = sys.stderr.isatty()
    yield from tqdm(
        items,
        desc=desc,
        unit=unit,
        total=total,
        file=sys.stderr,
        disable=not rank_zero(),
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 30.0,
    )


def epoch_optimizer_steps(batches: float, accumulate: int = 1, steps_per_batch: int = 1) -> float:
    """Optimiser steps in one epoch of ``batches`` training batches (inf: an iterable dataset).

    Every ``accumulate``-th batch steps and the epoch's last one always does (Lightning's rule); under manual
    optimisation each batch takes ``steps_per_batch`` steps (online RL: iterations x mini-batches).
    """
    if not math.isfinite(batches):
        return math.inf
    return math.ceil(batches / max(1, accumulate)) * steps_per_batch


def bar_total(max_steps: int | None, max_epochs: int | None, epoch_steps: float) -> float:
    """The bar's total: the run's optimiser steps when ``max_steps`` is set (the epochs' steps when those run
    out first), else one epoch's steps."""
    if max_steps is None or max_steps < 0:
        return epoch_steps
    if max_epochs is not None and max_epochs > 0 and math.isfinite(epoch_steps):
        return min(max_steps, epoch_steps * max_epochs)
    return max_steps


def optimizer_steps_per_batch(module: L.LightningModule) -> int:
    """Optimiser steps one training batch takes: 1 under automatic optimisation, the online objective's
    ``steps_per_rollout`` (`rlhf_lab.objectives.online`) under manual optimisation."""
    if module.automatic_optimization:
        return 1
    return int(getattr(module, "steps_per_rollout", 1))


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar counting optimiser steps, with the total `bar_total` gives (so a correct ETA).

    Counting runs across epochs when ``max_steps`` is set; otherwise it restarts each epoch. A resumed run
    starts the bar at its step, so the rate (and the ETA) counts only the steps this process takes.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.step_offset = 0
        self.run_bar_started = False

    @staticmethod
    def counts_run(trainer: L.Trainer) -> bool:
        """Whether the bar counts the whole run (``max_steps`` set) rather than one epoch."""
        return trainer.max_steps is not None and trainer.max_steps >= 0

    def epoch_steps(self) -> float:
        module = self.trainer.lightning_module
        accumulate = self.trainer.accumulate_grad_batches if module.automatic_optimization else 1
        return epoch_optimizer_steps(
            self.trainer.num_training_batches, accumulate, optimizer_steps_per_batch(module)
        )

    def init_train_tqdm(self) -> Any:
        bar = super().init_train_tqdm()
        bar.unit = "step"  # the rate reads steps/s (or s/step), as the total does
        return bar

    @property
    def total_train_batches(self) -> int | float:
        """The bar's total, in optimiser steps (the name is Lightning's)."""
        return bar_total(self.trainer.max_steps, self.trainer.max_epochs, self.epoch_steps())

    def on_train_start(self, *args: Any) -> None:
        super().on_train_start(*args)
        self.run_bar_started = False

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.counts_run(trainer) and self.run_bar_started:
            # One bar for the run: resetting it would restart the clock the ETA is measured on.
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")
            return
        super().on_train_epoch_start(trainer, *args)
        epoch_steps = self.epoch_steps()
        run_bar = self.counts_run(trainer) or not math.isfinite(epoch_steps)
        self.step_offset = 0 if run_bar else int(trainer.current_epoch * epoch_steps)
        bar = self.train_progress_bar
        # A resumed run starts at its step: tqdm's rate is (n - initial) / elapsed.
        bar.n = bar.initial = bar.last_print_n = max(0, trainer.global_step - self.step_offset)
        bar.refresh()
        self.run_bar_started = self.counts_run(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        steps = trainer.global_step - self.step_offset
        due = steps - bar.n >= self.refresh_rate or (bar.total is not None and steps >= bar.total)
        if self.is_enabled and not bar.disable and steps != bar.n and due:
            bar.n = steps
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the line
