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

A stage may run ``python -m rlhf_lab.sample`` instead of training (``app: sample`` and its ``options``;
``experiment=rejection_sampling``): it samples from the model the next stage would start from, later
stages name its directory ``<sample>`` in their overrides, and, when it built its model from config
(``model=tiny``), the next training stage starts from that model. A stage that names its own ``data=``
gets none of the command line's ``data`` overrides.

Command-line overrides reach every stage, except ``algo.*``, which reach the last stage only (the SFT
stage's settings are in its own ``overrides``), and ``model=``/``model.*``, which reach the first stage
only (later stages load the previous export with its dtype and attention implementation).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
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
    read_json_object,
    run_finished,
    status_text,
)

log = logging.getLogger(__name__)

#: Apps a stage may run instead of a training run (``app:``): ``python -m rlhf_lab.<app>``.
STAGE_APPS = ("sample",)
# Overrides of the command line the stages never see: the stages' own config and Hydra's.
NOT_FORWARDED = ("experiment=", "hydra.", "stages", "+stages", "~stages")


@dataclass
class Stage:
    """One stage: its name, where it runs and its arguments (``hydra.run.dir=``, or ``out_dir=`` for a
    sampling stage, last).

    Attributes:
        app: None for a training run (``python -m rlhf_lab``); ``sample`` for ``python -m rlhf_lab.sample``.
    """

    name: str
    run_dir: Path
    overrides: list[str]
    app: str | None = None

    @property
    def command(self) -> list[str]:
        """Its command line (`rlhf_lab.launch.child_command`)."""
        if self.app is not None:
            return child_command(self.overrides, module=f"rlhf_lab.{self.app}")
        return child_command(self.overrides)

    @property
    def finished(self) -> bool:
        """Finished (a whole ``summary.json`` that says so, written after the export) with an export; a
        sampling stage: its ``summary.json``, written after its data files."""
        if self.app is not None:
            return (self.run_dir / "summary.json").is_file()
        return run_finished(self.run_dir) and (self.run_dir / "export" / "config.json").is_file()


@dataclass
class StageSpec:
    """A stage as the config gives it: a training run's ``overrides`` (with an ``algo=``), or a sampling
    stage's ``app: sample`` and ``options`` (`rlhf_lab.sample`'s)."""

    name: str
    overrides: list[str]
    app: str | None = None
    options: dict[str, Any] | None = None


def forwardable(overrides: list[str]) -> list[str]:
    """The command-line overrides that go to the stages."""
    return without(overrides, NOT_FORWARDED)


def stage_forwarded(forwarded: list[str], first: bool, last: bool) -> list[str]:
    """The command line's overrides one stage gets: ``algo.*`` only the last, ``model=``/``model.*`` only the
    first (a later one loads the previous export)."""
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


def initialised_from(previous: Stage) -> list[str]:
    """The overrides that start a stage from ``previous``'s export (a text model); a sampling stage's: the
    model it sampled from when that was built from config (``model.json``'s ``built``), else nothing (the
    command's model, or the export before it, stays the source)."""
    if previous.app is not None:
        record = read_json_object(previous.run_dir / "model.json") or {}
        if not record.get("built") or not record.get("name_or_path"):
            return []
        export, model = Path(str(record["name_or_path"])), record
    else:
        config = OmegaConf.load(previous.run_dir / "config.yaml")
        export, model = (
            previous.run_dir / "export",
            {
                "target": OmegaConf.select(config, "model._target_", default=""),
                "dtype": OmegaConf.select(config, "model.dtype", default="float32"),
                "attn_implementation": OmegaConf.select(config, "model.attn_implementation", default="sdpa"),
            },
        )
    target = str(model.get("target") or "")
    if "Vision" in target:
        raise ConfigError(
            f"stages: {previous.name} trained a vision-language model ({target}); chaining stages supports text "
            "models only"
        )
    return [
        "model=hub",
        f"model.name_or_path={export}",
        f"model.dtype={model.get('dtype') or 'float32'}",
        f"model.attn_implementation={model.get('attn_implementation') or 'sdpa'}",
    ]


