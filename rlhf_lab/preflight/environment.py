"""The machine a run writes to and builds on, checked before training.

- **Writable directories**: the run directory (``paths.run_dir``) and the cache (``paths.cache_dir``, which may
  be on another filesystem) must take a file: a real write is tried (``os.access`` says yes to root on a
  read-only mount's files, and nothing about a full disk). A directory that does not exist yet is checked
  at its nearest existing parent, where it would be created; nothing is left behind.
- **Free space**: what the run writes to its directory (`run_writes`: each checkpoint holds the trainable
  weights and their optimiser state; at most ``checkpoint.save_top_k`` best ones, ``last.ckpt`` and one
  being written beside the file it replaces; then the export) against the free space of the run directory's
  filesystem, plus what the run's own old checkpoints and export hold (a resume replaces them). Less than
  the estimate stops the run; less than `SPACE_MARGIN` times it is warned about (the estimate leaves out
  logs and samples, and other processes write too). A disk that fills during the run is not checked here: a
  failed checkpoint write leaves the previous ``last.ckpt`` in place (atomic writes, `rlhf_lab.checkpoints`).
- **Stale build locks** (DeepSpeed runs): torch builds a JIT extension (DeepSpeed's ops) under a ``lock`` file
  in the op's build directory (``$TORCH_EXTENSIONS_DIR/<op>/`` or
  ``~/.cache/torch_extensions/<py tag>_<accelerator>/<op>/``) and removes it when done; a build killed
  midway leaves it behind, and every later build of that op waits for it forever, silently. The builder
  keeps the lock file open for the whole build, and ninja and the compiler run in the directory, so a lock
  that no process holds open or works beside, in a directory unchanged for `BUILD_QUIET_S`, is stale: the
  run stops naming it. It is not removed for you: a build on another machine sharing the directory (a
  network home) is invisible to this check but for the quiet period, and removing its lock would let two
  builds overwrite each other. A lock that a live process holds (or whose directory is still changing) is
  waited on, with a message naming it and the builder every `WAIT_MESSAGE_S`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rlhf_lab.errors import ConfigError
from rlhf_lab.preflight.memory import Plan, optimizer_bytes, trainable

log = logging.getLogger(__name__)

#: Below this many times the estimated writes, the free space is warned about.
SPACE_MARGIN = 1.5
#: A cache on another filesystem with less free space than this is warned about (built models, reference
#: log-probs and fetched images are written there).
CACHE_FREE_FLOOR = 1024**3
#: A build directory unchanged for this long, with no process holding its lock, is not being built.
BUILD_QUIET_S = 120.0
#: How often a wait on a live build says so again.
WAIT_MESSAGE_S = 60.0


def size_text(value: float) -> str:
    """``1.50 GiB`` or, below a GiB, ``12.3 MiB``."""
    return f"{value / 1024**3:.2f} GiB" if value >= 1024**3 else f"{value / 1024**2:.1f} MiB"


# --- writable directories ---------------------------------------------------------------------------------


def existing_ancestor(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent (where it would be created)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(key: str, path: Path, fix: str) -> None:
    """A `ConfigError` unless a file can be written in ``path`` (or, before it exists, where it would be made).

    Args:
        key: The config key that names the directory (``paths.run_dir``).
        path: The directory.
        fix: What to set instead, for the message.
    """
    where = existing_ancestor(path)
    if not where.is_dir():
        raise ConfigError(f"{key}={path} is not writable ({where} is not a directory): {fix}")
    try:
        handle, probe = tempfile.mkstemp(prefix=".rlhf_lab_write_check_", dir=where)
        try:
            os.write(handle, b"\0")  # a full disk may take the inode and refuse the block
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{key}={path} is not writable ({error.strerror or error}): {fix}") from None


# --- free space -----------------------------------------------------------------------------------------


@dataclass
class Writes:
    """What a run writes to its directory: ``checkpoints`` files of ``checkpoint`` bytes at most, and the export."""

    checkpoint: float
    checkpoints: int
    export: float

    @property
    def total(self) -> float:
        return self.checkpoint * self.checkpoints + self.export

    def breakdown(self) -> str:
        export = f" + the export {size_text(self.export)}" if self.export else ""
        return f"{self.checkpoints} checkpoints of {size_text(self.checkpoint)}{export}"


def run_writes(cfg: DictConfig, plan: Plan) -> Writes:
    """The checkpoints and export ``cfg`` writes (this module's docstring), from the preflight's `Plan`."""
    lora = plan.adapter == "lora"
    params = trainable(plan)
    weight_bytes = 4.0 if lora else plan.weight_bytes  # LoRA factors are fp32
    checkpoint = params * (weight_bytes + optimizer_bytes(plan, weight_bytes))
    if plan.value_model is not None:  # PPO's critic trains too
        checkpoint += plan.value_model.params * (plan.weight_bytes + optimizer_bytes(plan, plan.weight_bytes))
    ckpt: Any = cfg.get("checkpoint") or {}
    top_k = int(ckpt.get("save_top_k", 0) or 0) if ckpt.get("monitor") else 0
    # save_top_k=-1 keeps every one: counted as one (the check is then a lower bound).
    count = (top_k if top_k >= 0 else 1) + int(bool(ckpt.get("save_last", True))) + 1  # +1: being written
    export_cfg: Any = cfg.get("export") or {}
    export = 0.0
    if export_cfg.get("enabled", False):
        merged = not lora or export_cfg.get("merge_adapter", True)
        export = plan.policy.params * plan.weight_bytes if merged else params * 4.0
    return Writes(checkpoint, count, export)


def bytes_under(path: Path) -> int:
    """The bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed while walking
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def check_free_space(cfg: DictConfig, plan: Plan, run_dir: Path, cache_dir: Path | None) -> Writes:
    """A `ConfigError` when the run directory's filesystem has less free space than the run writes; a warning
    under `SPACE_MARGIN` times that, or when a cache on another filesystem has less than `CACHE_FREE_FLOOR`."""
    writes = run_writes(cfg, plan)
    where = existing_ancestor(run_dir)
    free = float(shutil.disk_usage(where).free)
    # A resume replaces the run's own checkpoints and export: their space comes back.
    available = free + bytes_under(run_dir / "checkpoints") + bytes_under(run_dir / "export")
    needed = writes.total
    if available < needed:
        raise ConfigError(
            f"paths.run_dir={run_dir} has {size_text(free)} free, but the run writes about {size_text(needed)} "
            f"there ({writes.breakdown()}): free some space, point hydra.run.dir at a bigger disk, or lower "
            "checkpoint.save_top_k (export.enabled=false writes no export; preflight.disk_check=false skips "
            "this check)"
        )
    if available < SPACE_MARGIN * needed:
        log.warning(
            "paths.run_dir=%s has %s free and the run writes about %s there (%s): little room to spare",
            run_dir,
            size_text(free),
            size_text(needed),
            writes.breakdown(),
        )
    if cache_dir is not None:
        cache = existing_ancestor(cache_dir)
        if os.stat(cache).st_dev != os.stat(where).st_dev:
            cache_free = float(shutil.disk_usage(cache).free)
            if cache_free < CACHE_FREE_FLOOR:
                log.warning(
                    "paths.cache_dir=%s has %s free (built models, reference log-probs and images go there)",
                    cache_dir,
                    size_text(cache_free),
                )
    return writes


# --- stale build locks ------------------------------------------------------------------------------------


def extensions_root() -> Path:
    """Where torch builds JIT extensions (DeepSpeed's ops), as `torch.utils.cpp_extension` decides it."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return Path(configured)
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def _inside(target: str, directory: str) -> bool:
    return target == directory or target.startswith(directory + os.sep)


def builders(directory: Path) -> list[int]:
    """The processes with ``directory`` (or a directory in it) as their working directory or a file in it open
    (Linux ``/proc``; elsewhere, and for processes this user may not inspect, none are seen: the quiet period
    stands in)."""
    resolved = os.path.realpath(directory)
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    found = []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            if _inside(os.readlink(f"/proc/{pid}/cwd"), resolved):
                found.append(pid)
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # exited meanwhile, or not ours to inspect
            continue
        for fd in fds:
            try:
                if _inside(os.readlink(f"/proc/{pid}/fd/{fd}"), resolved):
                    found.append(pid)
                    break
            except OSError:  # closed meanwhile
                continue
    return found


def last_change(directory: Path) -> float:
    """The newest modification time in ``directory`` (the directory itself and its files)."""
    times = [directory.stat().st_mtime]
    for child in directory.iterdir():
        with contextlib.suppress(OSError):  # removed while looking
            times.append(child.lstat().st_mtime)
    return max(times)


def stale_lock_message(lock: Path) -> str:
    return (
        f"a stale DeepSpeed build lock {lock} (left by a killed build; no process is building it): remove it "
        f"(rm {lock}) and run again"
    )


def who_builds(pids: list[int], changed_ago: float, quiet_s: float) -> str:
    """Why a lock is waited on, for the message."""
    if len(pids) == 1:
        return f"process {pids[0]} is building there"
    if pids:
        return f"processes {', '.join(map(str, pids))} are building there"
    return (
        f"no process here holds it, but its directory changed {changed_ago:.0f} s ago; unchanged for "
        f"{quiet_s:.0f} s it is stale"
    )


def wait_for_build_locks(
    root: Path,
    quiet_s: float = BUILD_QUIET_S,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait for each live build under ``root`` with a message; a `ConfigError` naming the first stale lock.

    Args:
        root: The extensions root (`extensions_root`): ``<root>/<op>/lock``.
        quiet_s: A directory unchanged this long with no builder is not being built.
        poll_s: Seconds between looks while waiting.
        clock, sleep: Time, for tests.
    """
    if not root.is_dir():
        return
    for lock in sorted(root.glob("*/lock")):
        said = -float("inf")
        while lock.exists():
            try:
                changed = last_change(lock.parent)
            except FileNotFoundError:
                break  # the build finished and its directory went
            pids = builders(lock.parent)
            if not lock.exists():
                break  # released while we looked
            now = clock()
            if not pids and now - changed >= quiet_s:
                raise ConfigError(stale_lock_message(lock))
            if now - said >= WAIT_MESSAGE_S:
                who = who_builds(pids, now - changed, quiet_s)
                log.warning(
                    "waiting for the DeepSpeed build of %s to finish (the lock %s: %s)",
                    lock.parent.name,
                    lock,
                    who,
                )
                said = now
            sleep(poll_s)
