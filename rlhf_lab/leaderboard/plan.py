"""Which runs a leaderboard trains: objectives x tasks x seeds (x grid points), each a `Job` with its command line."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.cli import without
from rlhf_lab.config import CONF_DIR
from rlhf_lab.errors import ConfigError
from rlhf_lab.launch import child_command

# Overrides of the leaderboard's own command line that do not go to the runs: the leaderboard sets them.
NOT_FORWARDED = ("leaderboard.", "experiment=", "hydra.", "seed=", "algo=", "+leaderboard", "~leaderboard")


@dataclass
class Job:
    """One training run of the leaderboard.

    Attributes:
        objective: The objective's entry name (a ``conf/algo`` option or a ``leaderboard.variants`` name).
        seed: The run's seed.
        run_dir: Its run directory.
        command: The training command line (`rlhf_lab.launch.child_command`).
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
    known = {path.stem for path in (CONF_DIR / "algo").glob("*.yaml")}
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
    """Task name -> its overrides; ``{"": []}`` (the command line's data) without ``leaderboard.tasks``. A task
    set to null is left out (a config that inherits the suite's tasks drops some: ``two_hop: null``)."""
    configured = board.get("tasks") or {}
    named = {
        str(name): [str(o) for o in overrides]
        for name, overrides in configured.items()
        if overrides is not None
    }
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
    starts: dict[str, list[str]] | None = None,
) -> list[Job]:
    """The jobs, objectives in the configured order within each task.

    Without ``chosen``: every grid point on the tuning seeds, and (objectives without a grid) every seed.
    With ``chosen`` (``(task, objective) -> setting``): the chosen setting on every seed. ``starts``: task
    -> the overrides that start its runs from its SFT model (`rlhf_lab.leaderboard.start`); the command
    line's ``model`` overrides then went to that model, not to the runs.
    """
    board = cfg.leaderboard
    entries = _entries(board)
    if not board.seeds:
        raise ConfigError("leaderboard.seeds is empty")
    tuning = tune_seeds(board)
    jobs = []
    for task, objective in itertools.product(tasks(board), entries):
        settings = grid_settings(board, objective)
        for setting in settings if chosen is None else [chosen[(task, objective)]]:
            for seed in [int(s) for s in board.seeds]:
                if chosen is None and len(settings) > 1 and seed not in tuning:
                    continue
                run_dir = out_dir / "runs" / job_name(task, objective, setting, seed)
                start = (starts or {}).get(task) or []
                overrides = _overrides(
                    board, task, objective, entries[objective], forwarded, setting, seed, start
                )
                command = child_command([*overrides, f"hydra.run.dir={run_dir}"])
                jobs.append(Job(objective, seed, run_dir, command, task, dict(setting)))
    return jobs


def _overrides(
    board: DictConfig,
    task: str,
    objective: str,
    picks: list[str],
    forwarded: list[str],
    setting: dict[str, Any],
    seed: int,
    start: list[str] | None = None,
) -> list[str]:
    """One run's overrides: its objective and seed, the command line's, the task's, the shared ones, its
    start (the task's SFT export), the objective's recipe, the grid point."""
    per_objective = board.get("overrides") or {}
    if start:
        forwarded = [o for o in forwarded if not o.lstrip("+~").startswith(("model=", "model."))]
    return [
        *picks,
        f"seed={seed}",
        *forwarded,
        *tasks(board)[task],
        *[str(o) for o in board.get("shared_overrides") or []],
        *(start or []),
        *[str(o) for o in per_objective.get(objective) or []],
        *[f"{key}={value}" for key, value in setting.items()],
    ]