def _hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar (strings quoted where the grammar needs it)."""
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][\w./-]*", text):
        return text
    # Backslashes are literal except before a quote (or the closing one), where they escape it.
    doubled = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, text)
    return "'" + doubled.replace("'", "\\'") + "'"


def _with_stage_dirs(overrides: list[str], done: list[Stage]) -> list[str]:
    """``<name>`` in a stage's overrides replaced by the directory of the earlier stage of that name."""
    for stage in done:
        overrides = [o.replace(f"<{stage.name}>", str(stage.run_dir)) for o in overrides]
    return overrides


def _specs(cfg: DictConfig) -> list[StageSpec]:
    stages = cfg.get("stages") or []
    if len(stages) < 2:
        raise ConfigError(f"stages: give at least two stages (name and overrides each); got {len(stages)}")
    specs = []
    for index, stage in enumerate(stages):
        name = stage.get("name")
        overrides = [str(o) for o in stage.get("overrides") or []]
        app = stage.get("app")
        if app is not None:
            if app not in STAGE_APPS or not name:
                raise ConfigError(
                    f"stages[{index}]: app={app} needs a name, and app is one of: {', '.join(STAGE_APPS)}"
                )
            if index == len(stages) - 1:
                raise ConfigError(f"stages[{index}]: the last stage trains (the run directory is its run)")
            options = OmegaConf.to_container(stage.get("options") or {}, resolve=True)
            assert isinstance(options, dict)
            specs.append(StageSpec(str(name), overrides, str(app), {str(k): v for k, v in options.items()}))
            continue
        if not name or not [o for o in overrides if o.startswith("algo=")]:
            raise ConfigError(f"stages[{index}]: needs a name and an algo=<objective> in its overrides")
        specs.append(StageSpec(str(name), overrides))
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


def _run_all(cfg: DictConfig, specs: list[StageSpec], forwarded: list[str], run_dir: Path) -> dict[str, Any]:
    source: Stage | None = None  # the stage whose model the next one starts from (None: the command's)
    done: list[Stage] = []
    for index, spec in enumerate(specs):
        last = index == len(specs) - 1
        inputs = [*_stage_overrides(forwarded, spec, first=source is None, last=last), *spec.overrides]
        inputs = _with_stage_dirs(inputs, done)
        from_previous = initialised_from(source) if source is not None else []
        inputs += from_previous
        if last:
            stage = _stage(spec.name, run_dir, inputs, spec.app)
        else:
            previous = done[-1].run_dir.name if done else None
            stage = cached_stage(cfg.paths.cache_dir, spec.name, inputs, previous, spec.app)
        atomic_write_text(
            run_dir / "stages.json",
            json.dumps([{"name": s.name, "run_dir": str(s.run_dir)} for s in [*done, stage]], indent=2),
        )
        if last:
            # A finished last stage trains again, as any run started again in its directory, unless resume=
            # is given.
            interrupted = (run_dir / "checkpoints").is_dir() and not run_finished(run_dir)
            _run(stage, resume=interrupted and not any(o.startswith("resume=") for o in inputs))
        else:
            train_cached(stage)
        done.append(stage)
        if spec.app is None or initialised_from(stage):
            source = stage
    return json.loads((run_dir / "summary.json").read_text())


def _stage(name: str, run_dir: Path, inputs: list[str], app: str | None = None) -> Stage:
    where = f"out_dir={run_dir}" if app is not None else f"hydra.run.dir={run_dir}"
    return Stage(name, run_dir, [*inputs, where], app)


