"""Checkpoints hold exactly the trainable weights (and the objective's own state); a mismatched one fails
with the keys named instead of silently loading nothing."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from rlhf_lab.callbacks import FiniteModelCheckpoint
from rlhf_lab.checkpoints import (
    atomic_directory_save,
    atomic_remove,
    checkpoint_candidates,
    newest_readable,
    read_checkpoint_state,
    remove_partial_files,
)
from rlhf_lab.errors import ConfigError
from rlhf_lab.evaluate import EvalOptions, evaluate
from rlhf_lab.train import run
from tests.conftest import compose_config

SHORT = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.val_check_interval=2"]


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_checkpoint_holds_the_trainable_weights_only(tmp_path: Path) -> None:
    result = run(compose_config(["adapter=lora", "export.enabled=false", *SHORT], run_dir=tmp_path))
    state = last_checkpoint(tmp_path)["state_dict"]
    trainable = {name for name, p in result.objective.named_parameters() if p.requires_grad}
    assert set(state) == trainable | {"nan_skipped"}  # the objective's own state, besides the weights
    assert all("lora_" in name for name in trainable)


def test_resuming_from_a_mismatched_checkpoint_names_the_keys(tmp_path: Path) -> None:
    """A LoRA run's checkpoint resumed as full fine-tuning: every full weight is missing, every adapter
    weight unexpected; the error says so instead of training on from the base weights."""
    run(compose_config(["adapter=lora", *SHORT], run_dir=tmp_path / "lora"))
    ckpt = tmp_path / "lora" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as caught:
        run(compose_config([*SHORT, "trainer.max_steps=4", f"ckpt_path={ckpt}"], run_dir=tmp_path / "full"))
    message = str(caught.value)
    assert "does not hold this run's trainable weights" in message
    assert "missing (e.g. policy.model." in message and "unexpected (e.g. policy.model.base_model" in message
    assert "lora_A" in message


def test_evaluating_a_mismatched_checkpoint_names_the_keys(tmp_path: Path) -> None:
    run(compose_config(["adapter=lora", *SHORT], run_dir=tmp_path / "lora"))
    run(compose_config(SHORT, run_dir=tmp_path / "full"))
    with pytest.raises(ConfigError, match=r"lora/checkpoints/last.ckpt does not hold this run's trainable"):
        evaluate(
            EvalOptions(
                run_dir=tmp_path / "full",
                weights=str(tmp_path / "lora" / "checkpoints" / "last.ckpt"),
                samples=0,
            )
        )


def test_kto_reference_point_is_saved_and_restored(tmp_path: Path) -> None:
    """KTO's last training z0 (what its held-out loss uses) is part of the checkpoint, so a resumed run
    validates with the value the interrupted run had."""
    overrides = ["algo=kto", "optim.lr=2e-3", "trainer.limit_val_batches=1", "trainer.val_check_interval=2"]
    first = run(compose_config([*overrides, "trainer.max_steps=2"], run_dir=tmp_path))
    saved = last_checkpoint(tmp_path)["state_dict"]["last_kl"]
    assert torch.equal(saved, first.objective.last_kl.cpu())
    resumed = run(
        compose_config([*overrides, "trainer.max_steps=2", "resume=true"], run_dir=tmp_path)
    )  # nothing left to train: the validation runs with the restored z0
    assert torch.equal(resumed.objective.last_kl.cpu(), saved)
    assert resumed.summary["val/loss"] == pytest.approx(first.summary["val/loss"], abs=1e-6)


def test_a_diverged_run_keeps_its_nan_metrics_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """With trainer.nan_policy=ignore, a learning rate of 1e30 runs to NaN: the NaN losses are written as
    null, not dropped, the run is marked diverged (summary.json, the printed report), and the NaN model is
    not exported."""
    overrides = ["optim.lr=1e30", "optim.warmup_ratio=0", "trainer.nan_policy=ignore", *SHORT]
    run(compose_config(overrides, run_dir=tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "val/loss" in summary and summary["val/loss"] is None
    assert summary["run/diverged"] == 1.0
    assert "the run diverged: non-finite" in capsys.readouterr().out
    assert not (tmp_path / "export").exists()


# --- resume bookkeeping -------------------------------------------------------------------------------------


def _fake_checkpoint(path: Path, step: int, mtime: int) -> None:
    torch.save({"global_step": step, "state_dict": {}}, path)
    os.utime(path, (mtime, mtime))


def test_resume_takes_the_newest_checkpoint_by_step_with_last_ckpt_on_a_tie(tmp_path: Path) -> None:
    """Not the newest file by modification time: a best-k file written after last.ckpt at the same step is
    one Lightning would never delete once resumed from."""
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    _fake_checkpoint(directory / "last.ckpt", 4, mtime=100)
    _fake_checkpoint(directory / "step000004.ckpt", 4, mtime=200)
    _fake_checkpoint(directory / "step000002.ckpt", 2, mtime=300)
    path, checkpoint = newest_readable(tmp_path)
    assert (path.name, checkpoint["global_step"]) == ("last.ckpt", 4)
    # A best-k checkpoint of a later step than last.ckpt (a kill between the two saves) is newer.
    _fake_checkpoint(directory / "step000006.ckpt", 6, mtime=50)
    path, checkpoint = newest_readable(tmp_path)
    assert (path.name, checkpoint["global_step"]) == ("step000006.ckpt", 6)
    assert [p.name for p in checkpoint_candidates(tmp_path)] == [
        "last.ckpt",
        "step000006.ckpt",
        "step000004.ckpt",
        "step000002.ckpt",
    ]


BOOKKEEPING = [
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "checkpoint.every_n_train_steps=2",
    "checkpoint.save_top_k=2",
    "optim.lr=1e-3",
    "export.enabled=false",
]


def best_steps(metrics: Path, k: int) -> list[str]:
    """The steps of the k best (lowest) ``val/loss`` validations during training, as best-k file names."""
    rows = [r for r in csv.DictReader(metrics.open()) if r["val/loss"] and r["step"] != "0"]
    validated = [(float(r["val/loss"]), int(r["step"]) + 1) for r in rows[:-1]]  # the last: the final one
    return sorted(f"step{step:06d}.ckpt" for _, step in sorted(validated)[:k])


@pytest.mark.slow
def test_a_resume_leaves_exactly_the_best_k_checkpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A best-k file newer than last.ckpt (modification time) and one last.ckpt never knew of (a kill right
    after writing it): the resume starts from last.ckpt, removes the unknown one, and the run ends with the
    best 2 by val/loss and last.ckpt, never 3 best-k files."""
    run(compose_config([*BOOKKEEPING, "trainer.max_steps=4"], run_dir=tmp_path))
    directory = tmp_path / "checkpoints"
    assert sorted(p.name for p in directory.iterdir()) == ["last.ckpt", "step000002.ckpt", "step000004.ckpt"]
    os.utime(directory / "step000004.ckpt")  # newer than last.ckpt: the file resume used to take
    shutil.copy(directory / "step000004.ckpt", directory / "step000006.ckpt")  # unknown to last.ckpt
    with caplog.at_level(logging.INFO, logger="rlhf_lab.train"):
        resumed = run(compose_config([*BOOKKEEPING, "trainer.max_steps=10", "resume=true"], run_dir=tmp_path))
    assert f"resuming from {directory / 'last.ckpt'} (step 4)" in caplog.text
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["last.ckpt", *best_steps(tmp_path / "metrics.csv", 2)]
    (callback,) = [c for c in resumed.trainer.callbacks if isinstance(c, FiniteModelCheckpoint)]
    assert sorted(Path(p).name for p in callback.best_k_models) == names[1:]


