"""Run a W&B sweep YAML offline: the `sweeps` package proposes parameters, each trial is a normal run.

    python -m rlhf_lab.sweep sweeps/dpo_beta.yaml [count=N] [dir=DIR] [sweep_seed=S] [overrides ...]

(``sweep=<yaml>`` may replace the first argument; the older ``--count N``, ``--dir DIR``, ``--seed S`` still
work.)

The YAML is the one ``wandb sweep`` takes, so one file drives both paths. Its ``command`` (``${env}
${interpreter} -m rlhf_lab ${args_no_hyphens}``) is expanded here as the W&B agent would expand it, with
``${interpreter}`` this Python, then the Hydra overrides given after the YAML (applied to every trial, last
wins) and ``hydra.run.dir=<sweep dir>/trial_<i>``; `rlhf_lab.launch.run_child` runs it. Trials log with
``logger=csv`` unless an override names the logger. Each finished trial's metric (``summary.json``) goes back
to the search, so ``bayes`` learns from it; a failed trial is recorded as failed, named in one line (its
parameters, exit status and log), and the sweep goes on (every trial failed: ``error:``, exit status 2).
Run again in the same directory (``dir=``; with ``sweep_seed=`` for random and bayes, so the proposals
repeat), a sweep killed at any point keeps its finished trials (``trial.json`` records each trial's command;
a trial is finished when its ``summary.json`` says so) and resumes the interrupted one from its checkpoints;
one sweep at a time per directory (a lock naming its process). ``early_terminate`` (hyperband) needs the W&B
server and is not applied offline. The sweep directory gets ``sweep.yaml`` (what ran), one directory per
trial (with ``trial.log``, its output) and ``summary.csv``, rewritten after every trial.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from rlhf_lab.launch import MODULE, run_child

# What the W&B agent runs when a sweep YAML has no `command`, adapted to Hydra (no leading dashes).
DEFAULT_COMMAND = ["${env}", "${interpreter}", "-m", MODULE, "${args_no_hyphens}"]
# Random and Bayes searches never run out of proposals; W&B's agent would run until stopped.
DEFAULT_COUNT = 10
#: A trial's parameters and command line (and, once it finished, its wall time), in its directory.
TRIAL_FILE = "trial.json"
_ENVVAR = re.compile(r"^\$\{envvar:([A-Za-z0-9_]+)\}$")


class SweepConfigError(ValueError):
    """The sweep YAML is not a valid W&B sweep config or uses a command macro this runner cannot expand."""


@dataclass
class Trial:
    """One finished (or failed) trial.

    Args:
        index: Position in the sweep (``trial_<index>``).
        params: Every parameter of the trial (constants included), by sweep parameter name.
        run_dir: The trial's run directory.
        state: ``finished`` or ``failed``.
        metric: The sweep metric from ``summary.json`` (None without one, or when the run failed).
        returncode: Exit status of the trial's process.
        seconds: Wall time of the trial.
    """

    index: int
    params: dict[str, Any]
    run_dir: Path
    state: str
    metric: float | None
    returncode: int
    seconds: float


def _sweeps() -> Any:
    # sweeps 0.2 declares pydantic-v1 model options; pydantic 2 warns about them on every import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import sweeps

    return sweeps


def load_sweep_config(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML and check it against W&B's sweep schema.

    Raises:
        SweepConfigError: The schema violations, one a line.
    """
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SweepConfigError(f"{path} is not valid YAML: {problem}{where}") from None
    if not isinstance(config, dict):
        raise SweepConfigError(f"{path}: a sweep config is a YAML mapping")
    violations = _sweeps().schema_violations_from_proposed_config(config)
    if violations:
        raise SweepConfigError(f"{path} is not a valid W&B sweep config:\n  " + "\n  ".join(violations))
    return config


