"""The one place rlhf_lab reads Lightning's private internals.

rlhf_lab makes a run resumable at any moment with the log rows and validations of an uninterrupted run. Some
of what that needs Lightning decides privately: whether the current batch steps the optimiser, whether a
validation follows it, which row the loggers receive after ``on_train_batch_end``. Every such read (and every
override of a private Lightning method) is a named function or class here, with what it reads and why no
public hook serves; nothing else in rlhf_lab touches an underscore name of Lightning's
(``tests/test_lightning_compat.py`` audits that, and pins each function's meaning against a real `Trainer`).

Lightning is pinned to ``>=2.6,<2.7`` (pyproject.toml) because of this module: **it is the one place to
update when raising the pin**. Run ``tests/test_lightning_compat.py`` against the new version; a renamed
private method fails at import with a `LightningCompatError` naming the Lightning version, a renamed private
attribute fails the first read of it the same way, and a changed meaning fails that test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import lightning
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loops import _FitLoop, _TrainingEpochLoop
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector

if TYPE_CHECKING:
    import lightning as L

SUPPORTED = ">=2.6,<2.7"

T = TypeVar("T")


class LightningCompatError(ImportError):
    """The installed Lightning no longer has a private name rlhf_lab reads (or overrides)."""


def _gone(what: str) -> LightningCompatError:
    return LightningCompatError(
        f"lightning {lightning.__version__} has no {what}, which rlhf_lab reads (supported: lightning{SUPPORTED}); "
        "update rlhf_lab/lightning_compat.py for this version, or install a supported one"
    )


def _require(owner: type, name: str) -> None:
    """Fail at import when a private method (or property) rlhf_lab calls or overrides is gone."""
    if getattr(owner, name, None) is None:
        raise _gone(f"{owner.__module__}.{owner.__qualname__}.{name}")


def _read(obj: Any, name: str) -> Any:
    """A private attribute of a Lightning object (set in its ``__init__``, so unknowable at import)."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _gone(f"{type(obj).__module__}.{type(obj).__qualname__}.{name}") from None


# Every private Lightning name this module reads or overrides (the audit test keeps them out of the rest of
# rlhf_lab).
PRIVATE_NAMES = frozenset(
    {
        "_should_accumulate",
        "_should_check_val_fx",
        "_data_fetcher",
        "_batches_that_stepped",
        "_logger_connector",
        "_experiment",
        "_offline",
        "_wandb_init",
        "_check_log_dir_exists",
        "_rewrite_with_new_header",
        "_init_deepspeed_distributed",
        "_setup_model_and_optimizer",
        "_results",
    }
)

_require(_FitLoop, "_should_accumulate")
_require(_TrainingEpochLoop, "_should_check_val_fx")
_require(_LoggerConnector, "should_update_logs")
_require(_LoggerConnector, "metrics")
_require(ExperimentWriter, "_check_log_dir_exists")
_require(ExperimentWriter, "_rewrite_with_new_header")
_require(DeepSpeedStrategy, "_init_deepspeed_distributed")
_require(DeepSpeedStrategy, "_setup_model_and_optimizer")


# --- The training loop, read from callbacks during ``fit`` ---------------------------------------------------


def should_accumulate(trainer: L.Trainer) -> bool:
    """Whether the current training batch only accumulates gradients: no optimiser step, no logged row, no
    advance of `batches_that_stepped` (valid from ``on_train_batch_start`` to ``on_train_batch_end``).

    Reads ``trainer.fit_loop._should_accumulate()``: Lightning's own decision (``accumulate_grad_batches``,
    the last batch of an epoch always stepping, a strategy that accumulates by itself), with no public
    query. `trainer.global_step` cannot stand in for it: it counts optimiser steps, several per batch under
    manual optimisation (online RL), while Lightning's logging and checkpoint bookkeeping count batches.
    """
    return bool(trainer.fit_loop._should_accumulate())


def validation_due(trainer: L.Trainer) -> bool:
    """Whether Lightning runs a validation right after the current training batch (ask in
    ``on_train_batch_end``).

    Reads ``trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)``. Lightning
    offers no public "validation follows" query, and reproducing its rule (``val_check_interval`` in batches,
    fractions or time, ``check_val_every_n_epoch``, the epoch's last batch, an early stop) would drift from it.
    """
    loop = trainer.fit_loop
    fetcher = _read(loop, "_data_fetcher")
    return bool(
        trainer.enable_validation and fetcher is not None and loop.epoch_loop._should_check_val_fx(fetcher)
    )


