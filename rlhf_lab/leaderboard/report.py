"""A leaderboard's outputs: the Markdown tables, and the files written to its run directory (``leaderboard.md``,
``leaderboard.csv``, ``runs.csv``, ``heatmap.png`` and, for one task, ``leaderboard.png``)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from rlhf_lab import analysis
from rlhf_lab.leaderboard.stats import COLUMNS, separated_pairs

#: Columns only some boards have (suite tasks' verifiable answers; length_bias' answer length): left out of
#: a task's table where no objective has them.
OPTIONAL = ("generation_accuracy", "answer_length")

log = logging.getLogger(__name__)


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


def markdown(
    board: pd.DataFrame, confidence: float, samples: int, split: str = "val", start: str = ""
) -> str:
    """The tables as markdown: ``mean ± half-width`` of the confidence interval over seeds; with several
    tasks, an objective x task overview first (and one of generation accuracy, where the tasks have it)
    and a table per task after it; ``start`` (where the runs started) first, the separated pairs last."""
    task_names = list(dict.fromkeys(board["task"]))
    generation = _has(board, "generation_accuracy")
    parts = [start] if start else []
    if len(task_names) > 1:
        parts.append(overview(board, split))
        if generation:
            parts.append(overview(board, split, "generation_accuracy"))
    for task in task_names:
        rows = board[board["task"] == task]
        if task:
            parts.append(f"### {task}\n")
        parts.append(_task_table(rows, split))
    parts.append(_separated(board, split, generation))
    return "\n".join(parts) + _notes(confidence, samples, split)


def _has(rows: pd.DataFrame, column: str) -> bool:
    return f"{column}_mean" in rows.columns and bool(rows[f"{column}_mean"].notna().any())


def _separated(board: pd.DataFrame, split: str, generation: bool) -> str:
    """Which objectives' intervals do not overlap, per task and metric."""
    lines = ["Separated pairs (non-overlapping intervals, better > worse):\n"]
    for column, label in [("accuracy", f"{split} accuracy"), ("generation_accuracy", "generation accuracy")]:
        if column == "generation_accuracy" and not generation:
            continue
        pairs = separated_pairs(board, column)
        by_task: dict[str, list[str]] = {}
        for task, better, worse in pairs:
            by_task.setdefault(task or "the task", []).append(f"{better} > {worse}")
        text = "; ".join(f"{task}: {', '.join(found)}" for task, found in by_task.items()) or "none"
        lines.append(f"- {label}: {text}")
    return "\n".join(lines) + "\n"


def _notes(confidence: float, samples: int, split: str) -> str:
    test = split == "test"
    return (
        f"\nMean ± half-width of the {confidence:.0%} confidence interval ({analysis.ci_method()}) over seeds, on "
        f"the {'test' if test else 'held-out validation'} split. Accuracy and reward margin use each "
        "objective's own implicit reward (the reward model's score), so margins compare within a row, not "
        "across. p vs DPO: paired t-test over seeds. rank: 1 + the objectives whose interval lies wholly above "
        "(overlapping intervals tie). setting: chosen on the validation split"
        f"{' (the test split is reported once, for it)' if test else ''}. Completion length: mean "
        f"tokens of greedy generations for {samples} held-out prompts (n/a for the reward model); on suite tasks "
        "generation accuracy is the share of them giving the right answer and answer length (length_bias) their "
        "words up to the first full stop. tokens/s: "
        "training throughput; wall time: per run, start-up included.\n"
    )


def _task_table(rows: pd.DataFrame, split: str) -> str:
    columns = {c: spec for c, spec in COLUMNS.items() if c not in OPTIONAL or _has(rows, c)}
    headers = ["objective", "seeds", "setting"]
    headers += [header.format(split=split) for _, header, _ in columns.values()]
    headers += ["p vs DPO", "rank"]
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for _, row in rows.iterrows():
        seeds = f"{row['seeds']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        cells = [str(row["objective"]), seeds, str(row["setting"])]
        cells += [
            _cell(row[f"{column}_mean"], row[f"{column}_low"], digits)
            for column, (_, _, digits) in columns.items()
        ]
        cells += [_p(row["p_vs_dpo"]), str(row["rank"]) if row["rank"] else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def overview(board: pd.DataFrame, split: str = "val", column: str = "accuracy") -> str:
    """Objective x task: accuracy ``mean ± half-width (rank)``; another ``column`` (``generation_accuracy``)
    without the rank (ranks are by accuracy)."""
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
            rank = f" ({entry['rank']})" if entry["rank"] and column == "accuracy" else ""
            cells.append(_cell(entry[f"{column}_mean"], entry[f"{column}_low"], 3) + rank)
        lines.append(f"| {objective} | " + " | ".join(cells) + " |")
    title = (
        f"{split} accuracy (rank within the task)"
        if column == "accuracy"
        else f"{split} {column.replace('_', ' ')} (greedy completions giving the right answer)"
    )
    return f"{title}:\n\n" + "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    board: pd.DataFrame,
    everything: pd.DataFrame,
    confidence: float,
    samples: int,
    split: str,
    start: str = "",
) -> str:
    """Write the table (``leaderboard.csv``, ``leaderboard.md``, which says first where the runs started:
    ``start``), every run (``runs.csv``) and the figures to ``out_dir``; returns the markdown."""
    everything.to_csv(out_dir / "runs.csv", index=False)
    board.to_csv(out_dir / "leaderboard.csv", index=False)
    text = markdown(board, confidence, samples, split, start)
    (out_dir / "leaderboard.md").write_text(text)
    runs = everything[everything["chosen"]]
    try:
        analysis.plot_leaderboard(board, out=out_dir / "heatmap.png", split=split)
        if len(runs) and len(set(runs["task"])) == 1:
            metric = COLUMNS["accuracy"][0].format(split=split)
            analysis.plot_objectives(runs, metric, out=out_dir / "leaderboard.png")
    except Exception as error:  # the table is the result; a figure problem only warns
        log.warning("could not plot the leaderboard: %s", error)
    return text
