"""``experiment=leaderboard`` and ``experiment=suite``: objectives x tasks x seeds on one budget, as one table.

Each run trains in its own process (``python -m rlhf_lab algo=<o> seed=<s> <task's overrides> ...``, so one
run's failure or memory cannot touch the next) in its own run directory under ``<run dir>/runs``: finished
runs are kept when the leaderboard runs again in the same directory, and an interrupted one resumes from
its last checkpoint.

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
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rlhf_lab import analysis
from rlhf_lab.cli import command_line_overrides, without
from rlhf_lab.errors import ConfigError

log = logging.getLogger(__name__)

#: Table columns: CSV name -> (metric in the per-run frame, markdown header, digits). ``{split}`` is the
#: report split.
COLUMNS: dict[str, tuple[str, str, int]] = {
    "accuracy": ("{split}/rewards/accuracies", "{split} accuracy", 3),
    "margin": ("{split}/rewards/margins", "reward margin", 3),
    "completion_tokens": ("generation/mean_new_tokens", "completion length (tokens)", 1),
    "tokens_per_sec": ("tokens_per_sec", "tokens/s", 0),
    "wall_time_s": ("wall_time_s", "wall time (s)", 0),
}
# Overrides of the leaderboard's own command line that do not go to the runs: the leaderboard sets them.
NOT_FORWARDED = ("leaderboard.", "experiment=", "hydra.", "seed=", "algo=", "+leaderboard", "~leaderboard")
TIMING_FILE = "wall_time.json"
BASELINE = "dpo"


@dataclass
class Job:
    """One training run of the leaderboard.

    Attributes:
        objective: The objective's entry name (a ``conf/algo`` option or a ``leaderboard.variants`` name).
        seed: The run's seed.
        run_dir: Its run directory.
        command: The training command line.
        task: The task's name (``""``: the command line's data, the only task).
        setting: The hyperparameters of this grid point (``{}``: the objective's defaults).
    """

    objective: str
    seed: int
    run_dir: Path
    command: list[str]
    task: str = ""
    setting: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return job_name(self.task, self.objective, self.setting, self.seed)

    @property
    def setting_label(self) -> str:
        return setting_label(self.setting)


def setting_label(setting: dict[str, Any]) -> str:
    """``algo.beta=0.1,algo.gamma=0.5`` (``defaults`` for no grid)."""
    return ",".join(f"{key}={value}" for key, value in setting.items()) or "defaults"


def job_name(task: str, objective: str, setting: dict[str, Any], seed: int) -> str:
    """``dpo_s0``; ``in_context/dpo_s0`` with a task; ``in_context/dpo_beta-0.1_s0`` with a grid point (no
    ``=``: the name goes into a ``hydra.run.dir=`` override)."""
    point = "_".join(f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in setting.items())
    leaf = f"{objective}_{point}_s{seed}" if point else f"{objective}_s{seed}"
    return f"{task}/{leaf}" if task else leaf


def forwardable(overrides: list[str]) -> list[str]:
    """The overrides that apply to every run: all but ``algo=``, ``seed=``, ``experiment=``, ``hydra.*``..."""
    return without(overrides, NOT_FORWARDED)


def _entries(board: DictConfig) -> dict[str, list[str]]:
    """Each objective entry's overrides that pick its objective: ``algo=<name>``, or its variant's."""
    known = {path.stem for path in (Path(__file__).resolve().parent.parent / "conf" / "algo").glob("*.yaml")}
    variants = {str(k): [str(o) for o in v] for k, v in (board.get("variants") or {}).items()}
    for name, overrides in variants.items():
        algos = [o.partition("=")[2] for o in overrides if o.startswith("algo=")]
        if len(algos) != 1 or algos[0] not in known:
            raise ConfigError(
                f"leaderboard.variants.{name}={overrides}: a variant needs exactly one algo=<objective>, "
                f"from {sorted(known)}"
            )
    unknown = [str(o) for o in board.objectives if str(o) not in known and str(o) not in variants]
    if unknown:
        raise ConfigError(
            f"leaderboard.objectives: unknown {unknown}; choose from {sorted(known)} or a leaderboard.variants "
            f"name ({sorted(variants) or 'none defined'})"
        )
    return {str(o): variants.get(str(o), [f"algo={o}"]) for o in board.objectives}


def grid_settings(board: DictConfig, objective: str) -> list[dict[str, Any]]:
    """The objective's grid points (``leaderboard.grid.<objective>``: key -> values), in order; ``[{}]``
    without a grid."""
    grid = (board.get("grid") or {}).get(objective) or {}
    keys = [str(key) for key in grid]
    for key in keys:
        values = grid[key]
        if not (OmegaConf.is_list(values) or isinstance(values, list)) or not len(values):
            raise ConfigError(
                f"leaderboard.grid.{objective}.{key}={values!r}: give a non-empty list of values"
            )
    return [
        dict(zip(keys, point, strict=True)) for point in itertools.product(*(list(grid[k]) for k in keys))
    ]


def tasks(board: DictConfig) -> dict[str, list[str]]:
    """Task name -> its overrides; ``{"": []}`` (the command line's data) without ``leaderboard.tasks``."""
    configured = board.get("tasks") or {}
    named = {str(name): [str(o) for o in overrides or []] for name, overrides in configured.items()}
    return named or {"": []}


def tune_seeds(board: DictConfig) -> list[int]:
    """The seeds every grid point trains on (the first ``tune_seeds`` of ``seeds``)."""
    count = int(board.get("tune_seeds", 1))
    if count < 1:
        raise ConfigError(f"leaderboard.tune_seeds={count} must be at least 1")
    return [int(seed) for seed in list(board.seeds)[:count]]


def plan(
    cfg: DictConfig,
    out_dir: Path,
    forwarded: list[str],
    chosen: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> list[Job]:
    """The jobs, objectives in the configured order within each task.

    Without ``chosen``: every grid point on the tuning seeds, and (objectives without a grid) every seed.
    With ``chosen`` (``(task, objective) -> setting``): the chosen setting on every seed.
    """
    board = cfg.leaderboard
    entries = _entries(board)
    if not board.seeds:
        raise ConfigError("leaderboard.seeds is empty")
    per_objective = board.get("overrides") or {}
    tuning = tune_seeds(board)
    jobs = []
    for task, task_overrides in tasks(board).items():
        for objective, picks in entries.items():
            settings = grid_settings(board, objective)
            for setting in settings if chosen is None else [chosen[(task, objective)]]:
                for seed in [int(s) for s in board.seeds]:
                    if chosen is None and len(settings) > 1 and seed not in tuning:
                        continue
                    run_dir = out_dir / "runs" / job_name(task, objective, setting, seed)
                    command = [
                        sys.executable,
                        "-m",
                        "rlhf_lab",
                        *picks,
                        f"seed={seed}",
                        *forwarded,
                        *task_overrides,
                        *[str(o) for o in board.get("shared_overrides") or []],
                        *[str(o) for o in per_objective.get(objective) or []],
                        *[f"{key}={value}" for key, value in setting.items()],
                        f"hydra.run.dir={run_dir}",
                    ]
                    jobs.append(Job(objective, seed, run_dir, command, task, dict(setting)))
    return jobs


def train_all(jobs: list[Job], max_parallel: int = 1, rerun: bool = False) -> dict[str, int]:
    """Run the jobs' training processes, ``max_parallel`` at a time; returns each job's exit code.

    A job whose run directory already holds ``summary.json`` is skipped (exit code 0) unless ``rerun``; one
    with checkpoints but no summary (interrupted) resumes from them. Each process's output goes to
    ``<run dir>.log``; a finished run's wall time to ``<run dir>/wall_time.json``.
    """
    pending = []
    codes: dict[str, int] = {}
    for job in jobs:
        if not rerun and (job.run_dir / "summary.json").is_file():
            log.info("leaderboard: %s already finished, kept", job.name)
            codes[job.name] = 0
        else:
            pending.append(job)
    env = os.environ.copy()
    if max_parallel > 1 and "OMP_NUM_THREADS" not in env:
        # Processes that each take every core thrash: split the cores between them.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max_parallel))
    running: list[tuple[Job, subprocess.Popen, Any, float]] = []
    while pending or running:
        while pending and len(running) < max(1, max_parallel):
            job = pending.pop(0)
            job.run_dir.parent.mkdir(parents=True, exist_ok=True)
            log_file = job.run_dir.parent / f"{job.run_dir.name}.log"
            output = log_file.open("a")
            resume = ["resume=true"] if not rerun and (job.run_dir / "checkpoints").is_dir() else []
            print(f"leaderboard: training {job.name}" + (" (resuming)" if resume else ""), flush=True)
            process = subprocess.Popen(
                [*job.command, *resume], stdout=output, stderr=subprocess.STDOUT, env=env
            )
            running.append((job, process, output, time.perf_counter()))
        for entry in list(running):
            job, process, output, started = entry
            if process.poll() is None:
                continue
            output.close()
            running.remove(entry)
            codes[job.name] = process.returncode
            elapsed = time.perf_counter() - started
            if process.returncode == 0:
                (job.run_dir / TIMING_FILE).write_text(json.dumps({"wall_time_s": elapsed}))
                print(f"leaderboard: {job.name} done in {elapsed:.0f}s", flush=True)
            else:
                tail = (job.run_dir.parent / f"{job.run_dir.name}.log").read_text()[-2000:]
                log.error("leaderboard: %s failed (exit %d):\n%s", job.name, process.returncode, tail)
        if running:
            time.sleep(0.2)
    return codes


def report_split(job: Job) -> str:
    """``test`` when the job's data source has a test split (``data=suite``), else ``val``."""
    from hydra.utils import get_class

    config = OmegaConf.load(job.run_dir / "config.yaml")
    target = OmegaConf.select(config, "data.source._target_")
    try:
        splits = getattr(get_class(str(target)), "SPLITS", ("train", "val")) if target else ("train", "val")
    except (ImportError, AttributeError, ValueError):
        splits = ("train", "val")
    return "test" if "test" in splits else "val"


def evaluate_all(jobs: list[Job], codes: dict[str, int], samples: int, max_new_tokens: int) -> None:
    """Each finished job once on its report split (``<run>/eval``): the test metrics (where there is a test
    split; the validation ones are the run's own) and greedy generations for ``samples`` of its prompts."""
    from rlhf_lab.evaluate import EvalOptions, evaluate

    for job in jobs:
        if codes.get(job.name) != 0 or not (job.run_dir / "summary.json").is_file():
            continue
        split = report_split(job)
        metrics_file = job.run_dir / "eval" / "metrics.json"
        if metrics_file.is_file() and _eval_is_newer(job.run_dir):
            done = json.loads(metrics_file.read_text())
            if split == "val" or f"{split}/rewards/accuracies" in done:
                continue
        if split == "val" and samples <= 0:
            continue
        evaluate(
            EvalOptions(
                run_dir=job.run_dir,
                samples=samples,
                max_new_tokens=max_new_tokens,
                validate=split != "val",
                overrides=[f"data.eval_split={split}"] if split != "val" else [],
            )
        )


def _eval_is_newer(run_dir: Path) -> bool:
    return (run_dir / "eval" / "metrics.json").stat().st_mtime >= (run_dir / "summary.json").stat().st_mtime


def diverged(job: Job) -> bool:
    """Whether the job's run went non-finite (``run/diverged`` in its summary.json): it is never ranked."""
    summary = job.run_dir / "summary.json"
    return summary.is_file() and bool(json.loads(summary.read_text()).get("run/diverged"))


def succeeded(job: Job, codes: dict[str, int]) -> bool:
    """Exited 0 with a summary.json and did not diverge."""
    return codes.get(job.name) == 0 and (job.run_dir / "summary.json").is_file() and not diverged(job)


def collect(jobs: list[Job], codes: dict[str, int], split: str = "val") -> pd.DataFrame:
    """One row per finished (and not diverged) run: task, objective, setting, seed, run_dir, the validation
    metrics the run logged, and the table's metrics on ``split`` (its evaluation, for ``test``)."""
    metrics = ["val/rewards/accuracies", "val/rewards/margins"]
    metrics += [m.format(split=split) for m, _, _ in COLUMNS.values() if m.format(split=split) not in metrics]
    finished = [job for job in jobs if succeeded(job, codes)]
    if not finished:
        return pd.DataFrame(columns=["task", "objective", "setting", "seed", "run_dir", *metrics])
    runs = analysis.load_runs(*(job.run_dir for job in finished)).set_index("run_dir", drop=False)
    history = analysis.load_history(*(job.run_dir for job in finished))
    throughput = history[history["metric"] == "train/tokens_per_sec"].groupby("run_dir")["value"].mean()
    rows = []
    for job in finished:
        run = runs.loc[str(job.run_dir)]
        evaluated = _read_json(job.run_dir / "eval" / "metrics.json")
        row = {
            "task": job.task,
            "objective": job.objective,
            "setting": job.setting_label,
            "seed": job.seed,
            "run_dir": str(job.run_dir),
            "val/rewards/accuracies": run.get("val/rewards/accuracies", math.nan),
            "val/rewards/margins": run.get("val/rewards/margins", math.nan),
            f"{split}/rewards/accuracies": evaluated.get(
                f"{split}/rewards/accuracies", run.get(f"{split}/rewards/accuracies", math.nan)
            ),
            f"{split}/rewards/margins": evaluated.get(
                f"{split}/rewards/margins", run.get(f"{split}/rewards/margins", math.nan)
            ),
            "generation/mean_new_tokens": evaluated.get("generation/mean_new_tokens", math.nan),
            "tokens_per_sec": throughput.get(run["run_dir"], run.get("train/tokens_per_sec", math.nan)),
            "wall_time_s": _read_json(job.run_dir / TIMING_FILE).get("wall_time_s", math.nan),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def choose_settings(
    jobs: list[Job], codes: dict[str, int], select: str = "val/rewards/accuracies", mode: str = "max"
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (task, objective): the grid point with the best mean ``select`` over its finished tuning runs
    (the first in grid order on a tie, or when none finished)."""
    if mode not in ("max", "min"):
        raise ConfigError(f"leaderboard.mode={mode!r} is not supported; choose one of: max, min")
    runs = collect(jobs, codes)
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for key in dict.fromkeys((job.task, job.objective) for job in jobs):
        points: list[dict[str, Any]] = []
        for job in jobs:
            if (job.task, job.objective) == key and job.setting not in points:
                points.append(job.setting)
        best, best_score = points[0], -math.inf
        for point in points:
            label = setting_label(point)
            frame = runs[
                (runs["task"] == key[0]) & (runs["objective"] == key[1]) & (runs["setting"] == label)
            ]
            values = frame[select].dropna() if select in frame.columns else pd.Series(dtype=float)
            if not len(values):
                continue
            score = float(values.mean()) * (1 if mode == "max" else -1)
            if score > best_score:
                best, best_score = point, score
        chosen[key] = best
    return chosen


def paired_p_value(values: pd.Series, baseline: pd.Series) -> float:
    """Two-sided paired t-test p-value of ``values`` against ``baseline`` over their common index (seeds);
    NaN with fewer than two pairs or no variation in the differences."""
    common = values.dropna().index.intersection(baseline.dropna().index)
    if len(common) < 2:
        return math.nan
    differences = (values[common] - baseline[common]).astype(float)
    if float(differences.std()) == 0.0:
        return math.nan if float(differences.mean()) == 0.0 else 0.0
    from scipy import stats

    return float(stats.ttest_rel(values[common].astype(float), baseline[common].astype(float)).pvalue)


def ranks(means: list[float], lows: list[float], highs: list[float]) -> list[int]:
    """1 + how many entries' intervals lie wholly above each one's (overlapping intervals tie). Without an
    interval (one seed) an entry's mean stands for both ends."""
    lows = [m if math.isnan(lo) else lo for m, lo in zip(means, lows, strict=True)]
    highs = [m if math.isnan(hi) else hi for m, hi in zip(means, highs, strict=True)]
    result = []
    for index, high in enumerate(highs):
        if math.isnan(means[index]):
            result.append(0)
            continue
        result.append(1 + sum(low > high for other, low in enumerate(lows) if other != index))
    return result


def table(
    runs: pd.DataFrame, jobs: list[Job], codes: dict[str, int], confidence: float, split: str = "val"
) -> pd.DataFrame:
    """One row per (task, objective): ``task, objective, setting, seeds, failed``, ``<column>_mean/_low/_high``
    per column, ``val_accuracy_mean`` (what chose the setting), ``p_vs_dpo`` and ``rank``."""
    metrics = {column: metric.format(split=split) for column, (metric, _, _) in COLUMNS.items()}
    keys = list(dict.fromkeys((job.task, job.objective) for job in jobs))
    grouped = runs.assign(task=runs.get("task", "")) if len(runs) else runs
    summary = (
        analysis.summarize(grouped, list(metrics.values()), by=["task", "objective"], confidence=confidence)
        if len(grouped)
        else pd.DataFrame(columns=["task", "objective"])
    )
    summary = summary.set_index(["task", "objective"]) if len(summary) else summary
    rows = []
    for task, objective in keys:
        has = (task, objective) in summary.index if len(summary) else False
        mine = [job for job in jobs if (job.task, job.objective) == (task, objective)]
        frame = (
            grouped[(grouped["task"] == task) & (grouped["objective"] == objective)]
            if len(grouped)
            else grouped
        )
        row: dict[str, Any] = {
            "task": task,
            "objective": objective,
            "setting": mine[0].setting_label if mine else "defaults",
            "seeds": int(summary.loc[(task, objective), "n"]) if has else 0,
            "failed": sum(codes.get(job.name) != 0 or diverged(job) for job in mine),
        }
        for column, metric in metrics.items():
            for stat in ("mean", "low", "high"):
                key = f"{metric}/{stat}"
                present = has and key in summary.columns
                row[f"{column}_{stat}"] = float(summary.loc[(task, objective), key]) if present else math.nan
        values = frame.get("val/rewards/accuracies", pd.Series(dtype=float)).dropna()
        row["val_accuracy_mean"] = float(values.mean()) if len(values) else math.nan
        row["p_vs_dpo"] = math.nan
        if objective != BASELINE and len(grouped):
            accuracy = metrics["accuracy"]
            baseline = grouped[(grouped["task"] == task) & (grouped["objective"] == BASELINE)]
            if len(baseline) and len(frame):
                row["p_vs_dpo"] = paired_p_value(
                    frame.set_index("seed")[accuracy], baseline.set_index("seed")[accuracy]
                )
        rows.append(row)
    board = pd.DataFrame(rows)
    board["rank"] = 0
    for task in dict.fromkeys(board["task"]):
        mask = board["task"] == task
        board.loc[mask, "rank"] = ranks(
            board.loc[mask, "accuracy_mean"].tolist(),
            board.loc[mask, "accuracy_low"].tolist(),
            board.loc[mask, "accuracy_high"].tolist(),
        )
    return board


def _cell(mean: float, low: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {mean - low:.{digits}f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def markdown(board: pd.DataFrame, confidence: float, samples: int, split: str = "val") -> str:
    """The tables as markdown: ``mean ± half-width`` of the confidence interval over seeds; with several
    tasks, an objective x task overview first and a table per task after it."""
    task_names = list(dict.fromkeys(board["task"]))
    parts = []
    if len(task_names) > 1:
        parts.append(overview(board, split))
    for task in task_names:
        rows = board[board["task"] == task]
        if task:
            parts.append(f"### {task}\n")
        parts.append(_task_table(rows, split))
    notes = (
        f"\nMean ± half-width of the {confidence:.0%} confidence interval ({analysis.ci_method()}) over seeds, on "
        f"the {'test' if split == 'test' else 'held-out validation'} split. Accuracy and reward margin use each "
        "objective's own implicit reward (the reward model's score), so margins compare within a row, not "
        "across. p vs DPO: paired t-test over seeds. rank: 1 + the objectives whose interval lies wholly above "
        "(overlapping intervals tie). setting: chosen on the validation split"
        f"{' (the test split is reported once, for it)' if split == 'test' else ''}. Completion length: mean "
        f"tokens of greedy generations for {samples} held-out prompts (n/a for the reward model). tokens/s: "
        "training throughput; wall time: per run, start-up included.\n"
    )
    return "\n".join(parts) + notes


def _task_table(rows: pd.DataFrame, split: str) -> str:
    headers = ["objective", "seeds", "setting"]
    headers += [header.format(split=split) for _, header, _ in COLUMNS.values()]
    headers += ["p vs DPO", "rank"]
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for _, row in rows.iterrows():
        seeds = f"{row['seeds']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        cells = [str(row["objective"]), seeds, str(row["setting"])]
        cells += [
            _cell(row[f"{column}_mean"], row[f"{column}_low"], digits)
            for column, (_, _, digits) in COLUMNS.items()
        ]
        cells += [_p(row["p_vs_dpo"]), str(row["rank"]) if row["rank"] else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def overview(board: pd.DataFrame, split: str = "val") -> str:
    """Objective x task: accuracy ``mean ± half-width (rank)``."""
    task_names = list(dict.fromkeys(board["task"]))
    lines = [
        f"| objective | {' | '.join(task_names)} |",
        "|" + " --- |" * (len(task_names) + 1),
    ]
    for objective in dict.fromkeys(board["objective"]):
        cells = []
        for task in task_names:
            row = board[(board["task"] == task) & (board["objective"] == objective)]
            if not len(row):
                cells.append("")
                continue
            entry = row.iloc[0]
            rank = f" ({entry['rank']})" if entry["rank"] else ""
            cells.append(_cell(entry["accuracy_mean"], entry["accuracy_low"], 3) + rank)
        lines.append(f"| {objective} | " + " | ".join(cells) + " |")
    return f"{split} accuracy (rank within the task):\n\n" + "\n".join(lines) + "\n"


def run_leaderboard(cfg: DictConfig) -> pd.DataFrame:
    """Train (tuning first), choose, evaluate once on the report split, write the tables; returns the table."""
    board = cfg.leaderboard
    out_dir = Path(cfg.paths.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(board, out_dir / "leaderboard.yaml", resolve=True)
    forwarded = command_line_overrides(NOT_FORWARDED)
    parallel, rerun = int(board.get("max_parallel", 1)), bool(board.get("rerun", False))
    tuning = plan(cfg, out_dir, forwarded)
    codes = train_all(tuning, parallel, rerun)
    select, mode = str(board.get("select", "val/rewards/accuracies")), str(board.get("mode", "max"))
    chosen = choose_settings(tuning, codes, select, mode)
    jobs = plan(cfg, out_dir, forwarded, chosen)
    remaining = [job for job in jobs if job.name not in codes]
    codes.update(train_all(remaining, parallel, rerun))
    evaluate_all(jobs, codes, int(board.samples), int(board.max_new_tokens))
    finished = [job for job in jobs if succeeded(job, codes)]
    split = report_split(finished[0]) if finished else "val"
    # Every run once (a tuning run of the chosen point is also a reported one); the reported ones are chosen.
    everything = collect(list({job.name: job for job in [*tuning, *jobs]}.values()), codes, split)
    everything["chosen"] = everything["run_dir"].isin([str(job.run_dir) for job in jobs])
    runs = everything[everything["chosen"]]
    confidence = float(board.get("confidence", 0.95))
    result = table(runs, jobs, codes, confidence, split)
    everything.to_csv(out_dir / "runs.csv", index=False)
    result.to_csv(out_dir / "leaderboard.csv", index=False)
    text = markdown(result, confidence, int(board.samples), split)
    (out_dir / "leaderboard.md").write_text(text)
    try:
        analysis.plot_leaderboard(result, out=out_dir / "heatmap.png", split=split)
        if len(runs) and len(set(runs["task"])) == 1:
            metric = COLUMNS["accuracy"][0].format(split=split)
            analysis.plot_objectives(runs, metric, out=out_dir / "leaderboard.png")
    except Exception as error:  # the table is the result; a figure problem only warns
        log.warning("could not plot the leaderboard: %s", error)
    print(f"leaderboard: {out_dir.resolve()}\n{text}", flush=True)
    return result
