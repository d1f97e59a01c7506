"""``experiment=leaderboard``: every offline objective on the same data, model, budget and seeds, as one table.

Each (objective, seed) trains in its own process (``python -m rlhf_lab algo=<o> seed=<s> ...``, so one run's
failure or memory cannot touch the next) in ``<run dir>/runs/<o>_s<s>``; each finished policy is then
sampled greedily on held-out prompts (`rlhf_lab.evaluate`), and the runs are aggregated with
`rlhf_lab.analysis`. The table (``leaderboard.md``, ``leaderboard.csv``) has, per objective, the mean and
confidence interval over seeds of:

- held-out accuracy: ``val/rewards/accuracies``, each objective's own implicit reward (the reward model's
  score) preferring the chosen completion;
- reward margin: ``val/rewards/margins``, on each objective's own reward scale (DPO's ``beta * log-ratio``,
  SimPO's length-normalised ``beta * log-prob``, the reward model's score), so compare within a row;
- completion length: mean tokens (EOS excluded, capped at ``max_new_tokens``) of greedy generations for
  ``samples`` held-out prompts; n/a for the reward model, which does not generate;
- tokens/s: training throughput, the mean of the logged ``train/tokens_per_sec`` steps (the last step's
  value when no step was logged).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rlhf_lab import analysis
from rlhf_lab.errors import ConfigError

log = logging.getLogger(__name__)

#: Table columns: CSV name -> (metric in the per-run frame, markdown header, digits).
COLUMNS: dict[str, tuple[str, str, int]] = {
    "accuracy": ("val/rewards/accuracies", "held-out accuracy", 3),
    "margin": ("val/rewards/margins", "reward margin", 3),
    "completion_tokens": ("generation/mean_new_tokens", "completion length (tokens)", 1),
    "tokens_per_sec": ("tokens_per_sec", "tokens/s", 0),
}
# Overrides of the leaderboard's own command line that do not go to the runs: the leaderboard sets them.
NOT_FORWARDED = ("leaderboard.", "experiment=", "hydra.", "seed=", "algo=", "+leaderboard", "~leaderboard")


@dataclass
class Job:
    """One training run of the leaderboard."""

    objective: str
    seed: int
    run_dir: Path
    command: list[str]

    @property
    def name(self) -> str:
        return f"{self.objective}_s{self.seed}"


def forwardable(overrides: list[str]) -> list[str]:
    """The overrides that apply to every run: all but ``algo=``, ``seed=``, ``experiment=``, ``hydra.*``..."""
    return [o for o in overrides if not o.lstrip("+~").startswith(NOT_FORWARDED)]


def forwarded_overrides() -> list[str]:
    """The leaderboard's own command-line overrides that apply to every run (data, model, trainer...)."""
    from hydra.core.hydra_config import HydraConfig

    return forwardable(list(HydraConfig.get().overrides.task)) if HydraConfig.initialized() else []


def plan(cfg: DictConfig, out_dir: Path, forwarded: list[str]) -> list[Job]:
    """One job per (objective, seed), objectives in the configured order."""
    board = cfg.leaderboard
    known = {path.stem for path in (Path(__file__).resolve().parent.parent / "conf" / "algo").glob("*.yaml")}
    unknown = [str(o) for o in board.objectives if str(o) not in known]
    if unknown:
        raise ConfigError(f"leaderboard.objectives: unknown {unknown}; choose from {sorted(known)}")
    if not board.seeds:
        raise ConfigError("leaderboard.seeds is empty")
    per_objective = board.get("overrides") or {}
    jobs = []
    for objective in board.objectives:
        for seed in board.seeds:
            run_dir = out_dir / "runs" / f"{objective}_s{seed}"
            command = [
                sys.executable,
                "-m",
                "rlhf_lab",
                f"algo={objective}",
                f"seed={seed}",
                *forwarded,
                *[str(o) for o in board.get("shared_overrides") or []],
                *[str(o) for o in per_objective.get(str(objective)) or []],
                f"hydra.run.dir={run_dir}",
            ]
            jobs.append(Job(str(objective), int(seed), run_dir, command))
    return jobs