def batches_that_stepped(trainer: L.Trainer) -> int:
    """The ``step`` Lightning gives the loggers for the current training batch's row (the number of stepping
    batches before it; it advances after ``on_train_batch_end`` and the validation that may follow).

    Reads ``trainer.fit_loop.epoch_loop._batches_that_stepped``: `trainer.global_step` counts optimiser steps
    instead (several per batch for online RL) and is already advanced at ``on_train_batch_end``.
    """
    return int(_read(trainer.fit_loop.epoch_loop, "_batches_that_stepped"))


def step_logs_due(trainer: L.Trainer) -> bool:
    """Whether Lightning writes the current training batch's metrics to the loggers once
    ``on_train_batch_end`` returns (``log_every_n_steps``, a requested stop, ``fast_dev_run``), provided the
    batch steps (`should_accumulate` is False).

    Reads ``trainer._logger_connector.should_update_logs``: the rule that `Trainer.log_every_n_steps` feeds
    has no public query.
    """
    connector = _read(trainer, "_logger_connector")
    return bool(connector.should_update_logs or trainer.fast_dev_run)  # type: ignore[attr-defined]


def pending_logged_metrics(trainer: L.Trainer) -> dict[str, Any]:
    """The step-level metrics the current training batch has logged (``self.log(..., logger=True)``), as
    Lightning will write them to the loggers after ``on_train_batch_end`` (ask in that hook or in a
    checkpoint's ``state_dict`` saved from it).

    Reads ``trainer._logger_connector.metrics["log"]``; the public `Trainer.logged_metrics` merges them into
    everything logged before (epoch-level and validation metrics included), so it cannot tell this row apart.
    """
    connector = _read(trainer, "_logger_connector")
    return dict(connector.metrics["log"])


def batches_processed_this_epoch(trainer: L.Trainer) -> int:
    """Training batches of the current epoch whose step has run (during ``on_train_batch_end`` the current
    batch counts); restored from a checkpoint, so a resumed data loader skips exactly these.

    Reads ``trainer.fit_loop.epoch_loop.batch_progress.current.processed``: public attribute names, but on
    Lightning's private loop classes (``_FitLoop``, ``_TrainingEpochLoop``), and what "processed" means around
    a checkpoint written in ``on_train_batch_end`` (counted; "completed" is not) is Lightning's internal
    bookkeeping. No public counter is restored mid-epoch.
    """
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # type: ignore[attr-defined]


def finish_skipped_restart(trainer: L.Trainer) -> None:
    """After a fit resumed from a checkpoint of its last step written inside the epoch (after the last batch
    or its validation: a best-k checkpoint, say), with nothing left to train: set the loggers' step
    (`batches_that_stepped`) and the epoch to what an uninterrupted run has at its end (call in
    ``on_fit_end``); a no-op after any other fit.

    Lightning advances ``_batches_that_stepped`` past a batch after its ``on_train_batch_end`` and its
    validation (so a checkpoint written there holds the value before), and a resumed epoch loop makes up for
    it; then ``max_steps`` (or the last batch) closes the epoch (``epoch_progress`` processed and completed). A
    fit resumed at its end runs neither, so the final validation would be logged one step and one epoch early.
    This makes up for both, once: the fit loop is still ``restarting`` only when no iteration ran.
    """
    fit_loop = trainer.fit_loop
    epoch = fit_loop.epoch_progress
    if not fit_loop.restarting:
        return
    current: Any = epoch.current  # a `_StartedTracker` (typed as its base)
    if current.processed < current.started:  # written inside the epoch
        if not should_accumulate(trainer):
            fit_loop.epoch_loop._batches_that_stepped = batches_that_stepped(trainer) + 1
        epoch.increment_processed()
    if current.completed < current.processed:
        epoch.increment_completed()
    fit_loop.restarting = False


def forget_step_values(trainer: L.Trainer, names: set[str] | None = None) -> None:
    """Drop the step-level values (``self.log(..., on_step=True, on_epoch=False)``) earlier training batches
    logged, all of them or those ``names``, so the current batch's row holds only what it logs itself.

    Lightning keeps a step value (in ``trainer._results``) until the epoch ends and writes it into every
    later row that does not log that name again: a step that logs no loss (skipped for a NaN) would repeat
    the previous step's. Resetting a value is what Lightning does to all of them at an epoch's end; the next
    ``self.log`` of the name sets it again.
    """
    results = _read(trainer, "_results")
    if results is None:
        return
    for metric in results.values():
        meta = metric.meta
        if meta.on_step and not meta.on_epoch and (names is None or meta.name in names):
            metric.reset()


