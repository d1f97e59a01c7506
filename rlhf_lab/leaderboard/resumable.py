"""What lets the leaderboard, the stage chain and the offline sweep survive a kill of the parent at any point.

- A child run is finished only when its ``summary.json`` reads whole and says so (``run/complete: true``,
  written by `rlhf_lab.train` after the export, last): a re-run redoes every other child (resuming it from its
  checkpoints), and a half-written or older ``summary.json`` is never counted.
- A child dies with its parent (`child_env` names the parent; `die_with_parent`, called by `rlhf_lab.train`,
  asks the kernel for a SIGKILL when it goes), so a re-run never trains beside an orphan in the same
  directory.
- `directory_lock`: one leaderboard (stage chain, sweep) per directory; the lock names its owner's process,
  a second one is a named error (`DirectoryInUse`), and a lock whose owner is gone is taken over with a
  warning.
- `ChildFailed`: a child that failed, named in one line (what it was, its exit status, its log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf_lab.errors import RunStopped

log = logging.getLogger(__name__)

#: The ``summary.json`` key a finished run sets last (`rlhf_lab.train`).
COMPLETE_KEY = "run/complete"
#: The environment variable naming a child run's parent process (read by `rlhf_lab.train.die_with_parent`).
PARENT_PID_ENV = "RLHF_LAB_PARENT_PID"


class ChildFailed(RunStopped):
    """A child run (a stage, a leaderboard run, a sweep trial) failed: its name, exit status and log."""


class DirectoryInUse(RunStopped):
    """Another live process holds the directory's lock (a second leaderboard on the same directory)."""


def read_json_object(path: Path) -> dict[str, Any] | None:
    """``path`` as a JSON object, or None (absent, unreadable, half-written, not an object)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The ``summary.json`` of a run that finished (whole, with ``run/complete: true``), else None."""
    summary = read_json_object(run_dir / "summary.json")
    return summary if summary is not None and summary.get(COMPLETE_KEY) is True else None


def run_finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` finished (`finished_summary`)."""
    return finished_summary(run_dir) is not None


def status_text(returncode: int, timed_out: bool = False) -> str:
    """``exit 1``, ``killed by SIGKILL`` (a negative status) or ``timed out``."""
    if timed_out:
        return "timed out"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


def failure_line(what: str, returncode: int, log_file: Path | None, timed_out: bool = False) -> str:
    """``<what> failed (exit 1); its output is in <log>``: one line."""
    logged = f"; its output is in {log_file}" if log_file is not None else ""
    return f"{what} failed ({status_text(returncode, timed_out)}){logged}"


def child_env() -> dict[str, str]:
    """The environment a child run gets on top of this process's: this process as its parent."""
    return {PARENT_PID_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """In a child run (`PARENT_PID_ENV` set by `child_env`): ask the kernel for a SIGKILL when the parent goes,
    so a parent killed mid-child leaves no orphan training on in the directory its re-run resumes. Linux only
    (``prctl``). The variable is removed, so that processes this one starts (DDP workers) do not read it."""
    parent = os.environ.pop(PARENT_PID_ENV, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent went before the request was made
        os.kill(os.getpid(), signal.SIGKILL)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts until its parent reaps it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _owner(lock: Path) -> dict[str, Any]:
    return read_json_object(lock) or {}


@contextlib.contextmanager
def directory_lock(directory: Path, what: str, wait: bool = False, poll: float = 1.0) -> Iterator[Path]:
    """Hold ``<directory>/.<what>.lock`` (its owner's pid, host and start time) while the block runs.

    The lock is created whole or not at all (written beside it, then hard-linked into place), so a kill
    never leaves a half-written one.

    Args:
        directory: The directory to hold.
        what: What holds it (``leaderboard``, ``stages``, ``sweep``): the lock's name and the messages'.
        wait: Wait (a line saying for whom, then every ``poll`` seconds) while another live process holds
            it, instead of raising.
        poll: Seconds between two looks while waiting.

    Raises:
        DirectoryInUse: A live process (or one on another host, which cannot be checked) holds it, and
            ``wait`` is false.
    """
    said = False
    while True:
        try:
            lock = _acquire(directory, what)
            break
        except DirectoryInUse:
            if not wait:
                raise
            if not said:
                owner = _owner(directory / f".{what}.lock").get("pid")
                print(
                    f"{what}: {directory} is in use by process {owner}: waiting for it to finish", flush=True
                )
                said = True
            time.sleep(poll)
    try:
        yield lock
    finally:
        if _owner(lock).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def _acquire(directory: Path, what: str) -> Path:
    """Create ``<directory>/.<what>.lock`` for this process (taking over a stale one); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / f".{what}.lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    staging = directory / f".{what}.lock.{os.getpid()}"
    staging.write_text(json.dumps(me))
    try:
        for _ in range(3):
            try:
                os.link(staging, lock)
                return lock
            except FileExistsError:
                owner = _owner(lock)
                pid, host = int(owner.get("pid") or 0), owner.get("host")
                if host not in (None, me["host"]) or process_alive(pid):
                    where = f" on {host}" if host not in (None, me["host"]) else ""
                    raise DirectoryInUse(
                        f"{what}: {directory} is in use by process {pid}{where} (its lock: {lock}); wait for it "
                        f"to finish, or give this {what} another directory (hydra.run.dir=...)"
                    ) from None
                # Renamed aside first: of two processes taking over the same stale lock, one wins.
                aside = directory / f".{what}.lock.stale-{os.getpid()}"
                with contextlib.suppress(FileNotFoundError):
                    os.replace(lock, aside)
                    aside.unlink()
                    log.warning(
                        "%s: taking over the lock %s of process %d, which is gone (killed?)", what, lock, pid
                    )
        raise DirectoryInUse(f"{what}: could not take the lock {lock}; another {what} keeps taking it")
    finally:
        staging.unlink(missing_ok=True)
