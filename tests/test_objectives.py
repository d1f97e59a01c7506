"""Objectives on the tiny model: metrics pinned to hand/naive computations, reference modes, accumulation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from omegaconf import DictConfig
from torch.testing import assert_close

from rlhf_lab.logprobs import SequenceLogps, naive_completion_logps
from rlhf_lab.objectives import pairwise_metrics
from rlhf_lab.train import build, run


def first_batch(datamodule, split: str = "train"):
    loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
    return next(iter(loader))


def built(cfg: DictConfig):
    objective, datamodule, _ = build(cfg)
    objective.configure_model()
    return objective, datamodule


def test_pairwise_metrics_hand_computed() -> None:
    """Two pairs. Rewards chosen (0.5, -0.2), rejected (-0.5, 0.1):
    rewards/chosen = 0.15, rewards/rejected = -0.2, accuracies = 1/2 (only the first pair is right),
    margins = mean(1.0, -0.3) = 0.35; logps are the means of the summed log-probs; logits the means of the
    per-sequence mean logits.
    """
    chosen = SequenceLogps(torch.tensor([-4.0, -6.0]), torch.tensor([2, 3]), torch.tensor([0.25, 0.75]))
    rejected = SequenceLogps(torch.tensor([-9.0, -3.0]), torch.tensor([3, 1]), torch.tensor([-1.0, 0.0]))
    metrics = pairwise_metrics(chosen, rejected, torch.tensor([0.5, -0.2]), torch.tensor([-0.5, 0.1]))
    expected = {
        "rewards/chosen": 0.15,
        "rewards/rejected": -0.2,
        "rewards/accuracies": 0.5,
        "rewards/margins": 0.35,
        "logps/chosen": -5.0,
        "logps/rejected": -6.0,
        "logits/chosen": 0.5,
        "logits/rejected": -0.5,
    }
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        assert_close(metrics[name], torch.tensor(value), msg=name)


def test_dpo_metrics_match_a_naive_recomputation(make_config: Callable[..., DictConfig]) -> None:
    """Every DPO metric from one batch, recomputed from full-vocabulary logits of the policy and reference.

    The policy is perturbed first so that policy and reference differ and the rewards are not all zero.
    """
    objective, datamodule = built(make_config("algo.beta=0.5", "algo.sft_beta=0.3"))
    with torch.no_grad():
        for parameter in objective.policy.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    batch = first_batch(datamodule)
    loss, metrics = objective.compute(batch, "train")

    pairs = batch.size
    ids, mask, attention = (
        batch.sequences.input_ids,
        batch.sequences.completion_mask,
        batch.sequences.attention_mask,
    )
    with torch.no_grad():
        policy_logits = objective.policy.model(input_ids=ids, attention_mask=attention).logits
        reference_logits = objective.reference.model.model(input_ids=ids, attention_mask=attention).logits
    policy_logps = naive_completion_logps(policy_logits, ids, mask)
    reference_logps = naive_completion_logps(reference_logits, ids, mask)
    lengths = mask[:, 1:].sum(1).float()
    chosen_rewards = 0.5 * (policy_logps[:pairs] - reference_logps[:pairs])
    rejected_rewards = 0.5 * (policy_logps[pairs:] - reference_logps[pairs:])
    nll = -policy_logps[:pairs] / lengths[:pairs]
    dpo = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards)
    token_mask = mask[:, 1:].unsqueeze(-1)
    mean_logits = (policy_logits[:, :-1] * token_mask).sum((1, 2)) / (lengths * policy_logits.shape[-1])

    expected = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": policy_logps[:pairs].mean(),
        "logps/rejected": policy_logps[pairs:].mean(),
        "logits/chosen": mean_logits[:pairs].mean(),
        "logits/rejected": mean_logits[pairs:].mean(),
        "nll_loss": nll.mean(),
    }
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        assert_close(metrics[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert_close(loss, (dpo + 0.3 * nll).mean(), rtol=1e-4, atol=1e-5)
    # Not a degenerate batch: the perturbation moved chosen and rejected rewards apart.
    assert metrics["rewards/chosen"] != metrics["rewards/rejected"]


@pytest.mark.parametrize(
    "overrides",
    [
        ("algo.reference=copy",),
        ("algo.reference=precomputed",),
        ("adapter=lora", "algo.reference=adapter_off"),
        ("adapter=dora", "algo.reference=adapter_off"),
        ("adapter=lora", "algo.reference=copy"),
    ],
    ids=["copy", "precomputed", "lora-adapter_off", "dora-adapter_off", "lora-copy"],
)
def test_reference_modes_give_ln2_at_the_first_step(make_config, overrides: tuple[str, ...]) -> None:
    """Before any update the policy equals its reference, so every mode gives loss ln 2 and zero rewards."""
    objective, datamodule = built(make_config(*overrides))
    if objective.reference_mode == "precomputed":
        objective.precompute_reference(datamodule)
    batch = first_batch(datamodule)
    loss, metrics = objective.compute(batch, "train")
    assert_close(loss, torch.tensor(math.log(2.0)), atol=1e-5, rtol=0)
    assert_close(metrics["rewards/margins"], torch.tensor(0.0), atol=1e-5, rtol=0)


def test_reference_modes_agree_with_each_other(make_config) -> None:
    """copy, adapter_off (LoRA at init) and precomputed give the same reference log-probs for a batch."""
    results = {}
    for name, overrides in {
        "copy": ("algo.reference=copy",),
        "precomputed": ("algo.reference=precomputed",),
        "adapter_off": ("adapter=lora", "algo.reference=adapter_off"),
    }.items():
        objective, datamodule = built(make_config(*overrides))
        if name == "precomputed":
            objective.precompute_reference(datamodule)
        results[name] = objective.reference_logps(first_batch(datamodule, "val"), "val")
    assert_close(results["copy"], results["precomputed"], atol=1e-5, rtol=1e-5)
    assert_close(results["copy"], results["adapter_off"], atol=1e-5, rtol=1e-5)


def test_precomputed_reference_is_cached_on_disk(make_config) -> None:
    """A second objective over the same model and data (a sweep over beta) loads the cached table."""
    first, datamodule = built(make_config("algo.reference=precomputed", "data.source.seed=77"))
    assert first.precompute_reference(datamodule) == "computed"
    second, datamodule = built(
        make_config("algo.reference=precomputed", "data.source.seed=77", "algo.beta=0.5")
    )
    assert second.precompute_reference(datamodule) == "cache"
    assert_close(second.reference.tables["train"], first.reference.tables["train"])
    assert not torch.isnan(first.reference.tables["train"]).any()
    # Other data (another max_length) is another key.
    third, datamodule = built(
        make_config("algo.reference=precomputed", "data.source.seed=77", "data.max_length=40")
    )
    assert third.precompute_reference(datamodule) == "computed"


def exported_state(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "export" / "model.safetensors"))


def test_gradient_accumulation_equivalence(tmp_path) -> None:
    """Batch 8 x accumulation 1 and batch 4 x accumulation 2: same loss and same weights after one step."""
    from tests.conftest import compose_config

    results = {}
    for batch_size, accumulation in ((8, 1), (4, 2)):
        cfg = compose_config(
            [
                f"data.batch_size={batch_size}",
                f"trainer.accumulate_grad_batches={accumulation}",
                "trainer.max_steps=1",
                "trainer.limit_val_batches=1",
                "checkpoint.save_top_k=0",
            ],
            run_dir=tmp_path / f"b{batch_size}",
        )
        results[batch_size] = (run(cfg), exported_state(tmp_path / f"b{batch_size}"))
    (run8, weights8), (run4, weights4) = results[8], results[4]
    assert run8.trainer.global_step == run4.trainer.global_step == 1
    assert_close(run8.summary["val/loss"], run4.summary["val/loss"], rtol=1e-5, atol=1e-6)
    # Adam's first step is invariant to the gradient's scale, so check the accumulated gradient itself.
    assert_close(run8.summary["train/grad_norm"], run4.summary["train/grad_norm"], rtol=1e-5, atol=1e-7)
    assert weights8.keys() == weights4.keys()
    # The first Adam step moves each weight by about lr/2 = 2.5e-4 (warm-up); summation order differs
    # between the two runs, so allow 1e-5 (4% of a step), far below what a wrong scaling would give.
    for name in weights8:
        assert_close(weights8[name], weights4[name], rtol=0, atol=1e-5)


def test_a_step_changes_the_parameters(tmp_path) -> None:
    from tests.conftest import compose_config

    cfg = compose_config(["trainer.max_steps=1", "trainer.limit_val_batches=1"], run_dir=tmp_path)
    result = run(cfg)
    before = exported_state_of(result.objective.model_spec.name_or_path)
    after = exported_state(tmp_path)
    for name in (
        "lm_head.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ):
        assert not torch.equal(before[name], after[name]), name


def exported_state_of(directory: str) -> dict[str, torch.Tensor]:
    from pathlib import Path

    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def test_lora_trains_only_adapter_parameters(tmp_path) -> None:
    from tests.conftest import compose_config

    cfg = compose_config(
        [
            "adapter=lora",
            "adapter.target_modules=all",
            "trainer.max_steps=2",
            "optim.lr=1e-2",
            "trainer.limit_val_batches=1",
            "export.merge_adapter=false",
        ],
        run_dir=tmp_path,
    )
    result = run(cfg)
    base = exported_state_of(result.objective.model_spec.name_or_path)
    changed, unchanged = [], []
    for name, parameter in result.objective.policy.model.named_parameters():
        if "lora_" in name:
            changed.append(name)
            continue
        base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(parameter.detach(), base[base_name]), name
        unchanged.append(name)
    assert changed and unchanged
    lora_b = [p for n, p in result.objective.policy.model.named_parameters() if "lora_B" in n]
    # LoRA B starts at zero; after two steps at lr 1e-2 every B matrix has moved.
    assert all(p.detach().abs().sum() > 0 for p in lora_b)
    # Adapter-only export: adapter files, no full weights.
    assert (tmp_path / "export" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "export" / "model.safetensors").exists()


def test_sft_lowers_the_nll(tmp_path) -> None:
    from tests.conftest import compose_config

    cfg = compose_config(
        ["algo=sft", "trainer.max_steps=8", "optim.lr=3e-3", "trainer.limit_val_batches=1"], run_dir=tmp_path
    )
    result = run(cfg)
    assert result.objective.reference is not None and result.objective.reference.mode == "none"
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "metrics.csv")
    nll = metrics["train/nll_loss"].dropna().to_numpy()
    assert nll[-1] < nll[0] - 0.5
    assert set(result.summary) >= {"val/loss", "val/nll_loss", "val/logps/chosen"}
