"""Stage chaining: ``stages`` (``experiment=sft_then_dpo``...) runs SFT, then preference training from its
export, in one command.

    python -m rlhf_lab experiment=sft_then_dpo data=suite data.source.task=in_context

Each stage is a normal run (``python -m rlhf_lab <overrides> <the stage's overrides>`` in its own process,
started by `rlhf_lab.launch.run_child`; its output is this command's).
Every stage but the last starts from the command line's model; each later stage starts from the previous
stage's export (``model=hub model.name_or_path=<export>``), so its reference, the initial policy, is the
model the previous stage trained. The last stage runs in the command's run directory, so the run directory
is that stage's (evaluate, analyse and resume it as any run). Earlier stages run in
``<paths.cache_dir>/stages/<name>-<key>``, keyed by everything that reaches them (their overrides, the
command line's, the previous stage's key): a sweep over the last stage's hyperparameters trains the SFT
stage once, and an interrupted stage resumes from its last checkpoint. ``<run dir>/stages.json`` lists
every stage's directory.

A kill of this command at any point (its stages die with it) loses nothing finished: a stage is finished
only when its ``summary.json`` says so (written last, after its export), so running the command again
reuses finished stages and resumes the interrupted one; one chain at a time per run directory (a lock
naming its process). A stage that fails stops the chain with one line naming it, its exit status and its
log (`rlhf_lab.leaderboard.resumable`).

Command-line overrides reach every stage, except ``algo.*``, which reach the last stage only (the SFT
stage's settings are in its own ``overrides``), and ``model=``/``model.*``, which reach the first stage
only (later stages load the previous export with its dtype and attention implementation).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.atomic import atomic_write_text
from rlhf_lab.cli import command_line_overrides, without
from rlhf_lab.errors import ConfigError
from rlhf_lab.launch import child_command, run_child
from rlhf_lab.leaderboard.resumable import (
    ChildFailed,
    child_env,
    directory_lock,
    run_finished,
    status_text,
)

log = logging.getLogger(__name__)

# Overrides of the command line the stages never see: the stages' own config and Hydra's.
NOT_FORWARDED = ("experiment=", "hydra.", "stages", "+stages", "~stages")


@dataclass
class Stage:
    """One stage: its name, where it runs and its overrides (``hydra.run.dir=`` last)."""

    name: str
    run_dir: Path
    overrides: list[str]

    @property
    def command(self) -> list[str]:
        """Its command line (`rlhf_lab.launch.child_command`)."""
        return child_command(self.overrides)

    @property
    def finished(self) -> bool:
        """Finished (a whole ``summary.json`` that says so, written after the export) with an export."""
        return run_finished(self.run_dir) and (self.run_dir / "export" / "config.json").is_file()


def forwardable(overrides: list[str]) -> list[str]:
    """The command-line overrides that go to the stages."""
    return without(overrides, NOT_FORWARDED)


def _for_stage(forwarded: list[str], first: bool, last: bool) -> list[str]:
    kept = []
    for override in forwarded:
        key = override.lstrip("+~")
        if key.startswith("algo.") and not last:
            continue
        if key.startswith(("model=", "model.")) and not first:
            continue
        kept.append(override)
    return kept


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _initialised_from(previous: Stage) -> list[str]:
    """The overrides that start a stage from ``previous``'s export (a text model)."""
    config = OmegaConf.load(previous.run_dir / "config.yaml")
    target = str(OmegaConf.select(config, "model._target_", default=""))
    if "Vision" in target:
        raise ConfigError(
            f"stages: {previous.name} trained a vision-language model ({target}); chaining stages supports text "
            "models only"
        )
    dtype = OmegaConf.select(config, "model.dtype", default="float32")
    attention = OmegaConf.select(config, "model.attn_implementation", default="sdpa")
    return [
        "model=hub",
        f"model.name_or_path={previous.run_dir / 'export'}",
        f"model.dtype={dtype}",
        f"model.attn_implementation={attention}",
    ]