def format_value(value: Any) -> str:
    """A parameter value as a Hydra override value (what W&B's ``f"{name}={value}"`` gives, Hydra-spelt)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def expand_command(command: Sequence[str], params: dict[str, Any], program: str | None = None) -> list[str]:
    """Expand the W&B agent's macros in a sweep ``command`` for a local run.

    ``${env}`` is dropped (``${interpreter}`` is this interpreter's absolute path, so nothing needs looking
    up), ``${args_no_hyphens}`` is ``name=value`` per parameter, ``${args_append_hydra}`` /
    ``${args_override_hydra}`` the same with ``+`` / ``++``, ``${envvar:NAME}`` the environment variable.

    Raises:
        SweepConfigError: A macro the agent has that makes no sense for a Hydra program (``${args}``, ...).
    """
    pairs = [f"{name}={format_value(value)}" for name, value in params.items()]
    macros: dict[str, list[str]] = {
        "${env}": [],
        "${interpreter}": [sys.executable],
        "${args_no_hyphens}": pairs,
        "${args_append_hydra}": [f"+{pair}" for pair in pairs],
        "${args_override_hydra}": [f"++{pair}" for pair in pairs],
    }
    if program is not None:
        macros["${program}"] = [program]
    expanded: list[str] = []
    for part in map(str, command):
        envvar = _ENVVAR.match(part)
        if envvar:
            expanded.append(os.environ.get(envvar.group(1), ""))
        elif part in macros:
            expanded.extend(macros[part])
        elif part.startswith("${"):
            raise SweepConfigError(
                f"command macro {part} is not supported offline; use one of: {', '.join(sorted(macros))}"
            )
        else:
            expanded.append(part)
    return expanded


def _plain(value: Any) -> Any:
    """NumPy scalars (what random and bayes proposals hold) as Python numbers."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)) else value


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def trial_command(
    sweep_config: dict[str, Any], params: dict[str, Any], overrides: Sequence[str], run_dir: Path
) -> list[str]:
    """The command line of one trial: the sweep's command, the user's overrides, the trial's run dir."""
    command = expand_command(
        sweep_config.get("command") or DEFAULT_COMMAND, params, sweep_config.get("program")
    )
    # A sweep YAML asks for W&B (it has to, online); offline the CSV logger is enough, unless asked.
    if not any(_override_key(o) == "logger" for o in overrides):
        command.append("logger=csv")
    return [*command, *overrides, f"hydra.run.dir={run_dir}"]


def read_metric(run_dir: Path, name: str | None) -> float | None:
    """``summary.json[name]`` of a finished run, or None (no metric configured, no file or a half-written
    one, no finite value)."""
    from rlhf_lab.leaderboard.resumable import read_json_object

    summary = read_json_object(run_dir / "summary.json")
    if name is None or summary is None:
        return None
    value = summary.get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_process(command: list[str], log_file: Path) -> int:
    """Run a trial's command (`rlhf_lab.launch.run_child`) with its output in ``log_file``; returns the exit
    status."""
    from rlhf_lab.leaderboard.resumable import child_env

    return run_child(command=command, log_file=log_file, env=child_env()).returncode


def searched_names(sweep_config: dict[str, Any]) -> list[str]:
    """Names of the parameters the search varies (constants excluded), in the YAML's order."""
    return [name for name, spec in sweep_config["parameters"].items() if "value" not in spec]


def run_sweep(
    sweep_config: dict[str, Any],
    sweep_dir: Path,
    overrides: Sequence[str] = (),
    count: int | None = None,
    runner: Callable[[list[str], Path], int] | None = None,
    echo: Callable[[str], None] = print,
) -> list[Trial]:
    """Propose, run and score trials until ``count`` (or the grid) is exhausted.

    Args:
        sweep_config: A validated sweep config (`load_sweep_config`).
        sweep_dir: Where trials and ``summary.csv`` go.
        overrides: Hydra overrides for every trial.
        count: Most trials to run; None: the whole grid, or `DEFAULT_COUNT` for random and bayes.
        runner: Runs a command with its output in a log file and returns the exit status (`run_process`).
        echo: Where progress lines go.
    """
    sweeps = _sweeps()
    runner = runner or run_process
    method = sweep_config["method"]
    if count is None:
        count = sys.maxsize if method == "grid" else DEFAULT_COUNT
    searched = searched_names(sweep_config)
    for override in overrides:
        if _override_key(override) in searched:
            echo(f"note: {override} replaces the swept parameter {_override_key(override)} in every trial")
    from rlhf_lab.leaderboard.resumable import directory_lock

    # One sweep at a time in a directory; run again in it, a sweep keeps its finished trials.
    with directory_lock(sweep_dir, "sweep"):
        # The config as run (still a valid sweep YAML), with the offline arguments as a comment.
        header = f"# offline sweep, overrides for every trial: {' '.join(overrides) or '(none)'}\n"
        (sweep_dir / "sweep.yaml").write_text(header + yaml.safe_dump(sweep_config, sort_keys=False))
        return _run_trials(sweeps, sweep_config, sweep_dir, overrides, count, runner, echo)


