"""A run SIGKILLed at any moment resumes and ends as if it had never stopped: weights, metrics.csv and
summary.json; unreadable checkpoints are skipped; a crafted checkpoint never runs code."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch

from rlhf_lab.checkpoints import CheckpointError, newest_readable, read_checkpoint
from rlhf_lab.train import run
from tests.conftest import compose_config
from tests.subprocesses import python_module

REPO = Path(__file__).resolve().parents[1]
# Two epochs of 8 steps, validating every 4, last.ckpt every 2 steps, a row per step.
COMMON = (
    "trainer.max_epochs=2",
    "trainer.max_steps=-1",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "checkpoint.every_n_train_steps=2",
    "data.source.num_train=64",
    "data.eval_batch_size=8",
    "trainer.enable_progress_bar=false",
)
TIMING = ("train/tokens_per_sec",)


def killable(point: str, run_dir: Path, *extra: str) -> int:
    result = python_module("tests.scripts.killable_run", point, *COMMON, *extra, f"run_dir={run_dir}")
    if result.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(result.stderr[-3000:])
    return result.returncode


def rows(metrics: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(metrics.open())]


@pytest.mark.slow
def test_a_run_killed_at_six_moments_ends_as_if_never_stopped(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert killable("none", straight) == 0

    # Killed before its first validation (step 3 of 16; validation at 4): last.ckpt of step 2 exists.
    assert killable("step:3", killed) == -signal.SIGKILL
    assert read_checkpoint(killed / "checkpoints" / "last.ckpt")["global_step"] == 2
    # Then, each time resuming from what the last kill left: in the middle of writing a checkpoint, in a
    # validation, mid-epoch after the epoch boundary, in another checkpoint write, in a later validation,
    # and with the export written but not yet swapped in.
    for point in ("save:2", "val:3", "step:11", "save:3", "val:2", "export"):
        assert killable(point, killed, "resume=true") == -signal.SIGKILL, point
    assert not (killed / "export").exists()  # a killed export leaves none, never a partial one
    assert killable("none", killed, "resume=true") == 0

    straight_weights = (straight / "export" / "model.safetensors").read_bytes()
    assert (killed / "export" / "model.safetensors").read_bytes() == straight_weights
    assert rows(killed / "metrics.csv") == rows(straight / "metrics.csv")
    # the validation at step 0 (trainer.val_on_start), steps, validations every 4, the final one
    assert len(rows(straight / "metrics.csv")) == 1 + 16 + 4 + 1
    summary, straight_summary = (json.loads((d / "summary.json").read_text()) for d in (killed, straight))
    assert {k: v for k, v in summary.items() if k not in TIMING} == {
        k: v for k, v in straight_summary.items() if k not in TIMING
    }
    assert {k for k in summary if k.startswith("train/")} == {
        k for k in straight_summary if k.startswith("train/")
    }
    # Nothing half-written is left behind.
    assert not list(killed.rglob(".*tmp-*"))


def _checkpoint(path: Path, step: int) -> None:
    torch.save({"global_step": step, "state_dict": {}}, path)


def test_resume_skips_unreadable_checkpoints_and_names_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    _checkpoint(directory / "step000002.ckpt", 2)
    _checkpoint(directory / "step000004.ckpt", 4)
    good = directory / "step000004.ckpt"
    (directory / "last.ckpt").write_bytes(good.read_bytes()[:1000])  # truncated by a kill
    (directory / "step000006.ckpt").write_bytes(b"")  # empty
    os.utime(directory / "step000002.ckpt", (1, 1))
    os.utime(good, (2, 2))
    with caplog.at_level(logging.WARNING):
        path, checkpoint = newest_readable(tmp_path)
    assert path == good and checkpoint["global_step"] == 4
    assert "last.ckpt: not a readable checkpoint" in caplog.text
    assert "step000006.ckpt: not a readable checkpoint" in caplog.text
    assert newest_readable(tmp_path / "nothing") is None


def test_resume_after_a_corrupted_last_checkpoint_uses_the_newest_good_one(tmp_path: Path) -> None:
    common = [
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "checkpoint.every_n_train_steps=null",
    ]
    run(compose_config([*common, "trainer.max_steps=4"], run_dir=tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])
    resumed = run(compose_config([*common, "trainer.max_steps=6", "resume=true"], run_dir=tmp_path))
    assert resumed.trainer.global_step == 6
    assert read_checkpoint(last)["global_step"] == 6  # rewritten whole


class Payload:
    """Unpickling this would create a file: the kind of code a crafted checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    from rlhf_lab.evaluate import EvalOptions, evaluate

    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"global_step": 1, "state_dict": {}, "payload": Payload(marker)}, crafted)
    with pytest.raises(CheckpointError, match="pickled Python objects, which loading would execute; refused"):
        run(compose_config(["trainer.max_steps=1", f"ckpt_path={crafted}"], run_dir=tmp_path / "run"))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="crafted.ckpt"):
        evaluate(EvalOptions(run_dir=tmp_path / "run", weights=str(crafted), samples=0))
    assert not marker.exists()


