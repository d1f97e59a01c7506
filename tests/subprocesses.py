"""Running the project's command-line modules as their own processes, as a user would (one place)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_module(
    module: str, *args: str, timeout: int = 600, env: dict[str, str] | None = None, new_session: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` from the repository root, with this environment (the test cache) and
    ``env``; with ``new_session``, in a session (and process group) of its own, which a kill of the group
    ends without reaching the test, and which a timeout ends whole (a hung rank is never left behind)."""
    command = [sys.executable, "-m", module, *args]
    environment = {**os.environ, **(env or {})}
    if not new_session:
        return subprocess.run(
            command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout, check=False
        )
    with subprocess.Popen(
        command,
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def built_once(name: str, *overrides: str) -> Path:
    """The export of a ``python -m rlhf_lab <overrides>`` run, trained once per shared test cache (a fixture's
    teacher, warm start or reward model), under a file lock so parallel workers wait instead of training it
    twice."""
    key = hashlib.sha256("|".join(overrides).encode()).hexdigest()[:8]  # other settings, another run
    root = Path(os.environ["RLHF_LAB_CACHE"]) / "test_runs" / f"{name}-{key}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "export" / "config.json").exists():
            result = python_module("rlhf_lab", *overrides, f"hydra.run.dir={root}")
            assert result.returncode == 0, result.stderr[-3000:]
    return root / "export"
