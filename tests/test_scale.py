"""Scaling strategies on CPU: FSDP2 and DeepSpeed ZeRO give DDP's result; QLoRA; gradient checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.testing import assert_close

from tests.test_e2e import cli

COMMON = (
    "trainer.accelerator=cpu",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=null",
    "data.source.num_train=64",
    "data.source.num_eval=32",
    "data.eval_batch_size=8",
    "data.batch_size=4",
    "trainer.devices=2",
    "trainer.enable_progress_bar=false",
    "optim.lr=1e-3",
)


def train_with(strategy: str, run_dir: Path, *extra: str) -> tuple[dict, dict]:
    result = cli(*COMMON, f"strategy={strategy}", *extra, run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, load_file(str(run_dir / "export" / "model.safetensors"))


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    return train_with("ddp", tmp_path_factory.mktemp("ddp"))


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "zero2", "zero3"])
def test_sharded_strategies_match_ddp(strategy: str, ddp_result, tmp_path: Path) -> None:
    summary, weights = train_with(strategy, tmp_path)
    ddp_summary, ddp_weights = ddp_result
    assert summary["trainer/global_step"] == ddp_summary["trainer/global_step"] == 3
    assert summary["val/loss"] == pytest.approx(ddp_summary["val/loss"], abs=1e-4)
    assert weights.keys() == ddp_weights.keys()
    for name, weight in ddp_weights.items():
        assert_close(weights[name], weight, rtol=0, atol=5e-5, msg=name)


def test_qlora_trains_only_adapters_and_exports_a_dequantised_model(tmp_path: Path) -> None:
    """QLoRA on CPU: 4-bit NF4 base frozen, LoRA trains; adapter_off reference = the 4-bit base (loss ln 2
    at the first step); the merged export is a plain float model that reloads without bitsandbytes."""
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf_lab.export import export_model
    from rlhf_lab.train import run
    from tests.conftest import compose_config

    cfg = compose_config(
        [
            "quant=nf4",
            "adapter=lora",
            "adapter.target_modules=all",
            "quant.compute_dtype=float32",
            "trainer.max_steps=3",
            "optim.lr=1e-2",
            "trainer.limit_val_batches=1",
            "export.enabled=false",
        ],
        run_dir=tmp_path,
    )
    result = run(cfg)
    model = result.objective.policy.model
    assert result.objective.reference_mode == "adapter_off"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    first_loss = pd.read_csv(tmp_path / "metrics.csv")["train/loss"].dropna().iloc[0]
    assert first_loss == pytest.approx(0.693147, abs=1e-4)
    export_model(model, result.tokenizer, tmp_path / "export", merge_adapter=True)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert getattr(exported.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in exported.parameters())
    batch = next(iter(result.datamodule.val_dataloader()))
    with torch.no_grad():
        logits = exported(
            input_ids=batch.sequences.input_ids, attention_mask=batch.sequences.attention_mask
        ).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["quant=nf4"], r"quant=nf4 with adapter=full.*adapter=lora"),
        (["quant=nf4", "adapter=lora", "strategy=zero3"], r"quant=nf4 with strategy=zero3.*zero2"),
        (["quant=int8", "adapter=lora", "strategy=fsdp"], r"quant=int8 with strategy=fsdp.*ddp"),
        (
            ["strategy=zero2", "strategy.offload_parameters=true"],
            r"offload_parameters=true needs strategy.stage=3",
        ),
    ],
)
def test_incompatible_combinations_fail_before_any_model_loads(overrides: list[str], message: str) -> None:
    from rlhf_lab.errors import ConfigError
    from rlhf_lab.train import build
    from tests.conftest import compose_config

    with pytest.raises(ConfigError, match=message):
        build(compose_config(overrides))


def test_gradient_checkpointing_changes_memory_not_results(tmp_path: Path) -> None:
    from rlhf_lab.train import run
    from tests.conftest import compose_config

    common = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1"]
    plain = run(compose_config(common, run_dir=tmp_path / "plain")).summary
    checkpointed = run(
        compose_config([*common, "model.gradient_checkpointing=true"], run_dir=tmp_path / "gc")
    )
    assert checkpointed.objective.policy.model.is_gradient_checkpointing
    for key in ("train/loss", "train/grad_norm", "val/loss", "val/rewards/margins"):
        assert checkpointed.summary[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-6), key


def test_eight_bit_adamw_trains(tmp_path: Path) -> None:
    from rlhf_lab.train import run
    from tests.conftest import compose_config

    result = run(
        compose_config(
            ["optim.name=adamw_8bit", "trainer.max_steps=2", "trainer.limit_val_batches=1"], run_dir=tmp_path
        )
    )
    optimizer = result.trainer.optimizers[0]
    assert type(optimizer).__name__ == "AdamW8bit"
    assert result.summary["train/grad_norm"] > 0
