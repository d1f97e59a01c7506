"""A leaderboard's numbers: the per-run frame, the chosen grid points, and per (task, objective) the mean and
confidence interval over seeds, a paired t-test against DPO, and a rank."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from rlhf_lab import analysis
from rlhf_lab.errors import ConfigError
from rlhf_lab.leaderboard.plan import Job, setting_label
from rlhf_lab.leaderboard.resumable import read_json_object
from rlhf_lab.leaderboard.run import TIMING_FILE, diverged, succeeded

#: Table columns: CSV name -> (metric in the per-run frame, markdown header, digits). ``{split}`` is the
#: report split. Generation accuracy (the share of greedy completions giving the right answer) and answer
#: length exist on suite tasks only (`rlhf_lab.data.suite.generation_metrics`).
COLUMNS: dict[str, tuple[str, str, int]] = {
    "accuracy": ("{split}/rewards/accuracies", "{split} accuracy", 3),
    "generation_accuracy": ("{split}/generation_accuracy", "generation accuracy", 3),
    "answer_length": ("{split}/answer_length", "answer length (words)", 1),
    "margin": ("{split}/rewards/margins", "reward margin", 3),
    "completion_tokens": ("generation/mean_new_tokens", "completion length (tokens)", 1),
    "tokens_per_sec": ("tokens_per_sec", "tokens/s", 0),
    "wall_time_s": ("wall_time_s", "wall time (s)", 0),
}
BASELINE = "dpo"
STATS = ("mean", "low", "high")


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
    return pd.DataFrame([_run_row(job, runs.loc[str(job.run_dir)], throughput, split) for job in finished])


def _run_row(job: Job, run: pd.Series, throughput: pd.Series, split: str) -> dict[str, Any]:
    evaluated = _read_json(job.run_dir / "eval" / "metrics.json")

    def on_split(metric: str) -> Any:
        name = f"{split}/{metric}"
        return evaluated.get(name, run.get(name, math.nan))

    return {
        "task": job.task,
        "objective": job.objective,
        "setting": job.setting_label,
        "seed": job.seed,
        "run_dir": str(job.run_dir),
        "val/rewards/accuracies": run.get("val/rewards/accuracies", math.nan),
        "val/rewards/margins": run.get("val/rewards/margins", math.nan),
        f"{split}/rewards/accuracies": on_split("rewards/accuracies"),
        f"{split}/rewards/margins": on_split("rewards/margins"),
        f"{split}/generation_accuracy": evaluated.get(f"{split}/generation_accuracy", math.nan),
        f"{split}/answer_length": evaluated.get(f"{split}/answer_length", math.nan),
        "generation/mean_new_tokens": evaluated.get("generation/mean_new_tokens", math.nan),
        "tokens_per_sec": throughput.get(run["run_dir"], run.get("train/tokens_per_sec", math.nan)),
        "wall_time_s": _read_json(job.run_dir / TIMING_FILE).get("wall_time_s", math.nan),
    }


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when absent or cut short by a kill."""
    return read_json_object(path) or {}


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
            frame = runs[
                (runs["task"] == key[0])
                & (runs["objective"] == key[1])
                & (runs["setting"] == setting_label(point))
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


def separated_pairs(board: pd.DataFrame, column: str = "accuracy") -> list[tuple[str, str, str]]:
    """``(task, better, worse)`` for every pair of objectives on a task whose intervals of ``column`` do not
    overlap (``better``'s low end above ``worse``'s high end); an entry without an interval (one seed)
    separates nothing."""
    pairs = []
    for task in dict.fromkeys(board["task"]):
        rows = board[board["task"] == task]
        for _, better in rows.iterrows():
            for _, worse in rows.iterrows():
                low, high = better[f"{column}_low"], worse[f"{column}_high"]
                if not (math.isnan(low) or math.isnan(high)) and low > high:
                    pairs.append((str(task), str(better["objective"]), str(worse["objective"])))
    return pairs


def table(
    runs: pd.DataFrame, jobs: list[Job], codes: dict[str, int], confidence: float, split: str = "val"
) -> pd.DataFrame:
    """One row per (task, objective): ``task, objective, setting, seeds, failed``, ``<column>_mean/_low/_high``
    per column, ``val_accuracy_mean`` (what chose the setting), ``p_vs_dpo`` and ``rank``."""
    metrics = {column: metric.format(split=split) for column, (metric, _, _) in COLUMNS.items()}
    grouped = runs.assign(task=runs.get("task", "")) if len(runs) else runs
    summary = (
        analysis.summarize(grouped, list(metrics.values()), by=["task", "objective"], confidence=confidence)
        if len(grouped)
        else pd.DataFrame(columns=["task", "objective"])
    )
    summary = summary.set_index(["task", "objective"]) if len(summary) else summary
    keys = list(dict.fromkeys((job.task, job.objective) for job in jobs))
    board = pd.DataFrame([_table_row(key, grouped, summary, metrics, jobs, codes) for key in keys])
    board["rank"] = 0
    for task in dict.fromkeys(board["task"]):
        mask = board["task"] == task
        board.loc[mask, "rank"] = ranks(
            board.loc[mask, "accuracy_mean"].tolist(),
            board.loc[mask, "accuracy_low"].tolist(),
            board.loc[mask, "accuracy_high"].tolist(),
        )
    return board


def _table_row(
    key: tuple[str, str],
    grouped: pd.DataFrame,
    summary: pd.DataFrame,
    metrics: dict[str, str],
    jobs: list[Job],
    codes: dict[str, int],
) -> dict[str, Any]:
    """One (task, objective)'s row of `table` (its rank aside)."""
    task, objective = key
    has = key in summary.index if len(summary) else False
    mine = [job for job in jobs if (job.task, job.objective) == key]
    frame = _rows_of(grouped, task, objective)
    row: dict[str, Any] = {
        "task": task,
        "objective": objective,
        "setting": mine[0].setting_label if mine else "defaults",
        "seeds": int(summary.loc[key, "n"]) if has else 0,
        "failed": sum(codes.get(job.name) != 0 or diverged(job) for job in mine),
    }
    for column, metric in metrics.items():
        for stat in STATS:
            present = has and f"{metric}/{stat}" in summary.columns
            row[f"{column}_{stat}"] = float(summary.loc[key, f"{metric}/{stat}"]) if present else math.nan
    values = frame.get("val/rewards/accuracies", pd.Series(dtype=float)).dropna()
    row["val_accuracy_mean"] = float(values.mean()) if len(values) else math.nan
    row["p_vs_dpo"] = math.nan
    baseline = _rows_of(grouped, task, BASELINE)
    if objective != BASELINE and len(baseline) and len(frame):
        accuracy = metrics["accuracy"]
        row["p_vs_dpo"] = paired_p_value(
            frame.set_index("seed")[accuracy], baseline.set_index("seed")[accuracy]
        )
    return row


def _rows_of(grouped: pd.DataFrame, task: str, objective: str) -> pd.DataFrame:
    if not len(grouped):
        return grouped
    return grouped[(grouped["task"] == task) & (grouped["objective"] == objective)]
