"""Load finished runs into DataFrames and plot them: training curves, sweeps, objectives side by side.

    from rlhf_lab import analysis
    runs = analysis.load_runs("multirun/2026-11-22/10-00-00")      # one row per run
    history = analysis.load_history("multirun/2026-11-22/10-00-00")  # one row per (run, step, metric)
    analysis.plot_parameter(runs, "algo.beta", "val/rewards/accuracies", out="beta.png")

Runs are found by their ``summary.json`` or ``metrics.csv``, so a path may be one run directory, a Hydra
multirun directory, a leaderboard directory or any folder holding run directories. Column names follow
the run: config keys flattened with dots (``algo.beta``), metrics named as logged (``val/loss``).
Figures are built on `matplotlib.figure.Figure` (no pyplot state), so plotting works in a training
process, a notebook or a headless test alike.

The package: `rlhf_lab.analysis.runs` (local runs and histories, leaderboard tables),
`rlhf_lab.analysis.wandb_runs` (W&B runs), `rlhf_lab.analysis.stats` (means and CIs) and
`rlhf_lab.analysis.figures`; every public name is importable from here.
"""

from rlhf_lab.analysis.figures import (
    RUN_PANELS,
    plot_curves,
    plot_leaderboard,
    plot_objectives,
    plot_parameter,
    plot_run_curves,
    run_curves_figure,
    run_starts,
)
from rlhf_lab.analysis.runs import (
    RUN_MARKERS,
    find_run_dirs,
    flatten,
    is_run_dir,
    load_history,
    load_leaderboard,
    load_runs,
    objective_from_algo,
    objective_name,
)
from rlhf_lab.analysis.stats import ci_method, mean_ci, summarize
from rlhf_lab.analysis.wandb_runs import load_wandb_runs

__all__ = [
    "RUN_MARKERS",
    "RUN_PANELS",
    "ci_method",
    "find_run_dirs",
    "flatten",
    "is_run_dir",
    "load_history",
    "load_leaderboard",
    "load_runs",
    "load_wandb_runs",
    "mean_ci",
    "objective_from_algo",
    "objective_name",
    "plot_curves",
    "plot_leaderboard",
    "plot_objectives",
    "plot_parameter",
    "plot_run_curves",
    "run_curves_figure",
    "run_starts",
    "summarize",
]
