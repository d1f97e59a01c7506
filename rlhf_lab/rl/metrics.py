"""Online-RL metrics: rewards and completions of a rollout, and means over one rollout's optimiser steps."""

from __future__ import annotations

from typing import Any

import torch


def completion_metrics(lengths: torch.Tensor, truncated: torch.Tensor) -> dict[str, torch.Tensor]:
    """Completion lengths (tokens, EOS included) and the share that hit ``max_new_tokens`` without EOS."""
    lengths = lengths.float()
    return {
        "completions/mean_length": lengths.mean(),
        "completions/min_length": lengths.min(),
        "completions/max_length": lengths.max(),
        "completions/clipped_ratio": truncated.float().mean(),
    }


def reward_metrics(
    rewards: torch.Tensor, per_reward: torch.Tensor, names: list[str], num_generations: int
) -> dict[str, torch.Tensor]:
    """``reward`` (mean of the weighted sums), ``reward_std`` (mean over prompts of the std of their
    ``num_generations`` rewards, as TRL logs it), ``frac_reward_zero_std`` (prompts whose rewards are all
    equal: no GRPO signal) and ``rewards/<name>/mean`` (over the rows that reward applies to)."""
    metrics = {"reward": rewards.mean()}
    if num_generations > 1:
        grouped = rewards.view(-1, num_generations)
        std = grouped.std(1)
        metrics["reward_std"] = std.mean()
        metrics["frac_reward_zero_std"] = (std.abs() < 1e-6).float().mean()
    else:
        metrics["reward_std"] = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    for column, name in enumerate(names):
        values = per_reward[:, column]
        applicable = ~torch.isnan(values)
        if bool(applicable.any()):
            metrics[f"rewards/{name}/mean"] = values[applicable].mean()
    return metrics


def reduce_fx(key: str) -> str:
    """How a metric combines over batches and processes: extremes (lengths, IS ratios) stay extremes."""
    extremes = {"completions/min_length": "min", "completions/max_length": "max", "is_ratio/min": "min"}
    extremes.update({"is_ratio/max": "max", "sampler/logp_diff/max": "max"})
    return extremes.get(key, "mean")


class MeanTracker:
    """Means of metrics over the optimiser steps of one rollout (each step's value counted once)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            self.sums[key] = self.sums.get(key, torch.zeros_like(value)) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, torch.Tensor]:
        return {key: value / self.counts[key] for key, value in self.sums.items()}


def log_metrics(module: Any, split: str, metrics: dict[str, torch.Tensor], batch_size: int) -> None:
    """Log ``metrics`` as ``<split>/<name>`` on ``module``: training ones per rollout, held-out ones per
    validation; both over every process (ranks hold equal batches, so a mean of means is the mean; the
    extremes of lengths stay extremes)."""
    for key, value in metrics.items():
        module.log(
            f"{split}/{key}",
            value,
            on_step=split == "train",
            on_epoch=split != "train",
            batch_size=batch_size,
            sync_dist=True,
            reduce_fx=reduce_fx(key),
            prog_bar=key in ("reward", "loss"),
        )
