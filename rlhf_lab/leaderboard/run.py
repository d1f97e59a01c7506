"""Running a leaderboard's jobs: training each as a child process (`rlhf_lab.launch.run_child`), several at a
time, keeping finished runs and resuming interrupted ones; then evaluating each kept run once on the report
split."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlhf_lab.atomic import atomic_write_text
from rlhf_lab.launch import run_child
from rlhf_lab.leaderboard.plan import Job
from rlhf_lab.leaderboard.resumable import (
    child_env,
    failure_line,
    finished_summary,
    read_json_object,
    run_finished,
)

log = logging.getLogger(__name__)

TIMING_FILE = "wall_time.json"


def log_file(job: Job) -> Path:
    """``<run dir>.log``: the job's training output, beside its run directory."""
    return job.run_dir.parent / f"{job.run_dir.name}.log"


class Tally:
    """``k/n`` for children that finish in any order (several train at a time, each in a thread)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.lock = total, 0, threading.Lock()

    def next(self) -> str:
        with self.lock:
            self.done += 1
            return f"{self.done}/{self.total}"


def describe(job: Job) -> str:
    """``dpo seed 0``; ``in_context dpo algo.beta=0.1 seed 0`` with a task and a grid point."""
    parts = [job.task, job.objective, job.setting_label if job.setting else "", f"seed {job.seed}"]
    return " ".join(part for part in parts if part)


def score_text(summary: dict[str, Any] | None, metric: str) -> str:
    """``, val/rewards/accuracies 0.9100`` from a run's summary (empty when it lacks the metric)."""
    value = (summary or {}).get(metric)
    return f", {metric} {value:.4f}" if isinstance(value, (int, float)) else ""


def train_all(
    jobs: list[Job], max_parallel: int = 1, rerun: bool = False, metric: str = "val/rewards/accuracies"
) -> dict[str, int]:
    """Run the jobs' training processes, ``max_parallel`` at a time; returns each job's exit code.

    A job whose run finished (`rlhf_lab.leaderboard.resumable.run_finished`: a whole ``summary.json`` that
    says so) is skipped (exit code 0) unless ``rerun``; any other with checkpoints (interrupted, the parent
    killed included) resumes from them. Each process's output goes to
    ``<run dir>.log``; a finished run's wall time to ``<run dir>/wall_time.json``; the console gets a line per
    finished run with its ``metric``. Several processes at a time share the cores (``OMP_NUM_THREADS``,
    unless set).
    """
    codes: dict[str, int] = {}
    pending = []
    for job in jobs:
        if not rerun and run_finished(job.run_dir):
            log.info("leaderboard: %s already finished, kept", job.name)
            codes[job.name] = 0
        else:
            pending.append(job)
    parallel = max(1, max_parallel)
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    tally = Tally(len(pending))
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="leaderboard") as pool:
        finished = pool.map(lambda j: train_one(j, rerun, threads, metric, tally), pending)
        for job, code in zip(pending, finished, strict=True):
            codes[job.name] = code
    return codes


def train_one(
    job: Job,
    rerun: bool = False,
    threads: int | None = None,
    metric: str = "val/rewards/accuracies",
    tally: Tally | None = None,
) -> int:
    """Train one job (resuming it from its checkpoints unless ``rerun``); returns its exit code. Prints a
    line when it starts and one when it ends (its wall time and ``metric``; ``tally``: how many have)."""
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    resume = ["resume=true"] if not rerun and (job.run_dir / "checkpoints").is_dir() else []
    print(f"leaderboard: training {job.name}" + (" (resuming)" if resume else ""), flush=True)
    result = run_child(
        resume,
        command=job.command,
        run_dir=job.run_dir,
        env=child_env(),
        threads=threads,
        log_file=log_file(job),
        append=True,
    )
    count = f"[{tally.next()}] " if tally is not None else ""
    if result.ok:
        atomic_write_text(job.run_dir / TIMING_FILE, json.dumps({"wall_time_s": result.seconds}))
        done = f"{describe(job)} done in {result.seconds:.0f} s{score_text(result.summary, metric)}"
        print(f"leaderboard: {count}{done}", flush=True)
    else:
        # One line (the output is in the log it names); the board goes on and names every failure at the end.
        what = f"{describe(job)} ({job.name})"
        log.error(
            "leaderboard: %s%s",
            count,
            failure_line(what, result.returncode, result.log_file, result.timed_out),
        )
    return result.returncode


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
    split; the validation ones are the run's own) and greedy generations for ``samples`` of its prompts,
    written to ``<run>/eval/samples.jsonl``; the console gets one line per job saying where."""
    from rlhf_lab.evaluate import EvalOptions, evaluate

    for job in jobs:
        if codes.get(job.name) != 0 or not run_finished(job.run_dir):
            continue
        split = report_split(job)
        if _evaluated(job.run_dir, split) or (split == "val" and samples <= 0):
            continue
        options = EvalOptions(
            run_dir=job.run_dir,
            samples=samples,
            max_new_tokens=max_new_tokens,
            validate=split != "val",
            split=split if split != "val" else None,
            print_report=False,
        )
        with data_logs_hidden():
            metrics = evaluate(options)
        # The samples go to a file, not the console (a board's runs would print hundreds of lines).
        where = job.run_dir / "eval" / "samples.jsonl"
        scored = score_text(metrics, f"{split}/rewards/accuracies") if split != "val" else ""
        print(
            f"leaderboard: evaluated {describe(job)} on {split}{scored}; greedy samples in {where}",
            flush=True,
        )


@contextlib.contextmanager
def data_logs_hidden() -> Iterator[None]:
    """No data-layer info lines (rows read, layout): an evaluation rebuilds a run's data, and the run's own
    log already says what it read."""
    data_log = logging.getLogger("rlhf_lab.data")
    level = data_log.level
    data_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        data_log.setLevel(level)


def _evaluated(run_dir: Path, split: str) -> bool:
    """Whether ``<run>/eval`` is newer than the run and holds the split's metrics (``val``: the run's own)."""
    metrics_file = run_dir / "eval" / "metrics.json"
    if (
        not metrics_file.is_file()
        or metrics_file.stat().st_mtime < (run_dir / "summary.json").stat().st_mtime
    ):
        return False
    metrics = read_json_object(metrics_file)  # None: cut short by a kill, evaluated again
    return metrics is not None and (split == "val" or f"{split}/rewards/accuracies" in metrics)


def diverged(job: Job) -> bool:
    """Whether the job's run went non-finite (``run/diverged`` in its summary.json): it is never ranked."""
    summary = read_json_object(job.run_dir / "summary.json") or {}
    return bool(summary.get("run/diverged"))


def succeeded(job: Job, codes: dict[str, int]) -> bool:
    """Exited 0, finished (a whole summary.json that says so) and did not diverge."""
    summary = finished_summary(job.run_dir)
    return codes.get(job.name) == 0 and summary is not None and not summary.get("run/diverged")


def failures(jobs: list[Job], codes: dict[str, int]) -> list[str]:
    """One line per job whose process failed: what it was, its exit status, its log."""
    return [
        failure_line(f"{describe(job)} ({job.name})", codes[job.name], log_file(job))
        for job in jobs
        if codes.get(job.name, 0) != 0
    ]