def _run_trials(
    sweeps: Any,
    sweep_config: dict[str, Any],
    sweep_dir: Path,
    overrides: Sequence[str],
    count: int,
    runner: Callable[[list[str], Path], int],
    echo: Callable[[str], None],
) -> list[Trial]:
    from rlhf_lab.atomic import atomic_write_text
    from rlhf_lab.leaderboard.resumable import read_json_object, run_finished, status_text

    metric = sweep_config.get("metric", {}).get("name")
    searched = searched_names(sweep_config)
    runs: list[Any] = []
    trials: list[Trial] = []
    while len(trials) < count:
        proposal = sweeps.next_run(sweep_config, runs)
        if proposal is None:  # grid exhausted
            break
        params = {name: _plain(spec["value"]) for name, spec in proposal.config.items()}
        index = len(trials)
        run_dir = sweep_dir / f"trial_{index}"
        command = trial_command(sweep_config, params, overrides, run_dir)
        shown = " ".join(f"{name}={format_value(params[name])}" for name in searched)
        # A trial of the same command that finished (its summary.json says so) is kept; one cut short (the
        # sweep killed) resumes from its checkpoints; anything else in its directory is not counted.
        record = read_json_object(run_dir / TRIAL_FILE) or {}
        same = record.get("command") == command
        if same and run_finished(run_dir):
            echo(f"trial {index}: {shown} (finished earlier, kept)")
            returncode, seconds = 0, float(record.get("seconds") or 0.0)
        else:
            resume = same and (run_dir / "checkpoints").is_dir()
            if not resume:
                (run_dir / "summary.json").unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / TRIAL_FILE, json.dumps({"params": params, "command": command}))
            echo(f"trial {index}: {shown}" + (" (resuming)" if resume else ""))
            start = time.perf_counter()
            returncode = runner([*command, *(["resume=true"] if resume else [])], run_dir / "trial.log")
            seconds = time.perf_counter() - start
            if returncode == 0:
                record = {"params": params, "command": command, "seconds": seconds}
                atomic_write_text(run_dir / TRIAL_FILE, json.dumps(record))
        value = read_metric(run_dir, metric) if returncode == 0 else None
        state = "finished" if returncode == 0 else "failed"
        trials.append(Trial(index, params, run_dir, state, value, returncode, seconds))
        proposal.state = sweeps.RunState.finished if returncode == 0 else sweeps.RunState.failed
        proposal.summary_metrics = {metric: value} if metric and value is not None else {}
        runs.append(proposal)
        result = f"{metric}={value:.4f}" if value is not None else "no metric"
        if returncode != 0:
            result = f"failed ({status_text(returncode)}): {shown}; its output is in {run_dir / 'trial.log'}"
        echo(f"trial {index}: {result} ({seconds:.1f} s)")
        write_summary(trials, sweep_config, sweep_dir / "summary.csv")
    return trials


def summary_table(trials: Sequence[Trial], sweep_config: dict[str, Any]) -> Any:
    """One row per trial: trial, state, searched parameters, metric, seconds, run_dir (a DataFrame)."""
    import pandas as pd

    metric = sweep_config.get("metric", {}).get("name", "metric")
    names = searched_names(sweep_config)
    rows = [
        {
            "trial": trial.index,
            "state": trial.state,
            **{name: trial.params.get(name) for name in names},
            metric: trial.metric,
            "seconds": round(trial.seconds, 1),
            "run_dir": str(trial.run_dir),
        }
        for trial in trials
    ]
    return pd.DataFrame(rows, columns=["trial", "state", *names, metric, "seconds", "run_dir"])


