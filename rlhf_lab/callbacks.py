"""Callbacks that make a run resumable at any moment, logs included.

- `LastCheckpoint` writes ``last.ckpt`` on its own schedule (every N optimiser steps and/or M minutes, after
  every validation, at the end and on an exception), whether or not the monitored metric exists yet. A save
  due on a step that validates is made after the validation (and after the best-k save), so a resume never
  skips or repeats one. The last step's checkpoint is written inside its epoch (a resume can train further
  from it); a resume with nothing left to train makes up for the epoch's end (`RunProgress.on_fit_end`).
- `RunProgress` flushes metrics.csv into every checkpoint and records how many rows it held (and the row of
  the checkpoint's own step, which Lightning logs only after the checkpoint), so a resumed metrics.csv is
  the uninterrupted one row for row; it also keeps the last training metrics for ``summary.json``.
- `FiniteModelCheckpoint` keeps the best-k checkpoints by the monitored metric, never ranking a NaN, and
  after a resume removes the best-k files the checkpoint it resumed from did not know of (written after it by
  the killed process, or the one it resumed from, which Lightning never deletes).
- `StartValidation` validates before the first training step (``trainer.val_on_start``) and keeps the values,
  checkpoints included, as the run's starting point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from rlhf_lab.checkpoints import STEP_NAME, atomic_remove
from rlhf_lab.lightning_compat import (
    batches_that_stepped,
    finish_skipped_restart,
    pending_logged_metrics,
    should_accumulate,
    step_logs_due,
    validation_due,
)
from rlhf_lab.loggers import CSVLogger, read_metrics_rows


def _fitting(trainer: L.Trainer) -> bool:
    from lightning.pytorch.trainer.states import TrainerFn

    return (
        trainer.state.fn == TrainerFn.FITTING
        and not trainer.sanity_checking
        and not getattr(trainer, "fast_dev_run", False)
    )


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the current training batch (called in ``on_train_batch_end``)."""
    return validation_due(trainer)


class LastCheckpoint(Callback):
    """``last.ckpt`` on its own schedule, independent of any monitored top-k.

    Args:
        dirpath: The checkpoint directory.
        every_n_train_steps: Save every N optimiser steps (None or 0: not by steps).
        every_n_minutes: Save when M minutes of training have passed since the last save (None: not by time).
    """

    FILENAME = "last.ckpt"

    def __init__(
        self, dirpath: Path, every_n_train_steps: int | None = None, every_n_minutes: float | None = None
    ):
        super().__init__()
        self.path = Path(dirpath) / self.FILENAME
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_seconds = None if every_n_minutes is None else 60.0 * every_n_minutes
        self._last_saved_step = -1
        self._last_time = time.monotonic()
        self._after_validation = False
        self._checked_step: int | None = None

    def _due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        # A multiple of N reached since the last check (online RL takes several optimiser steps per batch).
        previous = step - 1 if self._checked_step is None else self._checked_step
        self._checked_step = step
        every = self.every_n_train_steps
        by_steps = every > 0 and step // every > previous // every
        by_time = False
        if self.every_n_seconds is not None:
            # Every rank must take the same decision (the save is collective).
            by_time = bool(
                trainer.strategy.broadcast(time.monotonic() - self._last_time >= self.every_n_seconds)
            )
        return by_steps or by_time

    def save(self, trainer: L.Trainer) -> None:
        if trainer.global_step == self._last_saved_step and self.path.exists():
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, on purpose: it resumes
        self._last_saved_step = trainer.global_step
        self._last_time = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not _fitting(trainer) or should_accumulate(trainer) or not self._due(trainer):
            return
        if validation_follows(trainer):
            # Saved here, a resume would skip this validation: save once it has run.
            self._after_validation = True
        else:
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if _fitting(trainer):
            self._after_validation = False
            # The validation at step 0 (`StartValidation`) leaves nothing to resume: a fresh start redoes it.
            if trainer.global_step > 0:
                # The best-k save of this validation first (Lightning runs checkpoint callbacks last), so
                # last.ckpt records it: a resume from last.ckpt then knows every best-k file on disk. Their
                # hook is idempotent: a second call skips the step it has saved at, or ranks it out again.
                for callback in trainer.checkpoint_callbacks:
                    if isinstance(callback, ModelCheckpoint):
                        callback.on_validation_end(trainer, pl_module)
                self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if _fitting(trainer):
            self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        # Ctrl-C or an error: leave the state to resume from (a non-finite stop saves its own).
        # Nothing to keep before the first step (a config error found at the start, for one).
        if (
            _fitting(trainer)
            and trainer.global_step > 0
            and not getattr(exception, "checkpoint_saved", False)
        ):
            self.save(trainer)


