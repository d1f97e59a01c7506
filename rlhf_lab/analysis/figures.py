"""Figures of runs: training curves, a sweep's parameter, objectives side by side, the leaderboard heatmap
and every run's ``curves.png``.

Built on `matplotlib.figure.Figure` (no pyplot state), so plotting works in a training process, a notebook or
a headless test alike.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rlhf_lab.analysis.runs import load_history, objective_name
from rlhf_lab.analysis.stats import summarize

#: How ``summary.json`` names a held-out metric's value at step 0 (``rlhf_lab.callbacks.START_PREFIX``; not
#: imported: analysis loads no Lightning).
START_PREFIX = "val_start/"

#: `plot_run_curves` panels: title and the metrics (without ``train/``/``val/``) drawn in it.
RUN_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("rewards/accuracies", ("rewards/accuracies",)),
    ("rewards/margins", ("rewards/margins",)),
    ("log-probs: chosen vs rejected", ("logps/chosen", "logps/rejected")),
    # Online RL.
    ("reward", ("reward",)),
    ("completion length", ("completions/mean_length",)),
    ("KL to the reference", ("kl",)),
)


def _figure(panels: int, width: float = 4.5, height: float = 3.4) -> Any:
    from matplotlib.figure import Figure

    columns = min(panels, 2)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _save(figure: Any, out: str | Path | None) -> None:
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=110)


def _run_label(run_dir: str, run_dirs: Sequence[str]) -> str:
    """The shortest tail of the path that tells the runs apart (``0``, ``dpo_s1``...)."""
    parts = Path(run_dir).parts
    for depth in range(1, len(parts) + 1):
        tails = {Path(*Path(other).parts[-depth:]) for other in run_dirs}
        if len(tails) == len(set(run_dirs)):
            return str(Path(*parts[-depth:]))
    return run_dir


def plot_curves(
    history: pd.DataFrame,
    metrics: Sequence[str] = ("train/loss", "val/loss"),
    out: str | Path | None = None,
    label: str | None = None,
) -> Any:
    """One panel per metric, a line per run (metric against step).

    Args:
        history: `load_history` output.
        metrics: Metric names as logged.
        out: Also save the figure here (PNG by the suffix).
        label: Column naming each line (default: the shortest distinguishing tail of ``run_dir``), e.g.
            ``objective`` or a config column merged in from `load_runs`.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    figure, axes = _figure(len(metrics))
    run_dirs = list(dict.fromkeys(history["run_dir"]))
    for axis, metric in zip(axes, metrics, strict=True):
        rows = history[history["metric"] == metric]
        for run_dir, frame in rows.groupby("run_dir", sort=False):
            name = str(frame[label].iloc[0]) if label else _run_label(str(run_dir), run_dirs)
            axis.plot(frame["step"], frame["value"], marker="o" if len(frame) < 20 else None, label=name)
        axis.set_title(metric)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize="small")
    _save(figure, out)
    return figure


def plot_parameter(
    runs: pd.DataFrame,
    parameter: str = "algo.beta",
    metric: str = "val/rewards/accuracies",
    out: str | Path | None = None,
    hue: str | None = "objective",
    confidence: float = 0.95,
) -> Any:
    """A sweep's parameter against a held-out metric: every run as a dot, the mean and CI over seeds as a line.

    The x axis is logarithmic when every value is positive and they span more than 10x (beta, lr).
    """
    figure, (axis,) = _figure(1, width=5.5, height=4)
    frame = runs.dropna(subset=[parameter, metric])
    groups = frame.groupby(hue, sort=True) if hue and hue in frame.columns else [(None, frame)]
    for name, group in groups:
        summary = summarize(group, [metric], by=parameter, confidence=confidence).sort_values(parameter)
        x = summary[parameter].astype(float)
        mean = summary[f"{metric}/mean"]
        line = axis.plot(x, mean, marker="o", label=str(name) if name is not None else metric)[0]
        axis.fill_between(
            x, summary[f"{metric}/low"], summary[f"{metric}/high"], alpha=0.2, color=line.get_color()
        )
        axis.scatter(group[parameter].astype(float), group[metric], s=12, alpha=0.6, color=line.get_color())
    values = frame[parameter].astype(float)
    if len(values) and (values > 0).all() and values.max() > 10 * values.min():
        axis.set_xscale("log")
    axis.set_xlabel(parameter)
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} vs {parameter} (mean, {confidence:.0%} CI)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    _save(figure, out)
    return figure


