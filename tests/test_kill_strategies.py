"""Kills under every strategy: a 2-process run (DDP, FSDP2, DeepSpeed ZeRO-3 on CPU; GRPO and GKD under DDP)
SIGKILLed (every rank at once) at two seeded moments, one of them in the middle of writing a checkpoint,
resumes to the exported weights, byte for byte, and the metrics.csv rows of a run never stopped.

Each case runs an uninterrupted reference, two killed runs and the resume that finishes (about a minute
each on a 2-core CPU).
"""

from __future__ import annotations

import csv
import random
import signal
from pathlib import Path

import pytest

from tests.subprocesses import python_module

COMMON = (
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "checkpoint.every_n_train_steps=2",
    "data.source.num_train=64",
    "data.source.num_eval=16",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "optim.lr=1e-3",
)
ONLINE = (
    "data=synthetic_rl",
    "data.batch_size=2",
    "algo.max_new_tokens=6",
    "data.eval_batch_size=4",
)
CASES = {
    "ddp": ("strategy=ddp",),
    "fsdp": ("strategy=fsdp",),
    "zero3": ("strategy=zero3",),
    "grpo_ddp": (
        "strategy=ddp",
        "algo=grpo",
        *ONLINE,
        "algo.num_generations=2",
        "algo.reward_functions=[tests.custom_rewards.even_tokens]",
    ),
    # Prompt-only data: the teacher completes the prompts at the start (collectively, under DDP), and a
    # resume takes them from the cache.
    "gkd_ddp": (
        "strategy=ddp",
        "algo=gkd",
        "data=synthetic_rl",
        "teacher=tiny",
        "teacher.seed=1",
        "algo.lmbda=0.5",
        "algo.max_new_tokens=6",
    ),
}
TIMING = ("train/tokens_per_sec", "val/samples_per_sec", "train/samples_per_sec")


def killable(point: str, run_dir: Path, *overrides: str) -> int:
    """``tests/scripts/killable_run.py`` in a process group of its own, whose every rank the kill ends."""
    result = python_module(
        "tests.scripts.killable_run",
        point,
        *COMMON,
        *overrides,
        f"run_dir={run_dir}",
        env={"RLHF_LAB_KILL_GROUP": "1"},
        new_session=True,
        timeout=300,
    )
    if result.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(result.stderr[-4000:])
    return result.returncode


def rows(metrics: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(metrics.open())]


def kill_points(name: str) -> tuple[str, str]:
    """Two moments drawn by a generator seeded with the case's name: as a training step 2..5 of 6 starts,
    then in the middle of the 1st or 2nd checkpoint written after the resume."""
    draw = random.Random(f"issue-25:{name}")
    return f"step:{draw.randint(2, 5)}", f"save:{draw.randint(1, 2)}"


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_killed_twice_end_as_if_never_stopped(name: str, tmp_path: Path) -> None:
    overrides = CASES[name]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert killable("none", straight, *overrides) == 0
    first, second = kill_points(name)
    assert killable(first, killed, *overrides) == -signal.SIGKILL, first
    assert killable(second, killed, *overrides, "resume=true") == -signal.SIGKILL, second
    # The save killed mid-write left its partial file or staging directory, never a checkpoint.
    partial = list((killed / "checkpoints").glob(".*.tmp-*"))
    assert partial, sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert killable("none", killed, *overrides, "resume=true") == 0

    assert (killed / "export" / "model.safetensors").read_bytes() == (
        straight / "export" / "model.safetensors"
    ).read_bytes()
    assert rows(killed / "metrics.csv") == rows(straight / "metrics.csv")
    if "algo=" not in " ".join(overrides):  # DPO: validation at step 0, a row per step, at 3 and 6, the final
        assert len(rows(straight / "metrics.csv")) == 1 + 6 + 2 + 1
    assert not list(killed.rglob(".*.tmp-*"))
