"""What every objective that learns from completions it samples shares: online RL (`OnlineObjective`) and
online DPO (`OnlineDPO`).

`RolloutObjective` holds the rewards (`rlhf_lab.rl.scoring.RewardScorer`), the sampling settings, the rollout
counter that seeds each rollout (so a resumed run samples what an uninterrupted one would), the reward models
built beside the policy, the held-out ``val/reward`` of greedy completions and the manual optimiser step over
micro-batches (`accumulated_step`: each micro-batch's loss is its share of the step's, so accumulation is
exact). A subclass samples and scores with `rlhf_lab.rl.actor.RolloutActor` and says what one micro-batch's
loss is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch

from rlhf_lab.data.batches import PromptBatch
from rlhf_lab.errors import ConfigError, check_range
from rlhf_lab.generation import SamplingConfig, check_generation_backend
from rlhf_lab.models.build import Companion
from rlhf_lab.objectives.base import AlignmentObjective
from rlhf_lab.rl.actor import RolloutActor
from rlhf_lab.rl.engine import RolloutEngine
from rlhf_lab.rl.metrics import completion_metrics, log_metrics
from rlhf_lab.rl.scoring import RewardScorer

#: One micro-batch: its share of the optimiser step's loss, and its metrics (shares of the step's).
MicroBatch = Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class RolloutObjective(RolloutActor, AlignmentObjective):
    """The base of the objectives that train on their own sampled, scored completions.

    Its arguments are the subclass's (each declares them with its defaults, which its schema takes).

    Args:
        reward_functions: Import paths (or ``{_target_: ...}`` mappings) of reward functions.
        reward_models: Sequence classifiers scoring (prompt, completion): directories or hub ids.
        reward_weights: One weight per reward, functions first (None: all 1).
        max_new_tokens, temperature, top_p, top_k: Sampling.
        missing_eos_penalty: Subtracted from the reward of a completion without EOS (None: nothing).
        val_do_sample: Sample held-out completions instead of decoding greedily.
        log_samples_every: Write ``samples/step_NNNNNN.jsonl`` every N rollouts (0: never).
        generation_backend: The rollout engine (`rlhf_lab.rl.engine.ENGINES`).
        reward_errors: ``stop`` or ``skip`` (`rlhf_lab.rl.failures`).
        reward_timeout: Seconds one call of a reward function may take (None: no limit).
        **kwargs: The `AlignmentObjective` arguments.
    """

    batch_kind = "prompts"
    monitor = ("val/reward", "max")

    def __init__(
        self,
        *,
        reward_functions: list[Any] | None,
        reward_models: list[str] | None,
        reward_weights: list[float] | None,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        missing_eos_penalty: float | None,
        val_do_sample: bool,
        log_samples_every: int,
        generation_backend: str,
        reward_errors: str,
        reward_timeout: float | None,
        **kwargs: Any,
    ) -> None:
        self.reward_model_paths = paths = list(reward_models or [])
        self.scorer = RewardScorer(reward_functions, paths, reward_weights, reward_timeout, reward_errors)
        self.reward_errors, self.dropped_groups = reward_errors, 0  # dropped prompts: train/reward_errors
        check_range("algo.log_samples_every", log_samples_every, 0)
        check_generation_backend(generation_backend)
        sampling = partial(
            SamplingConfig, max_new_tokens, temperature, top_p, top_k, **self.sampling_options()
        )
        self.sampling, self.val_sampling = sampling(do_sample=True), sampling(do_sample=val_do_sample)
        self.missing_eos_penalty = missing_eos_penalty
        self.log_samples_every, self.generation_backend = log_samples_every, generation_backend
        super().__init__(**kwargs)
        if self.reference_mode == "precomputed":
            raise ConfigError(
                f"algo.reference=precomputed: {self.name} scores completions it samples during training, "
                "which no table computed before training holds; use algo.reference=copy or adapter_off"
            )
        self.automatic_optimization = False
        # Rollouts sampled so far: seeds the next one, so a resumed run samples what an uninterrupted run would.
        self.register_buffer("rollouts_done", torch.zeros((), dtype=torch.long))
        self._rollout_tokens = 0
        self._engine: RolloutEngine | None = None

    def sampling_options(self) -> dict[str, Any]:
        """What a subclass adds to the `SamplingConfig` (online RL's ``min_new_tokens``)."""
        return {}

    @property
    def steps_per_rollout(self) -> int:
        """Optimiser steps per rollout."""
        return 1

    def companion_specs(self) -> dict[str, Companion]:
        # Reward models load in the policy's dtype (a tiny policy is float32).
        dtype = getattr(self.model_spec, "dtype", "float32")
        return {**super().companion_specs(), **self.scorer.companion_specs(self.reward_model_paths, dtype)}

    def rollout_metric_names(self, generations: int) -> set[str]:
        """The reward and completion metrics of ``generations`` completions per prompt (unprefixed)."""
        names = {"reward", "reward_std", *(f"rewards/{n}/mean" for n in self.reward_names)}
        names |= set(completion_metrics(torch.ones(1), torch.zeros(1)))
        return names | ({"frac_reward_zero_std"} if generations > 1 else set())

    def total_optimizer_steps(self) -> int:
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018 - sets up the training data (num_training_batches)
        batches = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        steps = int(batches * epochs * self.steps_per_rollout) if math.isfinite(batches) else 0
        if trainer.max_steps and trainer.max_steps > 0:
            steps = min(steps, trainer.max_steps) if steps else trainer.max_steps
        return max(1, steps)

    def accumulated_step(
        self, micro_batches: Iterable[MicroBatch], batch: PromptBatch
    ) -> dict[str, torch.Tensor] | None:
        """Backward each micro-batch's loss, then one optimiser step; returns the summed losses and metrics
        (None: a non-finite loss, handled by the NaN policy: no step)."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        assert not isinstance(optimizer, list) and not isinstance(scheduler, list)  # one of each (base)
        metrics: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=self.device)}
        for micro_batch in micro_batches:
            loss, part_metrics = micro_batch()
            if self.runtime.nan_policy != "ignore" and not self._all_ranks(
                bool(torch.isfinite(loss.detach()))
            ):
                optimizer.zero_grad(set_to_none=True)
                self._non_finite("loss", batch)
                return None
            self.manual_backward(loss)
            for key, value in {"loss": loss, **part_metrics}.items():
                metrics[key] = metrics.get(key, 0.0) + value.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        self.engine.update_weights(self.policy.model)
        return metrics

    def log_train_metrics(self, metrics: dict[str, torch.Tensor], batch: PromptBatch) -> None:
        """Log one rollout's training metrics and the learning rate."""
        log_metrics(self, "train", metrics, batch.size)
        scheduler = self.lr_schedulers()
        if scheduler is not None and not isinstance(scheduler, list):
            self.log("train/lr", scheduler.get_last_lr()[0], on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._batch_started is not None:
            speed = self._rollout_tokens / max(time.perf_counter() - self._batch_started, 1e-9)
            self.log("train/tokens_per_sec", speed, on_step=True, on_epoch=False)

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        log_metrics(self, "val", self.held_out_metrics(batch, self.val_sampling), batch.size)

    def compute(self, batch: Any, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError(f"{self.name} trains on its own rollouts (training_step), not on batches")