def plot_objectives(
    runs: pd.DataFrame,
    metric: str = "val/rewards/accuracies",
    out: str | Path | None = None,
    confidence: float = 0.95,
) -> Any:
    """Objectives side by side: a bar per objective (mean over seeds), its CI, and each run as a dot."""
    summary = summarize(runs.dropna(subset=[metric]), [metric], confidence=confidence)
    figure, (axis,) = _figure(1, width=max(4.5, 0.9 * len(summary) + 2), height=4)
    positions = list(range(len(summary)))
    mean = summary[f"{metric}/mean"]
    # A single seed has no interval: draw no error bar rather than a NaN one.
    low = (mean - summary[f"{metric}/low"]).fillna(0)
    high = (summary[f"{metric}/high"] - mean).fillna(0)
    axis.bar(positions, mean, yerr=[low, high], capsize=4, alpha=0.7)
    for position, objective in zip(positions, summary["objective"], strict=True):
        values = runs.loc[runs["objective"] == objective, metric].dropna()
        axis.scatter([position] * len(values), values, color="black", s=12, zorder=3)
    axis.set_xticks(positions, [str(name) for name in summary["objective"]], rotation=30, ha="right")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} by objective (mean, {confidence:.0%} CI)")
    axis.grid(axis="y", alpha=0.3)
    _save(figure, out)
    return figure


def plot_leaderboard(board: pd.DataFrame, out: str | Path | None = None, split: str | None = None) -> Any:
    """Objective x task heatmap of mean accuracy (a leaderboard's table), each cell annotated with the mean,
    the confidence interval's half-width and the rank within its task."""
    tasks = [str(task) or "data" for task in dict.fromkeys(board["task"])]
    objectives = list(dict.fromkeys(board["objective"]))
    grid = [[math.nan] * len(tasks) for _ in objectives]
    labels = [[""] * len(tasks) for _ in objectives]
    for _, row in board.iterrows():
        i, j = objectives.index(row["objective"]), tasks.index(str(row["task"]) or "data")
        mean, low = float(row["accuracy_mean"]), float(row["accuracy_low"])
        grid[i][j] = mean
        if not math.isnan(mean):
            half = "" if math.isnan(low) else f"\n± {mean - low:.2f}"
            labels[i][j] = f"{mean:.2f}{half}\n#{int(row['rank'])}"
    figure, (axis,) = _figure(
        1, width=max(4.5, 1.3 * len(tasks) + 2.5), height=max(3.0, 0.55 * len(objectives) + 1.5)
    )
    image = axis.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, j in itertools.product(range(len(objectives)), range(len(tasks))):
        value = grid[i][j]
        if not math.isnan(value):
            colour = "black" if value > 0.6 else "white"
            axis.text(j, i, labels[i][j], ha="center", va="center", fontsize=7, color=colour)
    axis.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    axis.set_yticks(range(len(objectives)), objectives)
    axis.set_title(f"{split + ' ' if split else ''}accuracy by objective and task (mean, CI, rank)")
    figure.colorbar(image, ax=axis, shrink=0.8)
    _save(figure, out)
    return figure


def run_starts(run_dir: str | Path) -> dict[str, float]:
    """A run's held-out values at step 0 (``trainer.val_on_start``) by metric (``val/loss``), from its
    ``summary.json`` (``val_start/loss``); empty when it has none."""
    summary_file = Path(run_dir) / "summary.json"
    if not summary_file.is_file():
        return {}
    summary = json.loads(summary_file.read_text())
    return {
        f"val/{key.removeprefix(START_PREFIX)}": float(value)
        for key, value in summary.items()
        if key.startswith(START_PREFIX) and value is not None
    }


def run_curves_figure(run_dir: str | Path) -> Any:
    """The figure `plot_run_curves` writes (None when the run logged none of its metrics); a held-out
    metric's value at step 0 is marked with a star."""
    run_dir = Path(run_dir)
    history = load_history(run_dir)
    logged = set(history["metric"])
    panels = [
        (title, [f"{split}/{n}" for n in names for split in ("train", "val") if f"{split}/{n}" in logged])
        for title, names in RUN_PANELS
    ]
    panels = [(title, metrics) for title, metrics in panels if metrics]
    if not panels:
        return None
    starts = run_starts(run_dir)
    figure, axes = _figure(len(panels))
    for axis, (title, metrics) in zip(axes, panels, strict=True):
        label = "start (step 0)"  # one legend entry per panel
        for metric in metrics:
            rows = history[history["metric"] == metric]
            style = "-" if metric.startswith("train/") else "--"
            marker = "o" if len(rows) < 20 else None
            (line,) = axis.plot(rows["step"], rows["value"], style, marker=marker, label=metric)
            if metric in starts:
                axis.plot([0], [starts[metric]], "*", color=line.get_color(), markersize=12, label=label)
                label = "_nolegend_"
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(f"{objective_name(run_dir) or 'run'}: {run_dir.name}")
    return figure


def plot_run_curves(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """One run's curves (loss, accuracies, margins, chosen vs rejected log-probs; for online RL reward,
    completion length and KL; train and val) as a PNG, the held-out values at step 0 starred.

    Panels whose metrics the objective does not log (SFT has no rewards) are left out.

    Args:
        run_dir: The run directory (reads its ``metrics.csv``, and ``summary.json`` for the start values).
        out: Where to write (default ``<run_dir>/curves.png``).

    Returns:
        The written file, or None when the run logged none of the metrics.
    """
    figure = run_curves_figure(run_dir)
    if figure is None:
        return None
    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    _save(figure, out)
    return out
