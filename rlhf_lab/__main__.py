"""`python -m rlhf_lab [group=option ...] [key=value ...]`: run one experiment (or a --multirun sweep).

The config groups ship inside the package (`pkg://rlhf_lab.conf`), so the installed `rlhf-lab` command works
from any directory. Add your own options without copying ours: `--config-dir DIR` (or
`hydra.searchpath=[file:///abs/DIR]`) with e.g. `DIR/algo/my_dpo.yaml`, then `algo=my_dpo`.
"""

from __future__ import annotations

import functools
import os
import string
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from rlhf_lab.config import (
    CONF_SEARCH_PATH,
    USER_CONFIG_DIRS_ENV,
    config_groups_help,
    register_schemas,
    user_config_dirs,
)
from rlhf_lab.errors import (
    config_error_message,
    full_traceback_requested,
    missing_value_in,
    run_dir_error_message,
)


def _hydra_choices() -> dict[str, str | None]:
    """The ``group -> option`` this command line selects (``algo -> dpo``), as Hydra resolves its defaults."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    args = get_args_parser().parse_args(sys.argv[1:])
    if args.multirun:
        return {}  # each job has its own (algo=sft,dpo): the message names the node alone
    loader = GlobalHydra.instance().config_loader()
    defaults = loader.compute_defaults_list(args.config_name or "config", args.overrides, RunMode.RUN)
    return dict(defaults.overrides.known_choices)


def _report_config_errors() -> None:
    """Hydra's config errors (an unknown key or option, a malformed override, a bad value) as one ``error:``
    line and exit status 2, like `rlhf_lab.cli.reported_errors`; ``HYDRA_FULL_ERROR=1`` still gives the
    traceback. Everything else keeps Hydra's own report (a training error's traceback)."""
    import hydra._internal.utils as hydra_internal
    from hydra._internal.hydra import Hydra
    from hydra.errors import ConfigCompositionException, OverrideParseException

    hydra_report = hydra_internal.run_and_report
    if getattr(hydra_report, "reports_config_errors", False):
        return  # this module ran before in this process (a test's runpy)

    def run_and_report(func: Any) -> Any:
        def reported() -> Any:
            try:
                return func()
            except (ConfigCompositionException, OverrideParseException) as error:
                if full_traceback_requested():
                    raise
                print(f"error: {config_error_message(error, _hydra_choices)}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            except OSError as error:
                if full_traceback_requested() or _raised_by_the_run(error):
                    raise
                # Hydra could not create the run directory or write its .hydra/ files and log there.
                print(f"error: {run_dir_error_message(error)}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None

        return hydra_report(reported)

    # Hydra wraps each step of a command (composition, --cfg, the run itself) in its own `run_and_report`;
    # --help and --info it calls bare.
    run_and_report.reports_config_errors = True  # type: ignore[attr-defined]
    hydra_internal.run_and_report = run_and_report
    for name in ("app_help", "show_info"):
        setattr(Hydra, name, functools.partialmethod(_reported_method, getattr(Hydra, name), run_and_report))
    Hydra.get_help = functools.partialmethod(_help_text, Hydra.get_help)  # type: ignore[method-assign,assignment]


def _raised_by_the_run(error: BaseException) -> bool:
    """Whether ``error`` came from the run itself (this module's `main`), not from Hydra setting up its job."""
    traceback = error.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if code.co_filename == __file__ and code.co_name in ("main", "run_experiment"):
            return True
        traceback = traceback.tb_next
    return False


def _reported_method(self: Any, method: Any, run_and_report: Any, *args: Any, **kwargs: Any) -> Any:
    return run_and_report(lambda: method(self, *args, **kwargs))


def _help_text(
    self: Any, hydra_get_help: Any, help_cfg: Any, cfg: Any, args_parser: Any, resolve: bool
) -> str:
    """Hydra's `get_help`, without listing every config group when the help template shows none: Hydra lists
    them whether shown or not, at one copy of the whole config repository per group (seconds, with our
    schemas). Ours (conf/hydra/help) lists the groups itself."""
    if "CONFIG_GROUPS" in help_cfg.template:
        return str(hydra_get_help(self, help_cfg, cfg, args_parser, resolve))
    return string.Template(help_cfg.template).substitute(
        FLAGS_HELP=self.format_args_help(args_parser), CONFIG=OmegaConf.to_yaml(cfg, resolve=resolve)
    )


_report_config_errors()
# The schemas come from the schema cache (`rlhf_lab.config.schema_specs`) unless a source changed: `--help`
# or a typo'd key is reported without importing torch and Lightning.
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
    try:
        return run_experiment(cfg)
    except Exception as error:
        # A ??? value the run reads before anything checks it (strategy=deepspeed's config_path).
        missing = missing_value_in(error)
        if missing is None or full_traceback_requested():
            raise
        print(f"error: {config_error_message(missing)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run_experiment(cfg: DictConfig) -> float | None:
    """One experiment, a stage chain or a leaderboard, as ``cfg`` says; returns the optimised metric."""
    from rlhf_lab.cli import quiet_libraries, reported_errors

    if "leaderboard" not in cfg and not cfg.get("stages"):
        from rlhf_lab.preflight import preflight

        # Before Lightning and the data layer are imported: an unavailable model is reported in seconds.
        with reported_errors():
            preflight(cfg)
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
