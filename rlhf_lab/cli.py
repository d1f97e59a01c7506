"""What every command-line entry point shares: quiet libraries, and errors reported as one line."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator


def quiet_libraries() -> None:
    """No progress bars or info logs from transformers; no tokenizers fork warning."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # Frozen models (reference, teacher, reward models) are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # The DataModule's sampler resumes mid-epoch itself (it skips what the checkpoint had seen).
    warnings.filterwarnings(
        "ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended"
    )


@contextlib.contextmanager
def reported_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn a bad-input or bad-config error into ``error: <message>`` on stderr and exit status 2.

    The message names the file/row/field or the config key; a traceback would bury it.
    """
    from rlhf_lab.data.formats import DataError
    from rlhf_lab.errors import ConfigError

    caught: tuple[type[BaseException], ...] = (DataError, ConfigError, *extra)
    try:
        yield
    except caught as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def without(overrides: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """``overrides`` less those (``+``/``~`` aside) starting with one of ``prefixes``."""
    return [o for o in overrides if not o.lstrip("+~").startswith(prefixes)]


def command_line_overrides(prefixes: tuple[str, ...]) -> list[str]:
    """This Hydra app's command-line overrides less those starting with ``prefixes`` (what a leaderboard or a
    stage chain passes on to the runs it starts); empty outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    return without(list(HydraConfig.get().overrides.task), prefixes) if HydraConfig.initialized() else []