def _rows(metrics: Path) -> list[dict[str, str]]:
    return [
        {k: v for k, v in r.items() if k != "train/tokens_per_sec"} for r in csv.DictReader(metrics.open())
    ]


@pytest.mark.slow
def test_the_final_validation_after_a_resume_past_the_end_is_logged_at_the_last_step(tmp_path: Path) -> None:
    """A resume with nothing left to train (a kill during the export) logs the final validation at step 6 and
    in the epoch the uninterrupted run did, not at 5 in epoch 0: from last.ckpt written at step 6's batch end
    (before Lightning advances its logging step and closes the epoch), and from a best-k checkpoint written
    after the last step's validation (the newest by step after a kill right after it)."""
    overrides = [*BOOKKEEPING, "trainer.val_check_interval=4", "trainer.max_steps=6"]
    run(compose_config(overrides, run_dir=tmp_path / "a"))
    straight = _rows(tmp_path / "a" / "metrics.csv")
    assert [(r["step"], r["epoch"]) for r in straight if r["val/loss"]] == [
        ("0", "0"),
        ("3", "0"),
        ("6", "1"),
    ]
    run(compose_config([*overrides, "resume=true"], run_dir=tmp_path / "a"))
    assert _rows(tmp_path / "a" / "metrics.csv") == straight

    overrides = [*BOOKKEEPING, "trainer.max_steps=6", "checkpoint.save_top_k=-1"]
    run(compose_config(overrides, run_dir=tmp_path / "b"))
    straight = _rows(tmp_path / "b" / "metrics.csv")
    checkpoints = tmp_path / "b" / "checkpoints"
    shutil.copy(checkpoints / "step000004.ckpt", checkpoints / "last.ckpt")  # killed before the end's save
    resumed = run(compose_config([*overrides, "resume=true"], run_dir=tmp_path / "b"))
    assert resumed.trainer.global_step == 6
    assert _rows(tmp_path / "b" / "metrics.csv") == straight
    assert [(r["step"], r["epoch"]) for r in straight if r["val/loss"]][-2:] == [("5", "0"), ("6", "1")]


