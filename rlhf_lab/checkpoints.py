"""Checkpoints that survive a killed run: atomic writes, safe reads, and the newest intact one on resume.

- `AtomicCheckpointIO` writes next to the target and renames: a kill mid-save leaves the previous file
  whole (never a 0-byte ``last.ckpt``), and the partial temporary file is removed on the next save.
- `read_checkpoint` loads with ``weights_only=True``: a checkpoint a user points at (``ckpt_path=``,
  ``evaluate weights=``) never runs code; an unreadable one is a `CheckpointError` naming the file.
- `newest_readable` picks the newest checkpoint of a run directory by global step (``last.ckpt`` on a tie)
  that reads, reporting those skipped.
- `atomic_directory_save` does for sharded checkpoints (DeepSpeed, FSDP2: a directory written by every rank)
  what `AtomicCheckpointIO` does for files: the ranks write a staging directory beside the target, which is
  renamed into place once complete; `remove_partial_files` removes (or, killed between the two renames,
  restores) what an interrupted save left.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from rlhf_lab.atomic import TEMPORARY as TEMPORARY
from rlhf_lab.atomic import atomic_write_text as atomic_write_text
from rlhf_lab.errors import ConfigError

log = logging.getLogger(__name__)

#: A sharded checkpoint directory being replaced: the previous one, moved aside until the new one is in place.
REPLACED = ".replaced"
#: The step in a best-k checkpoint's name (``step000004.ckpt``; Lightning adds ``-v1`` to a name it reuses).
STEP_NAME = re.compile(r"step(\d+)(?:-v\d+)?\.ckpt")


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


def read_checkpoint(path: Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only=True`` (tensors and plain data only); with
    ``mmap``, the tensors are mapped, not read (a look at the step and callback states costs no weights).

    Raises:
        CheckpointError: The file is missing, truncated, not a checkpoint, or holds pickled objects that would
            run code when loaded (refused, never executed).
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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
    """Delete what a killed save left in ``directory`` (one run writes there at a time): temporary files and
    staging directories; a sharded checkpoint moved aside for its replacement is restored when the kill came
    before the replacement was in place, removed otherwise."""
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.glob(f".*{TEMPORARY}*")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        log.info("removed %s, left by an interrupted save", path)
    for moved in sorted(directory.glob(f".*{REPLACED}")):
        target = moved.with_name(moved.name[1 : -len(REPLACED)])
        if target.exists():
            shutil.rmtree(moved, ignore_errors=True)
            removed.append(moved)
        else:
            os.rename(moved, target)
            log.info("restored %s: its replacement was interrupted", target)
    return removed


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            with open(Path(root) / name, "rb") as file:
                os.fsync(file.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def staging_directory(target: Path) -> Path:
    """Where a sharded save of ``target`` is written before it is renamed into place (the same on every rank)."""
    return target.with_name(f".{target.name}{TEMPORARY}save")


def atomic_directory_save(strategy: Any, filepath: Any, write: Callable[[Path], None]) -> None:
    """A sharded checkpoint written by every rank with ``write(directory)`` into a staging directory, then
    renamed into place by rank zero: a kill at any moment leaves the previous checkpoint whole or the new one.

    Collective: every rank calls it with the same ``filepath``.
    """
    target = Path(strategy.broadcast(str(filepath)))
    staging = staging_directory(target)
    if strategy.is_global_zero:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # a save killed before: never mixed into this one
    strategy.barrier("rlhf_lab.atomic_directory_save.start")
    write(staging)
    strategy.barrier("rlhf_lab.atomic_directory_save.written")
    if strategy.is_global_zero:
        _fsync_tree(staging)
        if target.is_file():  # a single-file checkpoint of an earlier run with another strategy
            target.unlink()
        moved = target.with_name(f".{target.name}{REPLACED}")
        if target.exists():
            shutil.rmtree(moved, ignore_errors=True)
            os.rename(target, moved)
        os.rename(
            staging, target
        )  # the moment the new checkpoint counts (a kill before: `moved` is restored)
        shutil.rmtree(moved, ignore_errors=True)
    strategy.barrier("rlhf_lab.atomic_directory_save.done")


def atomic_remove(path: Path) -> None:
    """Remove a checkpoint file or directory so that a kill never leaves part of it under its own name (a
    directory is renamed to a temporary name first, which the next start removes if this one is killed)."""
    if path.is_dir():
        doomed = path.with_name(f".{path.name}{TEMPORARY}remove")
        shutil.rmtree(doomed, ignore_errors=True)
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class AtomicDirectoryCheckpoints:
    """A sharding strategy's checkpoint directories written (`atomic_directory_save`) and removed
    (`atomic_remove`) atomically: mixed in before Lightning's strategy class (FSDP2's, DeepSpeed's)."""

    is_global_zero: bool

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        parent: Any = super()

        def write(directory: Path) -> None:
            parent.save_checkpoint(checkpoint, str(directory), storage_options)

        atomic_directory_save(self, filepath, write)

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            atomic_remove(Path(filepath))


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """What a checkpoint holds besides the weights (global step, loops, callback states), for a single-file
    checkpoint (its tensors mapped, not read) or a sharded directory (FSDP2's ``meta.pt``, DeepSpeed's model
    states file).

    Raises:
        CheckpointError: It does not read, or a directory holds neither.
    """
    if not path.is_dir():
        return read_checkpoint(path, mmap=True)
    # FSDP2 (Lightning's distributed checkpoint), DeepSpeed ZeRO-2, ZeRO-3 (rank 0's states hold the client's).
    parts = (
        "meta.pt",
        "checkpoint/mp_rank_00_model_states.pt",
        "checkpoint/zero_pp_rank_0_mp_rank_00_model_states.pt",
    )
    for part in parts:
        if (path / part).is_file():
            return read_checkpoint(path / part, mmap=True)
    raise CheckpointError(
        f"{path}: not a checkpoint directory (neither FSDP2's meta.pt nor DeepSpeed's states)"
    )


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """The run's checkpoints (files, or directories of a sharded strategy): ``last.ckpt`` first, then the
    best-k ones by the step in their names, newest first, then any others, newest first."""
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        return []
    paths = [path for path in directory.glob("*.ckpt") if not path.name.startswith(".")]

    def order(path: Path) -> tuple[int, int, int]:
        named = STEP_NAME.fullmatch(path.name)
        return (path.name == "last.ckpt", int(named.group(1)) if named else -1, path.stat().st_mtime_ns)

    return sorted(paths, key=order, reverse=True)


def newest_readable(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``run_dir`` by global step that reads (and its state, weights mapped, not
    read), or None: ``last.ckpt`` on a tie (a best-k checkpoint the run resumes from is one Lightning never
    deletes), never the newest file by modification time. Unreadable ones are skipped with a warning naming
    them and why."""
    newest: tuple[Path, dict[str, Any]] | None = None
    for path in checkpoint_candidates(run_dir):
        try:
            checkpoint = read_checkpoint_state(path)
        except CheckpointError as error:
            log.warning("skipping %s", error)
            continue
        if "global_step" not in checkpoint:
            log.warning("skipping %s: not a Lightning checkpoint (no global_step)", path)
            continue
        if newest is None or checkpoint["global_step"] > newest[1]["global_step"]:
            newest = path, checkpoint
    return newest
