"""Checkpoints that survive a killed run: atomic writes, safe reads, and the newest intact one on resume.

- `AtomicCheckpointIO` writes next to the target and renames: a kill mid-save leaves the previous file
  whole (never a 0-byte ``last.ckpt``), and the partial temporary file is removed on the next save.
- `read_checkpoint` loads with ``weights_only=True``: a checkpoint a user points at (``ckpt_path=``,
  ``evaluate weights=``) never runs code; an unreadable one is a `CheckpointError` naming the file.
- `newest_readable` picks the newest checkpoint of a run directory that reads, reporting those skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from rlhf_lab.errors import ConfigError

log = logging.getLogger(__name__)

TEMPORARY = ".tmp-"


class CheckpointError(ConfigError):
    """A checkpoint file cannot be read (truncated, not a checkpoint, or it would run code)."""


def atomic_torch_save(value: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}{TEMPORARY}*"):  # left by a process killed mid-save
        stale.unlink(missing_ok=True)
    staging = path.with_name(f".{path.name}{TEMPORARY}{os.getpid()}")
    with staging.open("wb") as file:
        torch.save(value, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staging, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file beside it: a kill leaves the old file or the new one."""
    staging = path.with_name(f".{path.name}{TEMPORARY}{os.getpid()}")
    with staging.open("w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staging, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing atomically on the run directory's own filesystem (Lightning's
    own transaction stages the file in the system temp directory and copies it over when that is another
    filesystem, which a kill can leave half-written) and reading with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        return read_checkpoint(Path(path), map_location=map_location or "cpu")


def read_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only=True`` (tensors and plain data only).

    Raises:
        CheckpointError: The file is missing, truncated, not a checkpoint, or holds pickled objects that would
            run code when loaded (refused, never executed).
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            first = "it holds pickled Python objects, which loading would execute; refused"
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def remove_partial_files(directory: Path) -> list[Path]:
    """Delete the temporary files a killed save left in ``directory`` (one run writes there at a time)."""
    removed = (
        [path for path in directory.glob(f".*{TEMPORARY}*") if path.is_file()] if directory.is_dir() else []
    )
    for path in removed:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted save", path)
    return removed


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, newest first (``last.ckpt`` before others of the same age)."""
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        return []
    files = [path for path in directory.glob("*.ckpt") if path.is_file()]
    return sorted(files, key=lambda path: (path.stat().st_mtime_ns, path.name == "last.ckpt"), reverse=True)


def newest_readable(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``run_dir`` that reads (and its contents), or None; unreadable ones are skipped
    with a warning naming them and why."""
    for path in checkpoint_candidates(run_dir):
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as error:
            log.warning("skipping %s", error)
            continue
        if "global_step" not in checkpoint:
            log.warning("skipping %s: not a Lightning checkpoint (no global_step)", path)
            continue
        return path, checkpoint
    return None
