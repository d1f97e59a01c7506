"""TRL's own ``GRPOTrainer._compute_loss`` on given log-probs: the oracle the RL loss tests compare with."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch


def trl_grpo_loss(
    loss_type: str, logps, old, advantages, mask, entropies=None, importance_sampling_ratio=None, **args
) -> torch.Tensor:
    """TRL's ``GRPOTrainer._compute_loss`` on given log-probs (a stand-in trainer: one process, no
    accumulation, no reference), so the loss arithmetic is TRL's own code; ``importance_sampling_ratio``
    turns on its vLLM correction with those per-token weights."""
    grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    entropies = torch.zeros_like(logps) if entropies is None else entropies
    identity = SimpleNamespace(
        gather=lambda x: x, reduce=lambda x, reduction="sum": x, num_processes=1, sync_gradients=True,
        pad_across_processes=lambda x, dim=0, pad_index=0: x,
    )  # fmt: skip
    settings = {"delta": None, "sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05,
                "use_bias_correction_kl": False, "steps_per_generation": 1, **args}  # fmt: skip
    corrected = importance_sampling_ratio is not None
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, entropies, None),
        top_entropy_quantile=settings.pop("top_entropy_quantile", 1.0),
        entropy_coef=settings.get("entropy_coef", 0.0),
        _entropy_bonus_enabled=settings.pop("entropy_coef", 0.0) != 0.0,
        use_adaptive_entropy=False, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=0.0, loss_type=loss_type, epsilon_low=settings.pop("epsilon", 0.2),
        epsilon_high=settings.pop("epsilon_high", 0.2), use_vllm=corrected,
        vllm_importance_sampling_correction=corrected, aux_loss_enabled=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=identity,
        _metrics={"train": defaultdict(list)}, args=SimpleNamespace(**settings),
    )  # fmt: skip
    trainer.get_high_entropy_mask = lambda *a: grpo.GRPOTrainer.get_high_entropy_mask(trainer, *a)
    width = logps.shape[1]
    inputs = {
        "prompt_ids": torch.zeros(logps.shape[0], 1, dtype=torch.long),
        "prompt_mask": torch.ones(logps.shape[0], 1, dtype=torch.long),
        "completion_ids": torch.zeros(logps.shape[0], width, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum().float(),
    }
    if corrected:
        inputs["importance_sampling_ratio"] = importance_sampling_ratio
    return grpo.GRPOTrainer._compute_loss(trainer, None, inputs)
