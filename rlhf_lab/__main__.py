"""`python -m rlhf_lab [group=option ...] [key=value ...]`: run one experiment (or a --multirun sweep)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from rlhf_lab.config import CONF_DIR, config_groups_help, register_schemas

register_schemas()
# `--help` lists the option groups from conf/ itself (Hydra's own list would include the schema/* groups).
OmegaConf.register_new_resolver("rlhf_lab_config_groups", config_groups_help, replace=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
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
