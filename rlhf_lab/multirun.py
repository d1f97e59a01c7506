"""The table at the end of a ``--multirun``: one row per job, its overrides and its held-out metrics.

`MultirunSummary` is a Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``): when the sweep ends it
reads each job's overrides (``<job>/.hydra/overrides.yaml``) and ``summary.json``, writes
``<sweep dir>/summary.csv`` and ``summary.md``, and prints the table. It works for any launcher or sweeper
(the jobs' directories are read, not their return values).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


@dataclass
class Job:
    """One finished job of a sweep."""

    number: int
    directory: Path
    overrides: dict[str, str]
    metrics: dict[str, float | None] = field(default_factory=dict)
    status: str = "ok"


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def read_job(directory: Path) -> Job:
    """The job in ``directory``: its number, task overrides and held-out metrics (from ``summary.json``)."""
    import yaml

    hydra_dir = directory / ".hydra"
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    number = int(directory.name) if directory.name.isdigit() else -1
    hydra_file = hydra_dir / "hydra.yaml"
    if hydra_file.is_file():
        job = (yaml.safe_load(hydra_file.read_text()).get("hydra") or {}).get("job") or {}
        number = int(job.get("num", number))
    result = Job(number, directory, dict(_split(str(o)) for o in overrides or []))
    summary_file = directory / "summary.json"
    if not summary_file.is_file():
        result.status = "no summary.json"
        return result
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError) as error:
        result.status = f"unreadable summary.json: {error}"
        return result
    result.metrics = {
        key: value
        for key, value in summary.items()
        if key.startswith(("val/", "val_start/")) or key == "trainer/global_step"
    }
    if summary.get("run/diverged"):
        result.status = "diverged"
    elif summary.get("run/learned") is False:  # rlhf_lab.diagnostics.learned
        result.status = "did not learn"
    return result


def find_jobs(sweep_dir: Path) -> list[Job]:
    """The jobs under ``sweep_dir`` (each a directory with Hydra's ``.hydra/``), by job number."""
    found = {path.parent.parent for path in sweep_dir.glob("**/.hydra/overrides.yaml")}
    # A job's own child runs (a leaderboard's, a stage chain's) have a .hydra/ too: only outermost directories.
    jobs = [directory for directory in found if not any(parent in found for parent in directory.parents)]
    return sorted(
        (read_job(directory) for directory in jobs), key=lambda job: (job.number, str(job.directory))
    )


def _cell(value: Any, digits: int | None) -> str:
    """A CSV or table cell: ``nan`` for a missing or non-finite value, floats to ``digits`` places if given."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


def _metric_cell(job: Job, key: str, readable: bool) -> str:
    if key not in job.metrics:
        return ""
    if not readable:
        return _cell(job.metrics[key], None)
    start = "val_start/" + key.removeprefix("val/")
    end = _cell(job.metrics[key], 4)
    return f"{_cell(job.metrics[start], 4)} -> {end}" if start in job.metrics else end


def table(jobs: list[Job], readable: bool) -> tuple[list[str], list[list[str]]]:
    """Header and rows: job, overrides, status, metrics. Readable: only the overrides that differ between
    jobs, and each held-out metric as ``start -> end`` (4 decimals); else every override and value."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    metrics = list(dict.fromkeys(key for job in jobs for key in job.metrics))
    if readable:
        keys = [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]
        metrics = [key for key in metrics if not key.startswith("val_start/")]
    # Held-out metrics first (alphabetically), then the step-0 ones and the step count.
    metrics.sort(key=lambda key: (not key.startswith("val/"), key))
    header = ["job", *keys, "status", *metrics]
    rows = [
        [
            str(job.number),
            *(job.overrides.get(key, "") for key in keys),
            job.status,
            *(_metric_cell(job, key, readable) for key in metrics),
        ]
        for job in jobs
    ]
    return header, rows


def markdown(jobs: list[Job]) -> str:
    """The sweep as a Markdown table (overrides common to every job listed above it)."""
    header, rows = table(jobs, readable=True)
    common = {
        key: value
        for key, value in (jobs[0].overrides.items() if jobs else ())
        if all(job.overrides.get(key) == value for job in jobs)
    }
    lines = [f"{len(jobs)} jobs" + (": " + " ".join(f"{k}={v}" for k, v in common.items()) if common else "")]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> str | None:
    """Write ``summary.csv`` and ``summary.md`` for the sweep in ``sweep_dir``; returns the Markdown (None
    when no job is found)."""
    jobs = find_jobs(sweep_dir)
    if not jobs:
        return None
    header, rows = table(jobs, readable=False)
    with (sweep_dir / "summary.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    text = markdown(jobs)
    (sweep_dir / "summary.md").write_text(text)
    return text


class MultirunSummary(Callback):
    """Hydra callback: the sweep's table, written to the sweep directory and printed, when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        text = write_summary(sweep_dir)
        if text is not None:
            print(f"\nmultirun summary ({sweep_dir / 'summary.csv'}):\n{text}", flush=True)