def train_all(jobs: list[Job], max_parallel: int = 1, rerun: bool = False) -> dict[str, int]:
    """Run the jobs' training processes, ``max_parallel`` at a time; returns each job's exit code.

    A job whose run directory already holds ``summary.json`` is skipped (exit code 0) unless ``rerun``.
    Each process's output goes to ``<run dir>.log``.
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
            output = (job.run_dir.parent / f"{job.name}.log").open("w")
            print(f"leaderboard: training {job.name}", flush=True)
            process = subprocess.Popen(job.command, stdout=output, stderr=subprocess.STDOUT, env=env)
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
                print(f"leaderboard: {job.name} done in {elapsed:.0f}s", flush=True)
            else:
                tail = (job.run_dir.parent / f"{job.name}.log").read_text()[-2000:]
                log.error("leaderboard: %s failed (exit %d):\n%s", job.name, process.returncode, tail)
        if running:
            time.sleep(0.2)
    return codes


def sample_all(jobs: list[Job], codes: dict[str, int], samples: int, max_new_tokens: int) -> None:
    """Greedy held-out generations of each finished policy (``<run>/eval/``), skipping reward models."""
    from rlhf_lab.evaluate import EvalOptions, evaluate

    for job in jobs:
        if codes.get(job.name) != 0 or samples <= 0:
            continue
        if (job.run_dir / "eval" / "metrics.json").is_file() and _eval_is_newer(job.run_dir):
            continue
        evaluate(
            EvalOptions(run_dir=job.run_dir, samples=samples, max_new_tokens=max_new_tokens, validate=False)
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


def collect(jobs: list[Job], codes: dict[str, int]) -> pd.DataFrame:
    """One row per finished (and not diverged) run: objective, seed, run_dir and the table's metrics."""
    finished = [job for job in jobs if succeeded(job, codes)]
    if not finished:
        return pd.DataFrame(columns=["objective", "seed", "run_dir", *(m for m, _, _ in COLUMNS.values())])
    runs = analysis.load_runs(*(job.run_dir for job in finished)).set_index("run_dir", drop=False)
    history = analysis.load_history(*(job.run_dir for job in finished))
    throughput = history[history["metric"] == "train/tokens_per_sec"].groupby("run_dir")["value"].mean()
    rows = []
    for job in finished:
        run = runs.loc[str(job.run_dir)]
        eval_file = job.run_dir / "eval" / "metrics.json"
        generated = json.loads(eval_file.read_text()) if eval_file.is_file() else {}
        rows.append(
            {
                "objective": job.objective,
                "seed": job.seed,
                "run_dir": str(job.run_dir),
                "val/rewards/accuracies": run.get("val/rewards/accuracies", math.nan),
                "val/rewards/margins": run.get("val/rewards/margins", math.nan),
                "generation/mean_new_tokens": generated.get("generation/mean_new_tokens", math.nan),
                "tokens_per_sec": throughput.get(run["run_dir"], run.get("train/tokens_per_sec", math.nan)),
            }
        )
    return pd.DataFrame(rows)


def table(runs: pd.DataFrame, jobs: list[Job], codes: dict[str, int], confidence: float) -> pd.DataFrame:
    """Per objective: ``seeds`` (finished runs), ``failed``, and ``<column>_mean/_low/_high`` per column."""
    metrics = [metric for metric, _, _ in COLUMNS.values()]
    summary = analysis.summarize(runs, metrics, confidence=confidence).set_index("objective")
    rows = []
    for objective in dict.fromkeys(job.objective for job in jobs):
        row: dict[str, Any] = {
            "objective": objective,
            "seeds": int(summary.loc[objective, "n"]) if objective in summary.index else 0,
            "failed": sum(
                codes.get(job.name) != 0 or diverged(job) for job in jobs if job.objective == objective
            ),
        }
        for column, (metric, _, _) in COLUMNS.items():
            for stat in ("mean", "low", "high"):
                key = f"{metric}/{stat}"
                has = objective in summary.index and key in summary.columns
                row[f"{column}_{stat}"] = float(summary.loc[objective, key]) if has else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean: float, low: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {mean - low:.{digits}f}"


def markdown(board: pd.DataFrame, confidence: float, samples: int) -> str:
    """The table as markdown: ``mean ± half-width`` of the confidence interval over seeds."""
    headers = ["objective", "seeds", *(header for _, header, _ in COLUMNS.values())]
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for _, row in board.iterrows():
        seeds = f"{row['seeds']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        cells = [str(row["objective"]), seeds]
        cells += [
            _cell(row[f"{column}_mean"], row[f"{column}_low"], digits)
            for column, (_, _, digits) in COLUMNS.items()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = (
        f"\nMean ± half-width of the {confidence:.0%} confidence interval ({analysis.ci_method()}) over seeds. "
        "Held-out accuracy and reward margin use each objective's own implicit reward (the reward model's "
        "score), so margins compare within a row, not across. Completion length: mean tokens of greedy "
        f"generations for {samples} held-out prompts (n/a for the reward model). tokens/s: training throughput.\n"
    )
    return "\n".join(lines) + "\n" + notes


def run_leaderboard(cfg: DictConfig) -> pd.DataFrame:
    """Train every (objective, seed), sample the policies, write the tables; returns the table."""
    board = cfg.leaderboard
    out_dir = Path(cfg.paths.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(board, out_dir / "leaderboard.yaml", resolve=True)
    jobs = plan(cfg, out_dir, forwarded_overrides())
    codes = train_all(jobs, int(board.get("max_parallel", 1)), bool(board.get("rerun", False)))
    sample_all(jobs, codes, int(board.samples), int(board.max_new_tokens))
    runs = collect(jobs, codes)
    confidence = float(board.get("confidence", 0.95))
    result = table(runs, jobs, codes, confidence)
    runs.to_csv(out_dir / "runs.csv", index=False)
    result.to_csv(out_dir / "leaderboard.csv", index=False)
    text = markdown(result, confidence, int(board.samples))
    (out_dir / "leaderboard.md").write_text(text)
    if len(runs):
        try:
            analysis.plot_objectives(runs, "val/rewards/accuracies", out=out_dir / "leaderboard.png")
        except Exception as error:  # the table is the result; a figure problem only warns
            log.warning("could not plot the leaderboard: %s", error)
    print(f"leaderboard: {out_dir.resolve()}\n{text}", flush=True)
    return result
