"""`python -m rlhf_lab [group=option ...] [key=value ...]`: run one experiment (or a --multirun sweep).

The config groups ship inside the package (`pkg://rlhf_lab.conf`), so the installed `rlhf-lab` command works
from any directory. Add your own options without copying ours: `--config-dir DIR` (or
`hydra.searchpath=[file:///abs/DIR]`) with e.g. `DIR/algo/my_dpo.yaml`, then `algo=my_dpo`.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from rlhf_lab.config import (
    CONF_SEARCH_PATH,
    USER_CONFIG_DIRS_ENV,
    config_groups_help,
    register_schemas,
    user_config_dirs,
)

register_schemas()
# A user's config directory (--config-dir, hydra.searchpath) may hold options with schemas of their own.
_user_dirs = user_config_dirs(sys.argv[1:])
if _user_dirs:
    from rlhf_lab.cli import reported_errors

    with reported_errors():
        for _user_dir in _user_dirs:
            register_schemas(_user_dir)
    # Child runs (stages, the leaderboard, sweeps) look in the same directories (`rlhf_lab.launch`).
    os.environ[USER_CONFIG_DIRS_ENV] = os.pathsep.join(map(str, _user_dirs))
# `--help` lists the option groups from rlhf_lab/conf itself (Hydra's own list would include the schema/* groups).
OmegaConf.register_new_resolver("rlhf_lab_config_groups", config_groups_help, replace=True)


@hydra.main(version_base="1.3", config_path=CONF_SEARCH_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from rlhf_lab.cli import quiet_libraries, reported_errors
    from rlhf_lab.objectives.base import NonFiniteError

    quiet_libraries()
    with reported_errors(NonFiniteError):
        if "leaderboard" in cfg:
            # experiment=leaderboard: many runs and a table, not one training run.
            from rlhf_lab.leaderboard import run_leaderboard

            run_leaderboard(cfg)
            return None
        if cfg.get("stages"):
            # experiment=sft_then_<objective>: one run per stage, each from the previous stage's export.
            from rlhf_lab.stages import run_stages

            summary = run_stages(cfg)
            return summary.get(cfg.get("optimized_metric") or "val/loss")
        from rlhf_lab.train import train

        summary = train(cfg)
    # What a Hydra sweeper (Optuna) optimises: `optimized_metric` from +hparams_search, else val/loss.
    return summary.get(cfg.get("optimized_metric") or "val/loss")


if __name__ == "__main__":
    main()
