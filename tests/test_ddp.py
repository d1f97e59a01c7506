"""Data parallelism on CPU: 2 processes x batch 4 == 1 process x batch 8 (DPO, and KTO, whose KL
reference point is averaged over the ranks' mismatched rows before it is clamped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.testing import assert_close

from tests.test_e2e import cli


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("algo", ["dpo", "kto"])
def test_ddp_two_processes_match_one_process_with_double_batch(tmp_path: Path, algo: str) -> None:
    common = [
        f"algo={algo}",
        "trainer.accelerator=cpu",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=null",
        "trainer.val_check_interval=3",
        "data.source.num_train=64",
        "data.source.num_eval=32",
        "data.eval_batch_size=8",
        "trainer.enable_progress_bar=false",
        "optim.lr=1e-3",
    ]
    single = cli(*common, "data.batch_size=8", run_dir=tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = cli(*common, "data.batch_size=4", "strategy=ddp", "trainer.devices=2", run_dir=tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    single_weights = load_file(str(tmp_path / "single" / "export" / "model.safetensors"))
    ddp_weights = load_file(str(tmp_path / "ddp" / "export" / "model.safetensors"))
    single_summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    ddp_summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert single_summary["trainer/global_step"] == ddp_summary["trainer/global_step"] == 3
    # Both moved away from the initial policy (DPO's loss is ln 2 at the start, KTO's 0.5), the same way.
    assert abs(single_summary["val/loss"] - (0.6931 if algo == "dpo" else 0.5)) > 1e-3
    assert ddp_summary["val/loss"] == pytest.approx(single_summary["val/loss"], abs=1e-4)
    if algo == "kto":  # the reference point of the last step, one value for the global batch
        assert ddp_summary["train/kl"] == pytest.approx(single_summary["train/kl"], abs=1e-5)
    assert single_weights.keys() == ddp_weights.keys()
    for name, weight in single_weights.items():
        assert_close(ddp_weights[name], weight, rtol=0, atol=2e-5, msg=name)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_two_processes_match_one_process_with_double_batch(tmp_path: Path, loss_type: str) -> None:
    """GRPO: rollouts are seeded per prompt and sample, the dapo normaliser counts every process's tokens,
    so 2 processes x 2 prompts give the weights and metrics of 1 process x 4 prompts."""
    common = [
        "algo=grpo",
        f"algo.loss_type={loss_type}",
        "algo.num_generations=4",
        "algo.num_iterations=2",
        "algo.max_new_tokens=12",
        "algo.beta=0.05",
        "algo.reward_functions=[tests.custom_rewards.even_tokens]",
        "data=synthetic_rl",
        "data.source.num_train=32",
        "data.source.num_eval=8",
        "data.eval_batch_size=4",
        "trainer.accelerator=cpu",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "optim.lr=1e-3",
        "optim.eps=1e-5",
    ]
    single = cli(*common, "data.batch_size=4", run_dir=tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = cli(*common, "data.batch_size=2", "strategy=ddp", "trainer.devices=2", run_dir=tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single_summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    ddp_summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert single_summary["trainer/global_step"] == ddp_summary["trainer/global_step"] == 4
    # Held-out and training metrics cover every process's completions (lengths' extremes stay extremes).
    for key in (
        "val/reward",
        "val/completions/mean_length",
        "val/completions/max_length",
        "val/completions/min_length",
        "train/reward",
        "train/reward_std",
        "train/completions/max_length",
        "train/completions/min_length",
        "train/kl",
    ):
        assert ddp_summary[key] == pytest.approx(single_summary[key], abs=1e-5), key
    single_weights = load_file(str(tmp_path / "single" / "export" / "model.safetensors"))
    ddp_weights = load_file(str(tmp_path / "ddp" / "export" / "model.safetensors"))
    for name, weight in single_weights.items():
        assert_close(ddp_weights[name], weight, rtol=0, atol=2e-5, msg=name)
