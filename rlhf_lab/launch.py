"""Starting the package's programs: child runs (`run_child`) and the small Hydra apps (`run_app`).

Child runs. The leaderboard, the stage chain and the offline sweep each train runs as child processes
(``python -m rlhf_lab <overrides>``), so one run's failure or memory cannot touch the next. `child_command` is
the one place that spells that command line, and `run_child` the one place that starts it: it sets the
environment (``threads`` caps ``OMP_NUM_THREADS`` when the caller runs several children at once), sends the
output to a log file or passes it through to this process's own (keeping the tail of its stderr either
way), applies a timeout, and reads the run's ``summary.json``. It returns a `ChildResult`; ``result.check()``
turns a failure into a `ChildError` whose message ends with that tail.

Small Hydra apps. ``python -m rlhf_lab.evaluate`` and ``python -m rlhf_lab.score`` take ``key=value``
overrides with training's grammar: `register_app` stores the app's options (a dataclass, ``???`` for the
required ones) in Hydra's ConfigStore with settings that keep Hydra out of the way (no ``outputs/``
directory, no ``.hydra/``, no change of directory, no logging setup), and `run_app` runs it on an argument
list and returns what the app returns.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.config import USER_CONFIG_DIRS_ENV
from rlhf_lab.errors import ConfigError

log = logging.getLogger(__name__)

#: The module a child run executes (``python -m rlhf_lab``).
MODULE = "rlhf_lab"
#: How much of a failed child's output its error message quotes.
TAIL_CHARS = 2000
RUN_DIR_OVERRIDE = "hydra.run.dir="


def child_command(overrides: Sequence[str] = (), module: str = MODULE) -> list[str]:
    """``[<this python>, "-m", "rlhf_lab", *overrides]``: the command line of a child run, which also searches
    the config directories the user gave the parent (``--config-dir``, ``hydra.searchpath``)."""
    overrides = [str(o) for o in overrides]
    dirs = [d for d in os.environ.get(USER_CONFIG_DIRS_ENV, "").split(os.pathsep) if d]
    if (
        dirs
        and module == MODULE
        and not any(o.lstrip("+").startswith("hydra.searchpath=") for o in overrides)
    ):
        overrides.append("hydra.searchpath=[" + ",".join(f"file://{d}" for d in dirs) + "]")
    return [sys.executable, "-m", module, *overrides]


class ChildError(RuntimeError):
    """A child run failed; the message names it, its exit status, and ends with the tail of its output."""


@dataclass(frozen=True)
class ChildResult:
    """What a finished child run left.

    Attributes:
        returncode: The process's exit status (negative: killed by that signal).
        run_dir: Its run directory (``None`` if neither given nor in a ``hydra.run.dir=`` override).
        summary: Its ``<run_dir>/summary.json``, parsed, after a successful exit; else ``None``.
        stderr_tail: The last characters it wrote to stderr (with a log file: to the log, stdout included).
        command: The command line that ran.
        seconds: Its wall time.
        log_file: Where its output went (``None``: to this process's own).
        timed_out: Whether it was stopped for running past the timeout.
    """

    returncode: int
    run_dir: Path | None
    summary: dict[str, Any] | None
    stderr_tail: str
    command: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log_file: Path | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def error(self, what: str = "child run") -> str:
        """``<what> failed (exit N) in <run dir>; output in <log>`` and the output's tail, one message."""
        status = "timed out" if self.timed_out else f"failed (exit {self.returncode})"
        where = f" in {self.run_dir}" if self.run_dir is not None else ""
        logged = f"; its output is in {self.log_file}" if self.log_file is not None else ""
        tail = self.stderr_tail.rstrip()
        return f"{what} {status}{where}{logged}" + (f"\n--- last output:\n{tail}" if tail else "")

    def check(self, what: str = "child run", hint: str = "") -> ChildResult:
        """This result if the run succeeded; else `ChildError` with `error` (and ``hint`` after its first line)."""
        if self.ok:
            return self
        first, _, rest = self.error(what).partition("\n")
        raise ChildError(first + (f"; {hint}" if hint else "") + (f"\n{rest}" if rest else ""))


def child_env(env: Mapping[str, str] | None = None, threads: int | None = None) -> dict[str, str]:
    """This process's environment plus ``env``; ``threads`` sets ``OMP_NUM_THREADS`` unless it is set (several
    children that each take every core thrash)."""
    merged = {**os.environ, **(env or {})}
    if threads is not None and "OMP_NUM_THREADS" not in merged:
        merged["OMP_NUM_THREADS"] = str(max(1, threads))
    return merged


def run_dir_of(command: Sequence[str]) -> Path | None:
    """The run directory a command line names (its last ``hydra.run.dir=`` override), or None."""
    values = [part[len(RUN_DIR_OVERRIDE) :] for part in command if part.startswith(RUN_DIR_OVERRIDE)]
    return Path(values[-1]) if values else None


def read_summary(run_dir: Path | None) -> dict[str, Any] | None:
    """``<run_dir>/summary.json`` as a dict, or None (no directory, no file, not a JSON object)."""
    path = run_dir / "summary.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        log.warning("could not read %s: %s", path, error)
        return None
    return summary if isinstance(summary, dict) else None


def run_child(
    overrides: Sequence[str] = (),
    *,
    command: Sequence[str] | None = None,
    run_dir: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    threads: int | None = None,
    timeout: float | None = None,
    log_file: Path | None = None,
    append: bool = False,
) -> ChildResult:
    """Run ``python -m rlhf_lab <overrides>`` to the end and report how it went.

    Args:
        overrides: The run's Hydra overrides (appended to ``command`` when one is given).
        command: A command line built elsewhere to run instead (a leaderboard job's, a sweep trial's from its
            YAML's ``command``, a test's stand-in); default `child_command`.
        run_dir: Where to read ``summary.json``; default the command line's ``hydra.run.dir=``.
        cwd: The child's working directory (default this process's).
        env: Environment variables to set for the child, over this process's.
        threads: Cap ``OMP_NUM_THREADS`` (when the environment does not set it).
        timeout: Seconds before the child is stopped (``timed_out``); None waits for it.
        log_file: Where the child's stdout and stderr go (created with its folder); None: to this process's
            stdout and stderr, as they come.
        append: Add to ``log_file`` rather than overwrite it.
    """
    argv = [*command, *map(str, overrides)] if command is not None else child_command(overrides)
    run_dir = run_dir if run_dir is not None else run_dir_of(argv)
    started = time.perf_counter()
    if log_file is not None:
        returncode, timed_out, tail = _run_logged(
            argv, log_file, append, cwd, child_env(env, threads), timeout
        )
    else:
        returncode, timed_out, tail = _run_passed_through(argv, cwd, child_env(env, threads), timeout)
    return ChildResult(
        returncode=returncode,
        run_dir=run_dir,
        summary=read_summary(run_dir) if returncode == 0 and not timed_out else None,
        stderr_tail=tail,
        command=argv,
        seconds=time.perf_counter() - started,
        log_file=log_file,
        timed_out=timed_out,
    )


def _wait(process: subprocess.Popen[bytes], timeout: float | None) -> tuple[int, bool]:
    """The exit status, and whether the process ran past ``timeout`` (then stopped: terminated, then killed)."""
    try:
        try:
            return process.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                return process.wait(timeout=10), True
            except subprocess.TimeoutExpired:
                process.kill()
                return process.wait(), True
    except BaseException:  # interrupted here: the child must not outlive this process
        process.kill()
        process.wait()
        raise


def _run_logged(
    argv: list[str],
    log_file: Path,
    append: bool,
    cwd: Path | None,
    env: dict[str, str],
    timeout: float | None,
) -> tuple[int, bool, str]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab" if append else "wb") as output:
        start = output.tell()
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        returncode, timed_out = _wait(process, timeout)
    with log_file.open("rb") as written:
        written.seek(max(start, log_file.stat().st_size - 4 * TAIL_CHARS))
        tail = written.read().decode("utf-8", errors="replace")[-TAIL_CHARS:]
    return returncode, timed_out, tail


def _run_passed_through(
    argv: list[str], cwd: Path | None, env: dict[str, str], timeout: float | None
) -> tuple[int, bool, str]:
    """stdout straight to this process's; stderr through a pipe, copied to ``sys.stderr`` as it comes, so
    its tail can be kept for the error message."""
    sys.stdout.flush()
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, cwd=cwd, env=env)
    tail: list[str] = [""]
    assert process.stderr is not None
    pump = threading.Thread(target=_copy, args=(process.stderr, sys.stderr, tail), daemon=True)
    pump.start()
    returncode, timed_out = _wait(process, timeout)
    pump.join(timeout=10)
    return returncode, timed_out, tail[0]