def write_summary(trials: Sequence[Trial], sweep_config: dict[str, Any], path: Path) -> None:
    """``summary.csv``, written beside it and swapped in: a kill leaves the old table or the new one."""
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    summary_table(trials, sweep_config).to_csv(staging, index=False)
    os.replace(staging, path)


def best_trial(trials: Sequence[Trial], sweep_config: dict[str, Any]) -> Trial | None:
    """The finished trial with the best metric for the sweep's goal (None if no trial has a metric)."""
    scored = [(trial.metric, trial) for trial in trials if trial.metric is not None]
    if not scored:
        return None
    maximize = sweep_config.get("metric", {}).get("goal", "minimize") == "maximize"
    pick = max if maximize else min
    return pick(scored, key=lambda pair: pair[0])[1]


def default_sweep_dir(yaml_path: str | Path) -> Path:
    return Path("sweeps_out") / Path(yaml_path).stem / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


#: The runner's own ``key=value`` options and the flags they stand for; any other ``key=value`` is an override
#: of every trial (``seed=S`` is the trials' training seed, ``sweep_seed=S`` the proposals').
OPTION_FLAGS = {"count": "--count", "dir": "--dir", "sweep_seed": "--seed"}


def flag_arguments(argv: Sequence[str]) -> list[str]:
    """The command line with the runner's Hydra-style options as the flags `main` parses: ``count=4`` ->
    ``--count 4``, ``sweep=<yaml>`` -> the YAML; trial overrides (``trainer.max_steps=20``) as they are."""
    translated: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in OPTION_FLAGS:
            translated += [OPTION_FLAGS[key], value]
        elif sep and key == "sweep":
            translated.insert(0, value)
        else:
            translated.append(arg)
    return translated


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_lab.sweep",
        usage="%(prog)s SWEEP_YAML [count=N] [dir=DIR] [sweep_seed=S] [key=value ...]",
        description="Run a W&B sweep YAML locally, one rlhf_lab run per trial (no W&B server needed). "
        "Options are key=value like every rlhf_lab command (count=12 dir=sweeps_out/simpo sweep_seed=0); "
        "every other key=value is a Hydra override of every trial (seed=S is the trials' training seed). "
        "The flags --count, --dir, --seed do the same as count=, dir=, sweep_seed=.",
    )
    parser.add_argument("sweep", help="sweep YAML, e.g. sweeps/dpo_beta.yaml (or sweep=<yaml>)")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides applied to every trial, e.g. trainer.max_steps=20"
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help=f"count=N: most trials (default: the grid, or {DEFAULT_COUNT})",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="dir=DIR: the sweep directory (default: sweeps_out/...)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="sweep_seed=S: seeds random and bayes proposals"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(flag_arguments(sys.argv[1:] if argv is None else argv))

    try:
        sweep_config = load_sweep_config(args.sweep)
    except (OSError, SweepConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.seed is not None:
        # The `sweeps` package draws from both generators.
        random.seed(args.seed)
        import numpy as np

        np.random.seed(args.seed)
    sweep_dir = args.dir or default_sweep_dir(args.sweep)
    print(f"sweep directory: {sweep_dir.resolve()}", flush=True)

    def echo(line: str) -> None:
        print(line, flush=True)

    from rlhf_lab.errors import RunStopped

    try:
        trials = run_sweep(sweep_config, sweep_dir, args.overrides, args.count, echo=echo)
    except (SweepConfigError, RunStopped) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = summary_table(trials, sweep_config)
    print("\n" + table.drop(columns="run_dir").to_string(index=False))
    best = best_trial(trials, sweep_config)
    if best is not None:
        print(f"\nbest: trial {best.index} ({best.run_dir})")
    print(f"summary: {(sweep_dir / 'summary.csv').resolve()}")
    failed = [trial for trial in trials if trial.state == "failed"]
    if trials and len(failed) == len(trials):
        first = failed[0]
        print(
            f"error: every trial failed; the first, trial {first.index}, with "
            f"{' '.join(f'{k}={format_value(first.params[k])}' for k in searched_names(sweep_config))}: exit "
            f"{first.returncode}; "
            f"its output is in {first.run_dir / 'trial.log'}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
