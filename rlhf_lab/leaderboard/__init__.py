"""``experiment=leaderboard`` and ``experiment=suite``: objectives x tasks x seeds on one budget, as one table.

Each run trains in its own process (``python -m rlhf_lab algo=<o> seed=<s> <task's overrides> ...``, started by
`rlhf_lab.launch.run_child`, so one run's failure or memory cannot touch the next) in its own run directory
under ``<run dir>/runs``: finished runs are kept when the leaderboard runs again in the same directory, and an
interrupted one resumes from its last checkpoint.

Tuned as the SimPO paper tunes its baselines: where ``leaderboard.grid`` gives an objective hyperparameter
values, every setting trains on the first ``tune_seeds`` seeds, the setting with the best mean validation
``select`` metric is kept, and only it trains on the other seeds. The kept runs are then evaluated once on
the report split (the task's test split where its source has one, else the validation split), greedily
sampled there, and aggregated per (task, objective):

- accuracy: ``<split>/rewards/accuracies``, each objective's own implicit reward (the reward model's score)
  preferring the chosen completion; mean and confidence interval over seeds;
- p vs DPO: a paired t-test of accuracy against DPO's on the same task and seeds;
- rank: 1 + the number of objectives whose interval lies wholly above this one's (overlapping: tied);
- reward margin on each objective's own scale (compare within a row), greedy completion length (mean tokens,
  EOS excluded), training tokens/s and wall time per run.

Written to the run directory: ``leaderboard.md``, ``leaderboard.csv`` (one row per task and objective),
``runs.csv`` (one row per run, tuning runs included), ``heatmap.png`` (objective x task) and, for one task,
``leaderboard.png`` (a bar per objective). `rlhf_lab.analysis.load_leaderboard` reads them back.

Where the runs start (``leaderboard.start``): the command line's model (``scratch``), or per task one SFT
model trained on the task's chosen answers (``sft``, experiment=suite), from whose export every objective run
on the task starts and which is its reference (`rlhf_lab.leaderboard.start`). On suite tasks (verifiable
answers) the greedy completions are also scored: the share giving the right answer, ``generation accuracy``.

The parts: `plan` (which runs, their command lines), `start` (the SFT starts), `run` (training and evaluating
them), `stats` (the numbers), `report` (the tables and files). ``python -m rlhf_lab.leaderboard [overrides]`` is
``python -m rlhf_lab experiment=leaderboard [overrides]``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rlhf_lab.cli import command_line_overrides
from rlhf_lab.leaderboard.plan import (
    NOT_FORWARDED,
    Job,
    forwardable,
    grid_settings,
    job_name,
    plan,
    setting_label,
    tasks,
    tune_seeds,
)
from rlhf_lab.leaderboard.report import markdown, overview, write_report
from rlhf_lab.leaderboard.resumable import ChildFailed, DirectoryInUse, directory_lock, run_finished
from rlhf_lab.leaderboard.run import (
    TIMING_FILE,
    diverged,
    evaluate_all,
    failures,
    report_split,
    succeeded,
    train_all,
    train_one,
)
from rlhf_lab.leaderboard.start import (
    STARTS,
    Start,
    describe_starts,
    evaluate_starts,
    plan_starts,
    start_mode,
    train_starts,
)
from rlhf_lab.leaderboard.stats import (
    BASELINE,
    COLUMNS,
    choose_settings,
    collect,
    paired_p_value,
    ranks,
    table,
)

__all__ = [
    "BASELINE",
    "COLUMNS",
    "NOT_FORWARDED",
    "STARTS",
    "TIMING_FILE",
    "ChildFailed",
    "DirectoryInUse",
    "Job",
    "Start",
    "choose_settings",
    "collect",
    "describe_starts",
    "directory_lock",
    "diverged",
    "evaluate_all",
    "evaluate_starts",
    "failures",
    "forwardable",
    "grid_settings",
    "job_name",
    "markdown",
    "overview",
    "paired_p_value",
    "plan",
    "plan_starts",
    "ranks",
    "report_split",
    "run_finished",
    "run_leaderboard",
    "setting_label",
    "start_mode",
    "succeeded",
    "table",
    "tasks",
    "train_all",
    "train_one",
    "train_starts",
    "tune_seeds",
    "write_report",
]


def run_leaderboard(cfg: DictConfig) -> pd.DataFrame:
    """Train (tuning first), choose, evaluate once on the report split, write the tables; returns the table.

    One leaderboard at a time per directory (`directory_lock`). A run that fails is named in one line as it
    fails, counted as failed in the table, and, once the table is written, named again in a `ChildFailed`
    error (exit status 2): running the same command again retrains only what did not finish.
    """
    out_dir = Path(cfg.paths.run_dir)
    start_mode(cfg.leaderboard)  # a wrong start named before anything trains
    with directory_lock(out_dir, "leaderboard"):
        result, failed = _run_leaderboard(cfg, out_dir)
    if failed:
        more = f" (and {len(failed) - 1} more, above)" if len(failed) > 1 else ""
        raise ChildFailed(
            f"leaderboard: {len(failed)} run(s) failed, counted as failed in {out_dir / 'leaderboard.md'}: "
            f"{failed[0]}{more}; run the same command again to retry them"
        )
    return result


def _run_leaderboard(cfg: DictConfig, out_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    board = cfg.leaderboard
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(board, out_dir / "leaderboard.yaml", resolve=True)
    forwarded = command_line_overrides(NOT_FORWARDED)
    parallel, rerun = int(board.get("max_parallel", 1)), bool(board.get("rerun", False))
    select, mode = str(board.get("select", "val/rewards/accuracies")), str(board.get("mode", "max"))
    starts = plan_starts(cfg, forwarded)
    train_starts(starts, out_dir, parallel)
    start_overrides = {task: start.overrides for task, start in starts.items()}
    tuning = plan(cfg, out_dir, forwarded, starts=start_overrides)
    codes = train_all(tuning, parallel, rerun, select)
    jobs = plan(cfg, out_dir, forwarded, choose_settings(tuning, codes, select, mode), start_overrides)
    codes.update(train_all([job for job in jobs if job.name not in codes], parallel, rerun, select))
    evaluate_all(jobs, codes, int(board.samples), int(board.max_new_tokens))
    finished = [job for job in jobs if succeeded(job, codes)]
    split = report_split(finished[0]) if finished else "val"
    evaluate_starts(starts, out_dir, int(board.samples), int(board.max_new_tokens), split)
    # Every run once (a tuning run of the chosen point is also a reported one); the reported ones are chosen.
    everything = collect(list({job.name: job for job in [*tuning, *jobs]}.values()), codes, split)
    everything["chosen"] = everything["run_dir"].isin([str(job.run_dir) for job in jobs])
    confidence = float(board.get("confidence", 0.95))
    result = table(everything[everything["chosen"]], jobs, codes, confidence, split)
    text = write_report(
        out_dir, result, everything, confidence, int(board.samples), split, describe_starts(starts, split)
    )
    print(f"leaderboard: {out_dir.resolve()}\n{text}", flush=True)
    return result, failures(list({job.name: job for job in [*tuning, *jobs]}.values()), codes)