def _copy(source: IO[bytes], sink: IO[str], tail: list[str]) -> None:
    """Copy ``source`` to ``sink`` chunk by chunk (progress bars' carriage returns included), keeping the last
    `TAIL_CHARS` characters in ``tail[0]``."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with contextlib.suppress(OSError, ValueError):
        while chunk := source.read1(65536):  # type: ignore[attr-defined]
            text = decoder.decode(chunk)
            sink.write(text)
            sink.flush()
            tail[0] = (tail[0] + text)[-TAIL_CHARS:]
    source.close()


# -------------------------------------------------------------------------------------- small Hydra apps
_SCHEMA_SUFFIX = "_options"
T = TypeVar("T")


def register_app(name: str, schema: type, help_text: str) -> None:
    """Store the app ``name``'s config in Hydra's ConfigStore: the ``schema`` dataclass, ``help_text`` (and the
    options with their defaults) as ``--help``, and Hydra kept out of the way (it runs in the current
    directory, writes nothing, configures no logging)."""
    from hydra.core.config_store import ConfigStore

    template = help_text.replace("${", "\\${") + "\n== Options (key=value; ??? = required) ==\n\n$CONFIG"
    quiet = {
        "run": {"dir": "."},
        "output_subdir": None,
        "job": {"chdir": False, "name": name},
        "help": {"app_name": f"python -m rlhf_lab.{name}", "template": template},
    }
    no_logging = [{"override hydra/job_logging": "none"}, {"override hydra/hydra_logging": "none"}]
    store = ConfigStore.instance()
    store.store(name=name + _SCHEMA_SUFFIX, node=schema)
    store.store(name=name, node={"defaults": [name + _SCHEMA_SUFFIX, "_self_", *no_logging], "hydra": quiet})


def split_app_arguments(argv: Sequence[str], option_keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """An app's command line split into the app's arguments (its ``option_keys``, ``hydra.*``, flags such
    as ``--help``) and the rest, the overrides of a training run's config (``data=jsonl``)."""
    app: list[str] = []
    run: list[str] = []
    for arg in argv:
        key, sep, _ = arg.lstrip("+~").partition("=")
        own = key in option_keys or key == "hydra" or key.startswith(("hydra.", "hydra/"))
        (app if arg.startswith("-") or not sep or own else run).append(arg)
    return app, run


