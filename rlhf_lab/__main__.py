"""`python -m rlhf_lab [group=option ...] [key=value ...]`: run one experiment (or a --multirun sweep)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf_lab.config import register_schemas

register_schemas()

# Absolute, so the entry point works however the module is imported (python -m, console script, tests).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # The frozen reference is in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    _quiet_libraries()
    from rlhf_lab.data.formats import DataError
    from rlhf_lab.errors import ConfigError
    from rlhf_lab.train import train

    try:
        if "leaderboard" in cfg:
            # experiment=leaderboard: many runs and a table, not one training run.
            from rlhf_lab.leaderboard import run_leaderboard

            run_leaderboard(cfg)
            return None
        summary = train(cfg)
    except (DataError, ConfigError) as error:
        # The message names the file/row/field or the config key; a traceback would bury it.
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    # What a Hydra sweeper (Optuna) optimises: `optimized_metric` from +hparams_search, else val/loss.
    return summary.get(cfg.get("optimized_metric") or "val/loss")


if __name__ == "__main__":
    main()
