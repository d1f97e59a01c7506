"""Running the project's command-line modules as their own processes, as a user would (one place)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` from the repository root, with this environment (the test cache)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