# --- sharded (directory) checkpoints ------------------------------------------------------------------------


class OneProcess:
    """What `atomic_directory_save` asks of a strategy, for one process."""

    is_global_zero = True

    def broadcast(self, value: object) -> object:
        return value

    def barrier(self, name: str | None = None) -> None:
        pass


def _sharded(directory: Path, step: int, layout: str = "meta.pt") -> None:
    (directory / layout).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, directory / layout)
    (directory / "__0_0.distcp").write_bytes(b"shard %d" % step)


def test_a_sharded_save_killed_mid_write_leaves_the_previous_checkpoint_and_is_cleaned_up(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    atomic_directory_save(OneProcess(), directory / "last.ckpt", lambda staging: _sharded(staging, 2))
    assert sorted(p.name for p in directory.iterdir()) == ["last.ckpt"]

    def killed(staging: Path) -> None:
        _sharded(staging, 4)  # every shard on disk, the kill before the rename
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_directory_save(OneProcess(), directory / "last.ckpt", killed)
    assert (directory / ".last.ckpt.tmp-save" / "meta.pt").exists()
    path, state = newest_readable(tmp_path)
    assert (path.name, state["global_step"]) == ("last.ckpt", 2)  # the staging directory never counts
    assert remove_partial_files(directory) == [directory / ".last.ckpt.tmp-save"]
    assert sorted(p.name for p in directory.iterdir()) == ["last.ckpt"]
    atomic_directory_save(OneProcess(), directory / "last.ckpt", lambda staging: _sharded(staging, 6))
    assert read_checkpoint_state(directory / "last.ckpt")["global_step"] == 6
    assert (directory / "last.ckpt" / "__0_0.distcp").read_bytes() == b"shard 6"


def test_a_kill_between_the_two_renames_restores_the_previous_checkpoint(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    _sharded(directory / ".last.ckpt.replaced", 2)  # moved aside; the new one not yet renamed in
    _sharded(directory / ".last.ckpt.tmp-save", 4)
    remove_partial_files(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["last.ckpt"]
    assert read_checkpoint_state(directory / "last.ckpt")["global_step"] == 2
    _sharded(directory / ".last.ckpt.replaced", 2)  # the new one in place, the old not yet removed
    assert remove_partial_files(directory) == [directory / ".last.ckpt.replaced"]
    assert read_checkpoint_state(directory / "last.ckpt")["global_step"] == 2


def test_sharded_checkpoints_are_read_by_step_and_a_foreign_directory_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """FSDP2's ``meta.pt`` and DeepSpeed's model-states files hold the step and callback states; a best-k
    directory removed by a rename first never lingers half-deleted under its name."""
    directory = tmp_path / "checkpoints"
    _sharded(directory / "last.ckpt", 4, "checkpoint/zero_pp_rank_0_mp_rank_00_model_states.pt")
    _sharded(directory / "step000002.ckpt", 2, "checkpoint/mp_rank_00_model_states.pt")
    (directory / "step000006.ckpt").mkdir()  # not a checkpoint
    with caplog.at_level(logging.WARNING):
        path, state = newest_readable(tmp_path)
    assert (path.name, state["global_step"]) == ("last.ckpt", 4)
    assert "step000006.ckpt: not a checkpoint directory" in caplog.text
    atomic_remove(directory / "step000002.ckpt")
    assert sorted(p.name for p in directory.iterdir()) == ["last.ckpt", "step000006.ckpt"]
