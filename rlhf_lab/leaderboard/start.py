"""Where a leaderboard's runs start (``leaderboard.start``): the command line's model (``scratch``), or, per
task, one SFT model trained on that task's chosen answers (``sft``), as researchers run preference objectives.

With ``sft`` every task first trains one ``algo=sft`` run (the command line's overrides, the task's, then
``leaderboard.sft_overrides``) as a cached stage of `rlhf_lab.stages` (``<paths.cache_dir>/stages/sft-<key>``,
keyed by its inputs: a second leaderboard, or the same one run again, reuses it; an interrupted one resumes),
and every objective run on that task (each seed, each grid point, each variant) starts from its export
(``model=hub model.name_or_path=<export>``), which is also its reference. Each start is evaluated once on the
report split (its greedy answers, `rlhf_lab.evaluate.answer_metrics`) in ``<run dir>/runs/<task>/sft_start``,
so the report says how much room the objectives have.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The module, not its names: rlhf_lab.stages imports this package (its resumable helpers) first.
from rlhf_lab import stages
from rlhf_lab.errors import ConfigError, check_choice
from rlhf_lab.leaderboard.plan import tasks
from rlhf_lab.leaderboard.resumable import read_json_object

log = logging.getLogger(__name__)

STARTS = ("sft", "scratch")
#: The stage name (its cache directory is ``sft-<key>``, as a stage chain's SFT stage).
STAGE_NAME = "sft"


@dataclass
class Start:
    """One task's start.

    Attributes:
        task: The task's name (``""``: the command line's data).
        stage: The SFT stage it starts from (None: the command line's model, ``scratch``).
        metrics: Its evaluation on the report split (generation accuracy), once evaluated.
    """

    task: str
    stage: stages.Stage | None = None
    metrics: dict[str, Any] | None = None

    @property
    def overrides(self) -> list[str]:
        """What starts a run from it: ``model=hub model.name_or_path=<export> ...`` (none from scratch)."""
        return stages.initialised_from(self.stage) if self.stage is not None else []

    @property
    def export(self) -> Path | None:
        return self.stage.run_dir / "export" if self.stage is not None else None


def start_mode(board: DictConfig) -> str:
    """``leaderboard.start`` (``scratch`` when absent), checked with ``leaderboard.sft_overrides``.

    Raises:
        ConfigError: ``start`` is not one of `STARTS`, or ``sft_overrides`` is not a list of overrides.
    """
    mode = str(board.get("start") or "scratch")
    check_choice("leaderboard.start", mode, STARTS)
    extra = board.get("sft_overrides")
    if extra is not None and not (OmegaConf.is_list(extra) or isinstance(extra, list)):
        raise ConfigError(
            f"leaderboard.sft_overrides={extra!r}: give a list of overrides, e.g. [trainer.max_epochs=3]"
        )
    if any("=" not in str(o) for o in extra or []):
        raise ConfigError(f"leaderboard.sft_overrides={list(extra)}: every entry is key=value")
    return mode


def sft_inputs(board: DictConfig, forwarded: list[str], task_overrides: list[str]) -> list[str]:
    """The SFT stage's overrides: the command line's (as a chain's first stage gets them: no ``algo.*``),
    the task's, ``algo=sft``, then ``leaderboard.sft_overrides`` (the shared and per-objective ones are the
    objectives' budget, not the start's)."""
    extra = [str(o) for o in board.get("sft_overrides") or []]
    return [*stages.stage_forwarded(forwarded, first=True, last=False), *task_overrides, "algo=sft", *extra]


def plan_starts(cfg: DictConfig, forwarded: list[str]) -> dict[str, Start]:
    """Task -> its start (not trained yet): a cached SFT stage per task with ``start: sft``."""
    board = cfg.leaderboard
    if start_mode(board) == "scratch":
        return {task: Start(task) for task in tasks(board)}
    return {
        task: Start(
            task,
            stages.cached_stage(cfg.paths.cache_dir, STAGE_NAME, sft_inputs(board, forwarded, overrides)),
        )
        for task, overrides in tasks(board).items()
    }


def start_dir(out_dir: Path, task: str) -> Path:
    """``<run dir>/runs/[<task>/]sft_start``: the start's log and its evaluation, in the leaderboard's dir."""
    return out_dir / "runs" / task / "sft_start" if task else out_dir / "runs" / "sft_start"


def train_starts(starts: dict[str, Start], out_dir: Path, max_parallel: int = 1) -> None:
    """Train (or reuse) every task's SFT stage, ``max_parallel`` at a time; each one's output goes to
    ``<start dir>.log``.

    Raises:
        ChildFailed: A stage failed (the board cannot start its task's runs).
    """
    pending = [start for start in starts.values() if start.stage is not None]
    if not pending:
        return
    parallel = max(1, min(max_parallel, len(pending)))
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None

    def train(start: Start) -> bool:
        assert start.stage is not None
        where = start_dir(out_dir, start.task)
        where.parent.mkdir(parents=True, exist_ok=True)
        reused = stages.train_cached(
            start.stage, log_file=where.parent / f"{where.name}.log", threads=threads
        )
        print(f"leaderboard: start of {start.task or 'the task'}: {start.export}", flush=True)
        return reused

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sft-start") as pool:
        list(pool.map(train, pending))


def evaluate_starts(
    starts: dict[str, Start], out_dir: Path, samples: int, max_new_tokens: int, split: str
) -> None:
    """Each SFT start's greedy answers on ``split`` (the objectives' report split), once per leaderboard
    directory (kept while its ``metrics.json`` is newer than the stage's summary and has as many samples);
    sets each `Start.metrics`."""
    from rlhf_lab.evaluate import EvalOptions, evaluate
    from rlhf_lab.leaderboard.run import data_logs_hidden

    if samples <= 0:
        return
    for start in starts.values():
        if start.stage is None:
            continue
        where = start_dir(out_dir, start.task)
        metrics_file = where / "metrics.json"
        summary = start.stage.run_dir / "summary.json"
        kept = read_json_object(metrics_file) if metrics_file.is_file() else None
        if (
            kept is not None
            and metrics_file.stat().st_mtime >= summary.stat().st_mtime
            and kept.get("generation/samples") == float(samples)
        ):
            start.metrics = kept
            continue
        options = EvalOptions(
            run_dir=start.stage.run_dir,
            samples=samples,
            max_new_tokens=max_new_tokens,
            validate=False,
            out_dir=where,
            split=split if split != "val" else None,
            print_report=False,
        )
        with data_logs_hidden():
            start.metrics = evaluate(options)
        accuracy = start.metrics.get(f"{split}/generation_accuracy")
        scored = f": {split} generation accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""
        print(f"leaderboard: evaluated the start of {start.task or 'the task'}{scored}", flush=True)


def describe_starts(starts: dict[str, Start], split: str) -> str:
    """The report's line(s) on where the runs started: ``random init`` or each task's SFT export, with its
    greedy answers' accuracy on ``split``."""
    if all(start.stage is None for start in starts.values()):
        return "Start: random init (every run from the command line's model).\n"
    lines = [
        "Start: supervised (one algo=sft run per task on its training split's chosen answers; every objective "
        "run on the task starts from its export, which is also its reference):\n"
    ]
    for start in starts.values():
        metrics = start.metrics or {}
        accuracy = metrics.get(f"{split}/generation_accuracy")
        length = metrics.get(f"{split}/answer_length")
        scored = f"; {split} generation accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""
        scored += f", answer length {length:.1f} words" if isinstance(length, float) else ""
        lines.append(f"- {start.task or 'the task'}: `{start.export}`{scored}")
    return "\n".join(lines) + "\n"