def test_last_checkpoint_by_time_without_a_monitored_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checkpoint.every_n_minutes alone (no step schedule, no validation yet): last.ckpt follows the clock."""
    from rlhf_lab.callbacks import LastCheckpoint

    steps: list[int] = []
    original = LastCheckpoint.save

    def save(self, trainer):
        steps.append(trainer.global_step)
        original(self, trainer)

    monkeypatch.setattr(LastCheckpoint, "save", save)
    overrides = ["trainer.max_steps=3", "trainer.val_check_interval=8", "trainer.limit_val_batches=1"]
    overrides += [
        "checkpoint.every_n_train_steps=null",
        "checkpoint.every_n_minutes=1e-6",
        "export.enabled=false",
    ]
    run(compose_config(overrides, run_dir=tmp_path))
    assert steps[:3] == [1, 2, 3]  # every step: a microsecond is always up


ONLINE = (
    "algo=grpo",
    "data=synthetic_rl",
    "data.batch_size=4",
    "data.source.num_eval=16",
    "algo.num_generations=2",
    "algo.max_new_tokens=8",
    "algo.reward_functions=[tests.custom_rewards.even_tokens]",
    "algo.log_samples_every=3",
    "optim.lr=1e-3",
)


@pytest.mark.slow
def test_an_online_run_killed_mid_epoch_resamples_its_rollouts_exactly(tmp_path: Path) -> None:
    """GRPO killed between rollouts, in a validation and in the second epoch: the resumed run samples the
    same completions (sample tables), logs the same rows and ends with the same weights."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert killable("none", straight, *ONLINE) == 0
    assert killable("step:3", killed, *ONLINE) == -signal.SIGKILL
    for point in ("val:3", "step:11", "step:21"):
        assert killable(point, killed, *ONLINE, "resume=true") == -signal.SIGKILL, point
    assert killable("none", killed, *ONLINE, "resume=true") == 0

    assert (killed / "export" / "model.safetensors").read_bytes() == (
        straight / "export" / "model.safetensors"
    ).read_bytes()
    assert rows(killed / "metrics.csv") == rows(straight / "metrics.csv")
    samples = sorted(p.name for p in (straight / "samples").glob("*.jsonl"))
    assert samples == sorted(p.name for p in (killed / "samples").glob("*.jsonl"))
    assert len(samples) == 11  # rollouts 1, 4, ..., 31 of 32
    for name in samples:
        assert (killed / "samples" / name).read_text() == (straight / "samples" / name).read_text(), name


# Dynamic sampling, one epoch of 4 rollouts: about half the groups agree whatever is sampled, so rollouts
# draw a second round of fresh prompts.
DYNAMIC = (
    *ONLINE,
    "data.source.num_train=16",
    "trainer.max_epochs=1",
    "algo.dynamic_sampling=true",
    "algo.max_num_gen_batches=2",
    "algo.reward_functions=[tests.custom_rewards.even_tokens_on_odd_prompts]",
)


@pytest.mark.slow
def test_an_online_run_with_dynamic_sampling_killed_mid_epoch_redraws_its_extra_rounds_exactly(
    tmp_path: Path,
) -> None:
    """DAPO's dynamic sampling killed mid-epoch (rollouts 3 and 4, which drew a second round, are redone on
    resume): round r of rollout n draws its replacement prompts and samples by (seed, n, r) alone, so the
    resumed run keeps the same groups (sample tables), logs the same rows and ends with the same weights."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert killable("none", straight, *DYNAMIC) == 0
    training = [row for row in rows(straight / "metrics.csv") if row["train/num_gen_batches"]]
    rounds = [float(row["train/num_gen_batches"]) for row in training]
    assert rounds[2:] == [2.0, 2.0], rounds  # the redone rollouts drew extra rounds, or this tests nothing
    assert killable("step:3", killed, *DYNAMIC) == -signal.SIGKILL  # last.ckpt of step 2
    assert killable("none", killed, *DYNAMIC, "resume=true") == 0

    assert (killed / "export" / "model.safetensors").read_bytes() == (
        straight / "export" / "model.safetensors"
    ).read_bytes()
    assert rows(killed / "metrics.csv") == rows(straight / "metrics.csv")
    samples = sorted(p.name for p in (straight / "samples").glob("*.jsonl"))
    assert samples == sorted(p.name for p in (killed / "samples").glob("*.jsonl"))
    assert len(samples) == 2  # rollouts 1 and 4 of 4
    for name in samples:
        assert (killed / "samples" / name).read_text() == (straight / "samples" / name).read_text(), name