def _specs(cfg: DictConfig) -> list[tuple[str, list[str]]]:
    stages = cfg.get("stages") or []
    if len(stages) < 2:
        raise ConfigError(f"stages: give at least two stages (name and overrides each); got {len(stages)}")
    specs = []
    for index, stage in enumerate(stages):
        name = stage.get("name")
        overrides = [str(o) for o in stage.get("overrides") or []]
        if not name or not [o for o in overrides if o.startswith("algo=")]:
            raise ConfigError(f"stages[{index}]: needs a name and an algo=<objective> in its overrides")
        specs.append((str(name), overrides))
    return specs


def run_stages(cfg: DictConfig, forwarded: list[str] | None = None) -> dict[str, Any]:
    """Run every stage in order (finished earlier stages are kept); returns the last stage's summary."""
    if forwarded is None:
        forwarded = command_line_overrides(NOT_FORWARDED)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    specs = _specs(cfg)
    with directory_lock(run_dir, "stages"):
        return _run_all(cfg, specs, forwarded, run_dir)


def _run_all(
    cfg: DictConfig, specs: list[tuple[str, list[str]]], forwarded: list[str], run_dir: Path
) -> dict[str, Any]:
    previous: Stage | None = None
    done: list[Stage] = []
    for index, (name, overrides) in enumerate(specs):
        first, last = index == 0, index == len(specs) - 1
        inputs = [*_for_stage(forwarded, first, last), *overrides]
        inputs += _initialised_from(previous) if previous is not None else []
        if last:
            stage_dir = run_dir
        else:
            key = _key(name, inputs, previous.run_dir.name if previous else None)
            stage_dir = Path(cfg.paths.cache_dir) / "stages" / f"{name}-{key}"
        stage = Stage(name, stage_dir, [*inputs, f"hydra.run.dir={stage_dir}"])
        atomic_write_text(
            run_dir / "stages.json",
            json.dumps([{"name": s.name, "run_dir": str(s.run_dir)} for s in [*done, stage]], indent=2),
        )
        # An earlier stage's directory is shared by every chain that reaches it with the same inputs (the jobs
        # of a parallel --multirun): one trains it, the others wait for it and reuse it.
        with directory_lock(stage_dir, "stage", wait=True) if not last else contextlib.nullcontext():
            if not last and stage.finished:
                print(f"stages: {name} already trained in {stage_dir}, reused", flush=True)
            else:
                # An interrupted stage (checkpoints, not finished: its parent killed too) resumes; a finished
                # last stage trains again, as any run started again in its directory, unless resume= is given.
                interrupted = (stage_dir / "checkpoints").is_dir() and not run_finished(stage_dir)
                _run(stage, resume=interrupted and not any(o.startswith("resume=") for o in inputs))
        done.append(stage)
        previous = stage
    return json.loads((run_dir / "summary.json").read_text())


def _run(stage: Stage, resume: bool) -> None:
    """Train the stage; its output goes to this process's (it is the run's own log).

    Raises:
        ChildFailed: It failed: one line naming it, its exit status and its log (its output is above).
    """
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    print(f"stages: training {stage.name} in {stage.run_dir}" + (" (resuming)" if resume else ""), flush=True)
    overrides = [*stage.overrides, *(["resume=true"] if resume else [])]
    result = run_child(overrides, run_dir=stage.run_dir, env=child_env())
    if not result.ok:
        # The child's log: Hydra's `<job name>.log` in its run directory (its console output is above).
        logs = sorted(stage.run_dir.glob("*.log"))
        shown = " ".join(o for o in stage.overrides if not o.startswith("hydra.run.dir="))
        logged = f"; its log: {logs[0]} (its output is above)" if logs else "; its output is above"
        raise ChildFailed(
            f"stages: {stage.name} ({shown}) failed ({status_text(result.returncode, result.timed_out)}) in "
            f"{stage.run_dir}{logged}; run the same command again to resume it from its last checkpoint"
        )
    print(f"stages: {stage.name} done in {result.seconds:.0f}s", flush=True)
