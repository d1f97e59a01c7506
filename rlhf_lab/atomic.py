"""Files replaced whole: a kill leaves the old file or the new one, never part of one (no torch import, so the
leaderboard, stages and sweeps use it without loading the training stack)."""

from __future__ import annotations

import os
from pathlib import Path

#: What a file being written is called beside its target: ``.<name>.tmp-<pid>``.
TEMPORARY = ".tmp-"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file beside it, flushed to disk, then renamed over ``path``."""
    staging = path.with_name(f".{path.name}{TEMPORARY}{os.getpid()}")
    with staging.open("w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staging, path)
