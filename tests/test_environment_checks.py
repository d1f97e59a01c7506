"""The environment is checked before training: writable run directory and cache, room for what the run writes,
no stale DeepSpeed build lock waited on silently; and a checkpoint write that fails keeps the previous one."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils import file_baton

from rlhf_lab.checkpoints import AtomicCheckpointIO, read_checkpoint
from rlhf_lab.errors import ConfigError
from rlhf_lab.preflight import environment, preflight
from rlhf_lab.preflight.environment import extensions_root, wait_for_build_locks
from tests.subprocesses import python_module
from tests.test_preflight import MISTRAL_7B

GIB = 1024**3


# --- writable directories ---------------------------------------------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory no file can be written in, and the reason the system gives. As root, ``chmod`` stops
    nothing: a read-only bind mount does (skipped where root may not mount)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o500)
        yield directory, "Permission denied"
        directory.chmod(0o700)
        return
    mount = subprocess.run(["mount", "-o", "bind,ro", directory, directory], capture_output=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"root without mount rights ({mount.stderr.decode().strip()}): no read-only directory")
    try:
        yield directory, "Read-only file system"
    finally:
        subprocess.run(["umount", directory], check=True)


def test_a_read_only_run_directory_is_named_before_training(make_config, read_only_dir) -> None:
    directory, reason = read_only_dir
    cfg = make_config()
    cfg.paths.run_dir = str(directory / "run")
    with pytest.raises(ConfigError) as raised:
        preflight(cfg)
    assert str(raised.value) == (
        f"paths.run_dir={directory / 'run'} is not writable ({reason}): point hydra.run.dir at a writable "
        "directory"
    )
    cfg.paths.run_dir, cfg.paths.cache_dir = str(directory.parent / "run"), str(directory / "cache")
    with pytest.raises(
        ConfigError, match=rf"^paths.cache_dir={directory / 'cache'} is not writable \({reason}\)"
    ):
        preflight(cfg)
    assert list(directory.parent.iterdir()) == [directory]  # the checks left nothing behind


def test_the_cli_names_a_run_directory_hydra_cannot_create(read_only_dir) -> None:
    directory, reason = read_only_dir
    result = python_module("rlhf_lab", f"hydra.run.dir={directory / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: the run directory is not writable ({reason}: {directory / 'run'}): point hydra.run.dir "
        "(hydra.sweep.dir with --multirun) at a writable directory"
    )


def test_a_full_cache_filesystem_is_named(make_config, tmp_path: Path, monkeypatch) -> None:
    """A cache on another (full) filesystem: the probe write fails with ENOSPC."""
    cache = tmp_path / "cache"
    cache.mkdir()
    real_mkstemp = tempfile.mkstemp

    def full_disk(*args, dir=None, **kwargs):
        if Path(dir) == cache:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(environment.tempfile, "mkstemp", full_disk)
    cfg = make_config()
    cfg.paths.cache_dir = str(cache)
    with pytest.raises(ConfigError) as raised:
        preflight(cfg)
    assert str(raised.value) == (
        f"paths.cache_dir={cache} is not writable (No space left on device): set paths.cache_dir (or "
        "RLHF_LAB_CACHE) to a writable directory"
    )


# --- free space -----------------------------------------------------------------------------------------


@pytest.fixture
def mistral_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Mistral-7B's config.json alone (sized like the real model, no weights); no GPU seen."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    directory = tmp_path / "mistral-7b"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(MISTRAL_7B))
    return directory


def free_space(monkeypatch: pytest.MonkeyPatch, gib: float) -> None:
    usage = SimpleNamespace(total=int(1000 * GIB), used=0, free=int(gib * GIB))
    monkeypatch.setattr(environment.shutil, "disk_usage", lambda path: usage)


def test_too_little_free_space_for_the_checkpoints_stops_the_run(
    make_config, mistral_dir: Path, monkeypatch, caplog
) -> None:
    """Full DPO of a 7B model in bf16: each checkpoint holds the weights and AdamW's two moments (6 bytes a
    parameter, 40.47 GiB); top-2, last.ckpt and one being written; then a 13.49 GiB export."""
    overrides = ("model=mistral7b", f"model.name_or_path={mistral_dir}", "preflight.memory_check=false")
    cfg = make_config(*overrides)
    free_space(monkeypatch, 100)
    with pytest.raises(ConfigError) as raised:
        preflight(cfg)
    assert str(raised.value) == (
        f"paths.run_dir={cfg.paths.run_dir} has 100.00 GiB free, but the run writes about 175.35 GiB there "
        "(4 checkpoints of 40.47 GiB + the export 13.49 GiB): free some space, point hydra.run.dir at a bigger "
        "disk, or lower checkpoint.save_top_k (export.enabled=false writes no export; "
        "preflight.disk_check=false skips this check)"
    )
    # The estimate follows the settings: LoRA checkpoints hold the factors (fp32) and their moments.
    lora = make_config(*overrides, "adapter=lora", "checkpoint.save_top_k=0", "export.merge_adapter=false")
    free_space(monkeypatch, 0.1)
    with pytest.raises(ConfigError, match=r"writes about 126.0 MiB there \(2 checkpoints of 54.0 MiB \+ the export 18.0 MiB\)"):  # fmt: skip
        preflight(lora)
    lora.preflight.disk_check = False
    preflight(lora)  # nothing else stops it

    # Room, but less than 1.5x: a warning; a resume's own old checkpoints count as room (they are replaced).
    free_space(monkeypatch, 200)
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.preflight"):
        preflight(make_config(*overrides, "seed=1"))
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.endswith("has 200.00 GiB free and the run writes about 175.35 GiB there (4 checkpoints "
                            "of 40.47 GiB + the export 13.49 GiB): little room to spare")  # fmt: skip
    old = Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt"
    old.parent.mkdir(parents=True)
    with old.open("wb") as sparse:  # 200 GiB apparent, no disk used
        sparse.truncate(200 * GIB)
    free_space(monkeypatch, 100)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.preflight"):
        preflight(make_config(*overrides, "seed=2"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_failed_checkpoint_write_keeps_the_previous_last_ckpt(tmp_path: Path, monkeypatch) -> None:
    """The disk fills during a save (ENOSPC half-way through the file): last.ckpt is the previous one, whole."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 10, "state_dict": {"w": torch.ones(4)}}, path)
    real_save = torch.save

    def disk_full(value, file, *args, **kwargs):
        real_save(value, file, *args, **kwargs)
        file.truncate(7)  # what reached the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        io.save_checkpoint({"global_step": 20, "state_dict": {"w": torch.zeros(4)}}, path)
    kept = read_checkpoint(path)
    assert kept["global_step"] == 10 and torch.equal(kept["state_dict"]["w"], torch.ones(4))