def require(cfg: DictConfig, app: str) -> None:
    """Raise `ConfigError` naming every required option (``???``) the command line left out."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        given = " ".join(f"{key}=..." for key in missing)
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"{', '.join(missing)} {verb} required: python -m rlhf_lab.{app} {given}")


def compose_app(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The app's options with ``overrides`` (Hydra's override grammar), without running it."""
    from hydra import compose, initialize

    with initialize(version_base="1.3", config_path=None):
        return compose(name, overrides=list(overrides))


def run_app(name: str, task: Callable[[DictConfig], T], argv: Sequence[str] | None = None) -> T | None:
    """Run ``task`` as the Hydra app ``name`` on ``argv`` (default ``sys.argv[1:]``); returns what it
    returns (None after ``--help`` or ``--cfg``)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    results: list[T] = []

    def app(cfg: DictConfig) -> None:
        results.append(task(cfg))

    # Hydra searches a task function's package for configs when it names a module (here ``rlhf_lab``, whose
    # ``data/`` folder would pass for a config group); named by its file, it searches nothing but Hydra's own
    # and the ConfigStore.
    app.__module__ = "__main__"
    hydra_app = hydra.main(version_base="1.3", config_path=None, config_name=name)(app)
    saved_argv, saved_hydra = sys.argv, HydraConfig.instance().cfg
    if argv is not None:
        sys.argv = [saved_argv[0] if saved_argv else "rlhf_lab", *argv]  # what Hydra parses
    try:
        hydra_app()
    finally:  # an app run in-process leaves no trace in sys.argv or Hydra's state
        sys.argv, HydraConfig.instance().cfg = saved_argv, saved_hydra
    return results[0] if results else None
