"""End to end: the CLI trains, learns, checkpoints, resumes and exports models that reload."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.export import export_model
from rlhf_lab.train import run
from tests.conftest import compose_config
from tests.subprocesses import python_module

REPO = Path(__file__).resolve().parents[1]


def cli(*overrides: str, run_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return python_module("rlhf_lab", *overrides, f"hydra.run.dir={run_dir}", timeout=timeout)


@pytest.mark.slow
def test_default_experiment_learns_the_bundled_task(tmp_path: Path) -> None:
    """`python -m rlhf_lab` with no overrides: DPO on the tiny model reaches >= 0.9 held-out accuracy."""
    result = cli(run_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["val/rewards/accuracies"] >= 0.9
    assert summary["val/rewards/margins"] > 0
    assert summary["val/rewards/chosen"] > summary["val/rewards/rejected"]
    # It learned: the first validation (half an epoch in) is worse than the last, and the loss fell from ln 2.
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["train/loss"].dropna().iloc[0] > 0.6
    assert metrics["train/loss"].dropna().iloc[-5:].mean() < 0.4
    assert f"run directory: {tmp_path.resolve()}" in result.stdout
    assert "val/rewards/accuracies" in result.stdout
    # Outputs: composed config, checkpoints, HF export that loads.
    assert (tmp_path / ".hydra" / "config.yaml").exists() and (tmp_path / "config.yaml").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert {p.name for p in (tmp_path / "export").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }


def test_summary_keys_are_named_as_logged(tmp_path: Path) -> None:
    result = run(compose_config(["trainer.max_steps=2", "trainer.limit_val_batches=1"], run_dir=tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    logged = set(pd.read_csv(tmp_path / "metrics.csv").columns) - {"epoch", "step"}
    metric_keys = {k for k in summary if k.startswith(("train/", "val/"))}
    assert metric_keys == logged
    for name in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "nll_loss",
    ):
        assert f"train/{name}" in summary and f"val/{name}" in summary
    assert {"train/lr", "train/tokens_per_sec", "train/grad_norm"} <= set(summary)
    assert summary == result.summary


def reload_logits(export_dir: Path, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(
            input_ids=batch.sequences.input_ids, attention_mask=batch.sequences.attention_mask
        ).logits


@pytest.mark.parametrize(
    "overrides", [(), ("adapter=lora", "adapter.target_modules=all")], ids=["full", "lora-merged"]
)
def test_export_reloads_with_the_trained_logits(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    cfg = compose_config(
        [
            *overrides,
            "trainer.max_steps=3",
            "optim.lr=1e-2",
            "trainer.limit_val_batches=1",
            "export.enabled=false",
        ],
        run_dir=tmp_path,
    )
    result = run(cfg)
    model = result.objective.policy.model.eval()
    batch = next(iter(result.datamodule.val_dataloader()))
    with torch.no_grad():
        trained = model(
            input_ids=batch.sequences.input_ids, attention_mask=batch.sequences.attention_mask
        ).logits
    initial = reload_logits(Path(result.objective.model_spec.name_or_path), batch)
    assert not torch.allclose(trained, initial, atol=1e-3)  # training moved the model

    export_model(model, result.tokenizer, tmp_path / "export", merge_adapter=True)
    mask = batch.sequences.attention_mask.bool()
    assert_close(reload_logits(tmp_path / "export", batch)[mask], trained[mask], atol=1e-4, rtol=1e-4)
    assert not (tmp_path / "export" / "adapter_config.json").exists()


def test_adapter_only_export_reloads_with_peft(tmp_path: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    cfg = compose_config(
        [
            "adapter=lora",
            "trainer.max_steps=2",
            "optim.lr=1e-2",
            "trainer.limit_val_batches=1",
            "export.merge_adapter=false",
        ],
        run_dir=tmp_path,
    )
    result = run(cfg)
    batch = next(iter(result.datamodule.val_dataloader()))
    model = result.objective.policy.model.eval()
    reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        expected = model(
            input_ids=batch.sequences.input_ids, attention_mask=batch.sequences.attention_mask
        ).logits
        got = reloaded(
            input_ids=batch.sequences.input_ids, attention_mask=batch.sequences.attention_mask
        ).logits
    mask = batch.sequences.attention_mask.bool()
    assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_resume_continues_from_last_checkpoint(tmp_path: Path) -> None:
    """Interrupted at step 4 (last.ckpt), resumed to step 8: the same weights as 8 steps straight through."""
    common = [
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "optim.scheduler=constant",
        "optim.warmup_ratio=0",
    ]
    straight = run(compose_config([*common, "trainer.max_steps=8"], run_dir=tmp_path / "straight"))

    first = run(compose_config([*common, "trainer.max_steps=4"], run_dir=tmp_path / "resumed"))
    assert first.trainer.global_step == 4
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").exists()
    resumed = run(
        compose_config([*common, "trainer.max_steps=8", "resume=true"], run_dir=tmp_path / "resumed")
    )
    assert resumed.trainer.global_step == 8

    straight_state = dict(straight.objective.policy.model.named_parameters())
    for name, parameter in resumed.objective.policy.model.named_parameters():
        assert_close(parameter, straight_state[name], atol=1e-6, rtol=1e-5, msg=name)
    # metrics.csv keeps the first run's rows and continues: the same rows as the straight run.
    resumed_losses = pd.read_csv(tmp_path / "resumed" / "metrics.csv")[["step", "train/loss"]].dropna()
    straight_losses = pd.read_csv(tmp_path / "straight" / "metrics.csv")[["step", "train/loss"]].dropna()
    assert resumed_losses["step"].tolist() == straight_losses["step"].tolist() == list(range(8))
    assert resumed_losses["train/loss"].to_numpy() == pytest.approx(
        straight_losses["train/loss"].to_numpy(), abs=1e-5
    )


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    result = run(
        compose_config(
            ["trainer.max_steps=1", "trainer.limit_val_batches=1", "resume=true"], run_dir=tmp_path
        )
    )
    assert result.trainer.global_step == 1
    assert "holds no readable checkpoint: starting from scratch" in caplog.text


def test_missing_ckpt_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ckpt_path=/nope.ckpt does not exist: give a checkpoint file"):
        run(compose_config(["ckpt_path=/nope.ckpt"], run_dir=tmp_path))