# --- stale build locks ------------------------------------------------------------------------------------


@pytest.fixture
def extensions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty extensions root (``TORCH_EXTENSIONS_DIR``) with one op's build directory."""
    root = tmp_path / "torch_extensions"
    (root / "deepspeed_shm_comm").mkdir(parents=True)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    assert extensions_root() == root
    return root


def age(path: Path, seconds: float) -> None:
    """Make ``path`` and its directory look unchanged for ``seconds``."""
    past = time.time() - seconds
    for each in (path, path.parent):
        os.utime(each, (past, past))


def test_a_lock_left_by_a_killed_build_is_named_before_a_deepspeed_run(make_config, extensions: Path) -> None:
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.touch()
    age(lock, 3600)
    with pytest.raises(ConfigError) as raised:
        preflight(make_config("strategy=zero3"))
    assert str(raised.value) == (
        f"a stale DeepSpeed build lock {lock} (left by a killed build; no process is building it): remove it "
        f"(rm {lock}) and run again"
    )
    preflight(make_config("strategy=ddp"))  # no DeepSpeed, no JIT build: not looked at
    lock.unlink()
    preflight(make_config("strategy=zero3"))


# torch's FileBaton, loaded alone (importing torch would take seconds).
HOLD_THE_BATON = """
import runpy, sys, time
baton = runpy.run_path(sys.argv[3])["FileBaton"](sys.argv[1])
assert baton.try_acquire()
print("building", flush=True)
time.sleep(float(sys.argv[2]))
baton.release()
"""


def test_a_live_build_is_waited_on_with_a_message(extensions: Path, caplog) -> None:
    """torch's own FileBaton holds the lock (open) for 2 s: waited on, naming the builder, then passed."""
    lock = extensions / "deepspeed_shm_comm" / "lock"
    builder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_BATON, str(lock), "2", file_baton.__file__],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert builder.stdout is not None and builder.stdout.readline() == "building\n"
    age(lock, 3600)  # old, but held: age alone never makes a lock stale
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.preflight"):
        wait_for_build_locks(extensions, poll_s=0.2)
    assert time.monotonic() - started > 0.5 and builder.wait(timeout=30) == 0 and not lock.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"waiting for the DeepSpeed build of deepspeed_shm_comm to finish (the lock {lock}: process "
        f"{builder.pid} is building there)"
    ]


def test_a_build_killed_while_waited_on_is_named(extensions: Path) -> None:
    """The compiler (a process working in the build directory) is killed during the wait: the lock is stale."""
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.touch()
    compiler = subprocess.Popen(["sleep", "60"], cwd=lock.parent)
    age(lock, 3600)
    looks = []

    def kill_it(seconds: float) -> None:
        looks.append(seconds)
        compiler.kill()
        compiler.wait()

    with pytest.raises(ConfigError, match=r"^a stale DeepSpeed build lock .*lock \(left by a killed build"):
        wait_for_build_locks(extensions, sleep=kill_it)
    assert looks == [1.0]  # one wait while the compiler lived


def test_a_lock_in_a_directory_still_changing_is_waited_on_until_it_is_quiet(
    extensions: Path, caplog
) -> None:
    """No process here holds it, but the directory changed 10 s ago (a build on another machine sharing it?):
    waited on with a message, then named once quiet for `quiet_s`."""
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.touch()
    changed = os.stat(lock.parent).st_mtime
    times = iter([changed + 10, changed + 130])
    with (
        caplog.at_level(logging.WARNING, logger="rlhf_lab.preflight"),
        pytest.raises(ConfigError, match="stale DeepSpeed build lock"),
    ):
        wait_for_build_locks(extensions, quiet_s=120, clock=lambda: next(times), sleep=lambda s: None)
    assert [r.getMessage() for r in caplog.records] == [
        f"waiting for the DeepSpeed build of deepspeed_shm_comm to finish (the lock {lock}: no process here "
        "holds it, but its directory changed 10 s ago; unchanged for 120 s it is stale)"
    ]
