"""Checkpoints hold exactly the trainable weights (and the objective's own state); a mismatched one fails
with the keys named instead of silently loading nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