def cached_stage(
    cache_dir: str | Path, name: str, inputs: list[str], previous: str | None = None, app: str | None = None
) -> Stage:
    """The stage ``name`` with these overrides in ``<cache_dir>/stages/<name>-<key>``, the key hashing
    everything that reaches it (``inputs``, the name, the directory name of the stage before it): the same
    inputs, the same directory, whoever asks (a stage chain, a leaderboard's supervised start)."""
    run_dir = Path(cache_dir) / "stages" / f"{name}-{_key(name, inputs, previous)}"
    return _stage(name, run_dir, inputs, app)


def train_cached(stage: Stage, log_file: Path | None = None, threads: int | None = None) -> bool:
    """Train a cached stage unless it finished (then reuse it); an interrupted one resumes. Returns whether
    it was reused.

    Its directory is shared by everything that reaches it with the same inputs (the jobs of a parallel
    --multirun, a leaderboard's tasks): one trains it, the others wait on its lock and reuse it.

    Args:
        stage: From `cached_stage`.
        log_file: Where its output goes (None: this process's output).
        threads: Cap its ``OMP_NUM_THREADS`` (several trained at a time).

    Raises:
        ChildFailed: It failed (one line naming it, its exit status and its log).
    """
    with directory_lock(stage.run_dir, "stage", wait=True):
        if stage.finished:
            done = "done" if stage.app else "trained"
            print(f"stages: {stage.name} already {done} in {stage.run_dir}, reused", flush=True)
            return True
        # Checkpoints and no finished summary: interrupted (its parent killed too). A sampling stage resumes
        # by itself (its chunks).
        interrupted = (stage.run_dir / "checkpoints").is_dir() and not run_finished(stage.run_dir)
        resume = interrupted and not any(o.startswith("resume=") for o in stage.overrides)
        _run(stage, resume, log_file, threads)
        return False


def _stage_overrides(forwarded: list[str], spec: StageSpec, first: bool, last: bool) -> list[str]:
    """The command line's overrides for ``spec`` (`stage_forwarded`); a stage that names its own ``data=`` gets
    none of the command's ``data`` overrides (they are the sampled prompts'); a sampling stage gets its
    options (as ``key=value``) after them."""
    kept = stage_forwarded(forwarded, first, last)
    if any(o.startswith("data=") for o in spec.overrides):
        kept = [o for o in kept if not o.lstrip("+~").startswith(("data=", "data."))]
    if spec.options:
        kept += [f"{key}={_hydra_value(value)}" for key, value in spec.options.items()]
    return kept


def _run(stage: Stage, resume: bool, log_file: Path | None = None, threads: int | None = None) -> None:
    """Train the stage; its output goes to this process's (it is the run's own log), or to ``log_file``.

    Raises:
        ChildFailed: It failed: one line naming it, its exit status and its log (its output is above).
    """
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    verb = "sampling" if stage.app is not None else "training"
    print(f"stages: {verb} {stage.name} in {stage.run_dir}" + (" (resuming)" if resume else ""), flush=True)
    overrides = [*stage.overrides, *(["resume=true"] if resume else [])]
    if stage.app is not None:
        command = child_command([], module=f"rlhf_lab.{stage.app}")
        result = run_child(overrides, command=command, run_dir=stage.run_dir, env=child_env())
    else:
        result = run_child(
            overrides, run_dir=stage.run_dir, env=child_env(), log_file=log_file, threads=threads
        )
    if not result.ok:
        # The child's log: Hydra's `<job name>.log` in its run directory (its console output is above).
        logs = [log_file] if log_file is not None else sorted(stage.run_dir.glob("*.log"))
        shown = " ".join(o for o in stage.overrides if not o.startswith(("hydra.run.dir=", "out_dir=")))
        logged = f"; its log: {logs[0]} (its output is above)" if logs else "; its output is above"
        raise ChildFailed(
            f"stages: {stage.name} ({shown}) failed ({status_text(result.returncode, result.timed_out)}) in "
            f"{stage.run_dir}{logged}; run the same command again to resume it from its last checkpoint"
        )
    print(f"stages: {stage.name} done in {result.seconds:.0f}s", flush=True)
