"""What every command-line entry point shares: quiet libraries, and errors reported as one line."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator

#: Set to 1 to see the third-party notices `quiet_libraries` hides.
VERBOSE_ENV = "RLHF_LAB_VERBOSE"

#: Third-party log records that say nothing about the run: (logger name, message pattern).
QUIET_LOGS = (
    # LastCheckpoint's save_checkpoint leaves weights_only unset (it saves the full state on purpose).
    ("lightning.pytorch.trainer.connectors.checkpoint_connector", r"`weights_only` was not set"),
    # Lightning's litlogger tip, and what rlhf_lab's run header (device, steps) or final report says better.
    (
        "lightning.pytorch.utilities.rank_zero",
        r"Tip: .*litlogger|^(GPU|TPU) available: |^Loading `train_dataloader` to estimate|^`Trainer.fit` stopped: ",
    ),
    # transformers' save_pretrained imports DeepSpeed whenever it is installed, whatever the strategy.
    ("DeepSpeed", r"Setting accelerator to CPU"),
    # peft imports bitsandbytes, whose CPU backend looks for an optional hub kernel.
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward"),
)

#: Third-party deprecation warnings about code that is not ours: (message pattern, category, module).
QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
    ),
    # peft reads the renamed property.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
)


class QuietLogFilter(logging.Filter):
    """Drops one logger's records whose message matches ``pattern``."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


class ConsoleFormatter(logging.Formatter):
    """The console's log lines: INFO as the bare message, WARNING and above as ``warning: <message>``.

    Hydra's own format (time, logger, level) stays in the run's ``.log`` file.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def verbose() -> bool:
    """Whether ``RLHF_LAB_VERBOSE`` asks for the third-party notices."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_libraries() -> None:
    """No progress bars or info logs from transformers; no tokenizers fork warning; and, unless
    ``RLHF_LAB_VERBOSE=1``, none of the third-party notices in `QUIET_LOGS` and `QUIET_WARNINGS`."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    lightning_prints_once()
    # Frozen models (reference, teacher, reward models) are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # The DataModule's sampler resumes mid-epoch itself (it skips what the checkpoint had seen).
    warnings.filterwarnings(
        "ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended"
    )
    if verbose():
        return
    for message, category, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, pattern in QUIET_LOGS:
        # A filter on the logger itself: these loggers print through handlers of their own.
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietLogFilter) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(QuietLogFilter(pattern))


def lightning_prints_once() -> None:
    """Lightning's messages once, as plain lines (``Seed set to 42``), however late it is imported.

    Imported before Hydra configures logging, Lightning gives ``lightning.pytorch`` and ``lightning.fabric``
    handlers of their own and stops them propagating; imported after (the CLI now imports it late), they
    propagate to both ``lightning``'s ``INFO:`` handler and Hydra's root handler, and every line prints twice.
    """
    import lightning  # noqa: F401 - its import sets up the loggers this puts right

    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logger.propagate:
            logger.addHandler(logging.StreamHandler())
            logger.propagate = False


@contextlib.contextmanager
def reported_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn a bad-input or bad-config error into ``error: <message>`` on stderr and exit status 2.

    The message names the file/row/field or the config key; a traceback would bury it. ``HYDRA_FULL_ERROR=1``
    keeps the traceback, as for Hydra's own config errors (`rlhf_lab.__main__`).
    """
    try:
        yield
    except Exception as error:
        from rlhf_lab.errors import ConfigError, RunStopped, full_traceback_requested

        if full_traceback_requested():
            raise

        # The data layer (and Lightning with it) is imported only for an error that may be its own: a config
        # error found before any training import (an unavailable model) is reported in about a second.
        if not isinstance(error, (ConfigError, RunStopped, *extra)):
            from rlhf_lab.data.formats import DataError

            if not isinstance(error, DataError):
                raise
        # A run stopped for a named reason stops every process alike, with the same message: say it once.
        if not isinstance(error, (RunStopped, *extra)) or process_rank() == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def process_rank() -> int:
    """This process's global rank in a multi-process run (0 outside one)."""
    zero_only = sys.modules.get("lightning_utilities.core.rank_zero")
    rank = getattr(getattr(zero_only, "rank_zero_only", None), "rank", None)
    return int(rank) if rank is not None else int(os.environ.get("RANK", "0"))


def without(overrides: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """``overrides`` less those (``+``/``~`` aside) starting with one of ``prefixes``."""
    return [o for o in overrides if not o.lstrip("+~").startswith(prefixes)]


def command_line_overrides(prefixes: tuple[str, ...]) -> list[str]:
    """This Hydra app's command-line overrides less those starting with ``prefixes`` (what a leaderboard or a
    stage chain passes on to the runs it starts); empty outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    return without(list(HydraConfig.get().overrides.task), prefixes) if HydraConfig.initialized() else []