class RunProgress(Callback):
    """What metrics.csv and summary.json need to come out of a resume as if the run had never stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.train_metrics: dict[str, float] = {}
        self.csv_rows: int | None = None
        self.pending_row: dict[str, Any] | None = None
        self._row_pending = False

    @staticmethod
    def _csv_logger(trainer: L.Trainer) -> CSVLogger | None:
        return next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._row_pending = False

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._row_pending = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # Until Lightning logs this step's row (after every on_train_batch_end), a checkpoint precedes it.
        self._row_pending = not should_accumulate(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._row_pending = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        # Resumed at the end (killed during the export, say): the final validation is logged at the last step.
        finish_skipped_restart(trainer)

    def _pending_row(self, trainer: L.Trainer) -> dict[str, Any] | None:
        if not self._row_pending or not step_logs_due(trainer):
            return None
        values = {
            k: float(v)
            for k, v in pending_logged_metrics(trainer).items()
            if isinstance(v, torch.Tensor | float)
        }
        if not values:
            return None
        return {**values, "epoch": trainer.current_epoch, "step": batches_that_stepped(trainer)}

    def state_dict(self) -> dict[str, Any]:
        trainer = self._fit_trainer
        if trainer is not None:
            # Updated, not replaced: a resumed process that trains no further step has none of its own.
            self.train_metrics.update(
                {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
            )
            logger = self._csv_logger(trainer)
            if logger is not None and trainer.is_global_zero:
                logger.save()  # the rows logged so far reach the file before the checkpoint does
                self.csv_rows = len(read_metrics_rows(Path(logger.experiment.metrics_file_path))[1])
                self.pending_row = self._pending_row(trainer)
        return {
            "train_metrics": self.train_metrics,
            "csv_rows": self.csv_rows,
            "pending_row": self.pending_row,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_metrics = dict(state_dict.get("train_metrics") or {})
        self.csv_rows = state_dict.get("csv_rows")
        self.pending_row = state_dict.get("pending_row")

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        self._fit_trainer = trainer

    # Callback.state_dict gets no trainer: the one `setup` saw (rlhf_lab's own attribute, not Lightning's).
    _fit_trainer: L.Trainer | None = None


class FiniteModelCheckpoint(ModelCheckpoint):
    """Lightning's best-k `ModelCheckpoint`, except that a non-finite monitored value is never ranked (a
    diverged run keeps no "best" checkpoint by ``val/loss=NaN``).

    Through the public `ModelCheckpoint.check_monitor_top_k`, which decides whether the monitored value
    enters the top k (Lightning would rank a NaN as the worst value, yet keep it while fewer than k are saved).
    """

    _resumed = False

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not math.isfinite(float(current)):
            return False
        return super().check_monitor_top_k(trainer, current)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # Lightning restores the best-k record only from a checkpoint of this same directory.
        self._resumed = self.dirpath == state_dict.get("dirpath", self.dirpath)

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self.remove_orphans(trainer)  # before a save could take an orphan's name (Lightning would add -v1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.remove_orphans(trainer)  # the best-k file resumed from, if it has dropped out of the best k

    def remove_orphans(self, trainer: L.Trainer) -> list[Path]:
        """After a resume, delete this directory's best-k checkpoints (``step*.ckpt``) the best-k record does
        not hold; rank zero deletes, and nothing is deleted in a fresh run."""
        if not (self._resumed and trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir()):
            return []
        kept = {Path(path).name for path in self.best_k_models}
        orphans = [
            path
            for path in sorted(Path(self.dirpath).iterdir())
            if STEP_NAME.fullmatch(path.name) and path.name not in kept
        ]
        for path in orphans:
            atomic_remove(path)
        return orphans


def validate_within_fit(trainer: L.Trainer) -> None:
    """Run the fit's own validation loop now, as Lightning does after a training batch that validates.

    Lightning has no public "validate during fit" call (``trainer.validate`` inside ``fit`` would reset the
    fit's state); this is what its training epoch loop does, through public names only: the stage flag, the
    fit's validation loop, the stage flag back. Its results reach the loggers (a metrics.csv row at the
    current step) and ``trainer.callback_metrics`` like any validation's. The random state is put back, so
    training draws exactly what it would have drawn without it.
    """
    device = trainer.strategy.root_device
    devices = [device.index or 0] if device.type == "cuda" else []
    trainer.validating = True
    try:
        with torch.random.fork_rng(devices=devices):
            trainer.fit_loop.epoch_loop.val_loop.run()
    finally:
        trainer.training = True


#: How ``summary.json`` names a held-out metric's value at step 0 (``val/loss`` -> ``val_start/loss``).
START_PREFIX = "val_start/"


class StartValidation(Callback):
    """A held-out validation before the first training step (``trainer.val_on_start``, as TRL's
    ``eval_on_start``): logged at step 0, its ``val/`` values kept as the run's starting point.

    The values travel in checkpoints, so a resumed run (which never validates at step 0 again: it is past it)
    still reports them; ``fast_dev_run`` skips the validation. Always in the callbacks, even disabled, so a
    checkpoint's values survive a resume with ``trainer.val_on_start=false``.

    Args:
        enabled: Validate at the start of a fresh (not resumed) fit.
    """

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.start_metrics: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        fresh = trainer.ckpt_path is None and trainer.global_step == 0 and not self.start_metrics
        if not (self.enabled and fresh and _fitting(trainer)):
            return
        validate_within_fit(trainer)
        self.start_metrics = {
            key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")
        }

    def summary_values(self) -> dict[str, float]:
        """The start values as ``summary.json`` keeps them: ``val/loss`` as ``val_start/loss``."""
        return {START_PREFIX + key.removeprefix("val/"): value for key, value in self.start_metrics.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"start_metrics": self.start_metrics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start_metrics = dict(state_dict.get("start_metrics") or {})


def held_out_lines(summary: Mapping[str, Any]) -> list[str]:
    """The final report's held-out metrics, one a line: ``start -> end`` where the summary holds the value at
    step 0 (`StartValidation`), the end value alone otherwise."""
    held_out = sorted((key, value) for key, value in summary.items() if key.startswith("val/"))
    starts = {key: summary.get(START_PREFIX + key.removeprefix("val/")) for key, _ in held_out}
    lines = [
        "held-out metrics (start -> end):"
        if any(v is not None for v in starts.values())
        else "held-out metrics:"
    ]
    for key, value in held_out:
        start = starts[key]
        lines.append(
            f"  {key:<28} {value:.4f}" if start is None else f"  {key:<28} {start:.4f} -> {value:.4f}"
        )
    return lines