# --- LightningModule -------------------------------------------------------------------------------------------


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The `Trainer` a LightningModule is attached to, or None (built outside ``fit``, or in a unit test).

    Replaces ``module._trainer``: the public `LightningModule.trainer` raises a RuntimeError when no trainer
    is attached, which this turns into None.
    """
    try:
        return module.trainer
    except RuntimeError:
        return None


# --- Loggers ----------------------------------------------------------------------------------------------------


def cached_experiment(logger: Any, create: Callable[[], T]) -> T:
    """A Lightning logger's experiment object, made with ``create`` on first use and kept where Lightning's own
    methods (``finalize``, ``save``, ``log_metrics``) look for it.

    Reads and writes ``logger._experiment``: overriding `Logger.experiment` (to make the experiment a
    subclass) has no public place to keep the result that Lightning's other methods read.
    """
    experiment = _read(logger, "_experiment")
    if experiment is None:
        experiment = create()
        logger._experiment = experiment
    return experiment  # type: ignore[no-any-return]


def wandb_run_started(logger: WandbLogger) -> bool:
    """Whether a `WandbLogger` holds its W&B run already (``experiment`` was read).

    Reads ``logger._experiment``: ``logger.experiment`` would start the run.
    """
    return _read(logger, "_experiment") is not None


def wandb_offline(logger: WandbLogger) -> bool:
    """Whether a `WandbLogger` starts (or started) its run offline. Reads ``logger._offline`` (the
    constructor's ``offline``, which Lightning keeps no public copy of)."""
    return bool(_read(logger, "_offline"))


def switch_wandb_offline(logger: WandbLogger) -> None:
    """Make a `WandbLogger` whose online run failed to start start it offline on the next ``experiment``.

    Writes ``logger._offline``, ``logger._wandb_init["mode"]`` (the keywords Lightning passes to
    ``wandb.init``) and clears ``logger._experiment``: a `WandbLogger`'s mode is fixed at construction, and
    the logger is already in the trainer, so it cannot be replaced by an offline one.
    """
    _read(logger, "_wandb_init")["mode"] = "offline"
    logger._offline = True
    logger._experiment = None


class ExperimentWriterHooks(ExperimentWriter):
    """Lightning's CSV `ExperimentWriter` with its two private steps behind public names, for subclasses.

    - `prepare_metrics_file` (Lightning's ``_check_log_dir_exists``, called by ``__init__``): Lightning warns
      and deletes an existing metrics.csv there.
    - `rewrite_metrics_file` (Lightning's ``_rewrite_with_new_header``, called by ``save`` when a new column
      appears): Lightning rewrites the file in place.

    No public hook covers either (the writer is built inside `CSVLogger.experiment`); the names are checked
    at import.
    """

    def prepare_metrics_file(self) -> None:
        super()._check_log_dir_exists()

    def rewrite_metrics_file(self, fieldnames: list[str]) -> None:
        super()._rewrite_with_new_header(fieldnames)

    def _check_log_dir_exists(self) -> None:
        self.prepare_metrics_file()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self.rewrite_metrics_file(fieldnames)


# --- Strategies -----------------------------------------------------------------------------------------------


def init_deepspeed_distributed(strategy: DeepSpeedStrategy) -> None:
    """Start DeepSpeed's process group the way `DeepSpeedStrategy.setup_distributed` does (for a subclass that
    replaces ``setup_distributed``).

    Calls ``strategy._init_deepspeed_distributed()``: the process-group start is not public on its own.
    """
    strategy._init_deepspeed_distributed()


class DeepSpeedEngineHook(DeepSpeedStrategy):
    """Lightning's `DeepSpeedStrategy` with the private ``_setup_model_and_optimizer`` (where
    ``deepspeed.initialize`` is called) behind the public name `initialize_engine`, for subclasses.

    No public hook builds the engine (a subclass that must call ``deepspeed.initialize`` differently, e.g. on
    DeepSpeed's CPU accelerator, overrides `initialize_engine`); the name is checked at import.
    """

    def initialize_engine(self, model: Any, optimizer: Any, lr_scheduler: Any = None) -> Any:
        return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)

    def _setup_model_and_optimizer(self, model: Any, optimizer: Any, lr_scheduler: Any = None) -> Any:
        return self.initialize_engine(model, optimizer, lr_scheduler)
