"""Online RL as one objective built from registered parts: GRPO, RLOO, PPO and REINFORCE++ are YAML files.

Each training batch (``data.batch_size`` prompts per process) becomes one `Rollout`: the engine samples
``num_generations`` completions per prompt (seeded by the run's seed, the rollout number, the example and
the sample, so rollouts depend neither on batch layout, rank nor resume), the rewards score them, and
``algo.advantage_estimator`` turns the scores into advantages (an estimator that takes ``values`` trains a
critic: PPO). The rollout is then optimised for ``num_iterations`` passes, each split into
``num_mini_batches`` optimiser steps of ``trainer.accumulate_grad_batches`` micro-batches; each micro-batch
minimises ``algo.policy_loss`` (plus ``beta`` times a k3 KL, unless ``kl_in_reward`` puts a k1 penalty in the
reward) reduced by ``algo.loss_agg_mode`` with the whole step's totals, so accumulation is exact.

Optimisation is manual: ``trainer.global_step`` counts optimiser steps and the entry point hands
``trainer.accumulate_grad_batches`` and ``gradient_clip_val`` to the objective. Held-out prompts are
decoded greedily (unless ``val_do_sample``) and scored by the same rewards: ``val/reward``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from rlhf_lab.data.batches import PromptBatch
from rlhf_lab.errors import ConfigError, check_range
from rlhf_lab.lightning_compat import attached_trainer
from rlhf_lab.losses.policy_gradient import StepTotals
from rlhf_lab.models.build import Companion
from rlhf_lab.objectives.rollouts import RolloutObjective
from rlhf_lab.rl.metrics import MeanTracker, completion_metrics, reward_metrics
from rlhf_lab.rl.parts import RLParts, schema_parameters, take_aliases
from rlhf_lab.rl.rollout import Rollout
from rlhf_lab.rl.update import micro_batch_loss

__all__ = ["OnlineObjective", "Rollout", "completion_metrics", "reward_metrics"]


class OnlineObjective(RolloutObjective):
    """The online-RL objective.

    Args:
        advantage_estimator: A name in `rlhf_lab.losses.advantages.ADVANTAGE_ESTIMATORS`.
        policy_loss: A name in `rlhf_lab.losses.policy_gradient.POLICY_LOSSES`.
        loss_agg_mode: A name in `rlhf_lab.losses.policy_gradient.LOSS_AGGREGATIONS` (TRL's ``loss_type``).
        reward_functions: Import paths (or ``{_target_: ...}`` mappings) of reward functions.
        reward_models: Sequence classifiers scoring (prompt, completion): directories or hub ids.
        reward_weights: One weight per reward, functions first (None: all 1).
        num_generations: Completions per prompt (``G``).
        max_new_tokens, temperature, top_p, top_k: Sampling (log-probs are taken at ``temperature``).
        num_iterations: Optimisation passes over each rollout (TRL's PPO: ``num_ppo_epochs``).
        num_mini_batches: Optimiser steps per pass.
        shuffle_mini_batches: Shuffle the rollout's rows before each pass (PPO).
        beta: Weight of the KL to the reference (0: no reference model is loaded).
        kl_in_reward: A k1 penalty in the reward (RLOO, PPO) instead of a k3 term in the loss (GRPO).
        missing_eos_penalty: Subtracted from the reward of a completion without EOS (None: nothing).
        mask_truncated_completions: Leave completions that hit ``max_new_tokens`` out of the loss.
        val_do_sample: Sample held-out completions instead of decoding greedily.
        log_samples_every: Write ``samples/step_NNNNNN.jsonl`` every N rollouts (0: never).
        generation_backend: The rollout engine (`rlhf_lab.rl.engine.ENGINES`).
        reward_errors: What a failing reward does: ``stop`` the run (a one-line error, ``last.ckpt`` kept)
            or ``skip`` the prompts it failed on (counted in ``train/reward_errors``; `rlhf_lab.rl.failures`).
        reward_timeout: Seconds one call of a reward function may take before it counts as failed (None:
            no limit). The call runs in a thread that is left running when it times out.
        **kwargs: The parts' hyperparameters (flat, paper names; see `rlhf_lab.rl.parts`) and the
            `AlignmentObjective` arguments.
    """

    def __init__(
        self,
        advantage_estimator: str = "grpo",
        policy_loss: str = "ppo_clip",
        loss_agg_mode: str = "seq_mean_token_mean",
        reward_functions: list[Any] | None = None,
        reward_models: list[str] | None = None,
        reward_weights: list[float] | None = None,
        num_generations: int = 4,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        num_iterations: int = 1,
        num_mini_batches: int = 1,
        shuffle_mini_batches: bool = False,
        beta: float = 0.0,
        kl_in_reward: bool = False,
        missing_eos_penalty: float | None = None,
        mask_truncated_completions: bool = False,
        val_do_sample: bool = False,
        log_samples_every: int = 50,
        generation_backend: str = "hf",
        reward_errors: str = "stop",
        reward_timeout: float | None = 60.0,
        **kwargs: Any,
    ) -> None:
        written = take_aliases(kwargs)
        loss_agg_mode = kwargs.pop("loss_agg_mode", loss_agg_mode)
        num_iterations = kwargs.pop("num_iterations", num_iterations)
        self.parts = RLParts.resolve(advantage_estimator, policy_loss, loss_agg_mode, kwargs, written)
        check_range("algo.beta", beta, 0.0, 1e3)
        counts = {"num_iterations": num_iterations, "num_mini_batches": num_mini_batches}
        for key, value in {**counts, "num_generations": num_generations}.items():
            check_range(f"algo.{written.get(key, key)}", value, 1)
        self.parts.check(advantage_estimator, num_generations, beta=beta, max_new_tokens=max_new_tokens)
        self.beta, self.kl_in_reward = float(beta), kl_in_reward
        self.num_generations, self.num_iterations = num_generations, num_iterations
        self.num_mini_batches, self.shuffle_mini_batches = num_mini_batches, shuffle_mini_batches
        self.mask_truncated_completions = mask_truncated_completions
        super().__init__(
            reward_functions=reward_functions,
            reward_models=reward_models,
            reward_weights=reward_weights,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            missing_eos_penalty=missing_eos_penalty,
            val_do_sample=val_do_sample,
            log_samples_every=log_samples_every,
            generation_backend=generation_backend,
            reward_errors=reward_errors,
            reward_timeout=reward_timeout,
            **kwargs,
        )

    def sampling_options(self) -> dict[str, Any]:
        return self.parts.sampling()

    @classmethod
    def schema_parameters(cls, node: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """The registered parts' hyperparameters, beyond the constructor's arguments (`rlhf_lab.rl.parts`)."""
        return schema_parameters(node)

    # ------------------------------------------------------------------------------------ config
    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    @property
    def name(self) -> str:
        return f"online RL ({self.parts.estimator_name})"

    @property
    def steps_per_rollout(self) -> int:
        return self.num_iterations * self.num_mini_batches

    @property
    def needs_old_logps(self) -> bool:
        """The policy's log-probs before this rollout's updates (the ratio, the reward's KL, the IS correction)."""
        corrects = self.parts.controls.corrects_sampler  # even at one step per rollout, as TRL's
        return self.steps_per_rollout > 1 or (self.kl_in_reward and self.beta > 0) or corrects

    def engine_kwargs(self) -> dict[str, Any]:
        return self.parts.controls.engine_kwargs()

    def companion_specs(self) -> dict[str, Companion]:
        # A critic (from a reward model) loads in the policy's dtype, as the reward models do.
        dtype = getattr(self.model_spec, "dtype", "float32")
        return {**super().companion_specs(), **self.parts.critic_companion(self.model_spec, dtype)}

    def check_data(self, datamodule: Any) -> None:
        self.keep_prompt_data(datamodule)
        self.share_prompts = bool(getattr(datamodule, "prefix_sharing", False))
        rows = datamodule.batch_size * self.num_generations
        accumulate = self.runtime.accumulate_grad_batches
        if rows % (self.num_mini_batches * accumulate):
            raise ConfigError(
                f"a rollout of data.batch_size={datamodule.batch_size} prompts x algo.num_generations="
                f"{self.num_generations} = {rows} completions does not split into algo.num_mini_batches="
                f"{self.num_mini_batches} x trainer.accumulate_grad_batches={accumulate} equal micro-batches"
            )

    def metric_names(self, split: str) -> set[str]:
        """Every metric this objective logs for ``split`` (unprefixed), without running a rollout."""
        names = self.rollout_metric_names(self.num_generations)
        if split != "train":
            return names
        names |= {"loss", "policy_loss", "entropy", "clip_ratio/low", "clip_ratio/high", "approx_kl"}
        names |= {"kl"} if self.reference_mode != "none" else set()
        names |= {"kl/sequence"} if self.kl_in_reward and self.beta > 0 else set()
        names |= {"value_loss", "value_clipfrac"} if self.parts.needs_critic else set()
        names |= {"reward_errors"} if self.reward_errors == "skip" else set()
        return names | self.parts.metric_names(old_logps=self.needs_old_logps)

    # ------------------------------------------------------------------------------- the update
    def step_totals(self, rollout: Rollout) -> StepTotals:
        """Totals of one optimiser step's batch (``rollout`` is that mini-batch), before any micro-batch
        (dropped completions count as no sequence: their loss mask is empty)."""
        tokens = rollout.mask.sum().float()
        world = trainer.world_size if (trainer := attached_trainer(self)) is not None else 1
        global_tokens = self.trainer.strategy.reduce(tokens.clone(), reduce_op="sum") if world > 1 else tokens
        sequences = rollout.size if rollout.kept is None else max(int(rollout.kept.sum()), 1)  # dropped: none
        return StepTotals(
            float(sequences),
            float(tokens),
            float(global_tokens),
            world,
            self.sampling.max_new_tokens,
            rollout.policy_tokens(),
        )

    def micro_loss(self, part: Rollout, totals: StepTotals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This micro-batch's share of the optimiser step's loss, and its metrics."""
        logps, entropies = self.token_stats(part, entropy=True)
        assert entropies is not None
        values = self._values(part) if self.parts.needs_critic else None
        return micro_batch_loss(
            self.parts, part, logps, entropies, values, totals, beta=self.beta, kl_in_reward=self.kl_in_reward
        )

    def _generator(self, stream: int, index: int) -> torch.Generator:
        """A generator for draw ``index`` of ``stream`` (mini-batch order): the same on every resume."""
        rank = trainer.global_rank if (trainer := attached_trainer(self)) is not None else 0
        return torch.Generator(device=self.device).manual_seed(self.derived_seed(stream, index, rank))

    def mini_batch_order(self, rollout: Rollout, pass_index: int) -> torch.Tensor:
        """Row order of one pass: in order, or shuffled (``shuffle_mini_batches``) by a resumable draw."""
        if not self.shuffle_mini_batches:
            return torch.arange(rollout.size, device=self.device)
        generator = self._generator(2, int(self.rollouts_done) * self.num_iterations + pass_index)
        return torch.randperm(rollout.size, generator=generator, device=self.device)

    def _optimizer_step(self, mini: Rollout, batch: PromptBatch) -> dict[str, torch.Tensor] | None:
        """Accumulate ``mini``'s micro-batches and step (None: a non-finite loss, handled by the NaN policy)."""
        if mini.kept is not None and self._all_ranks(not bool(mini.kept.any())):
            return self.take_empty_step(
                self.optimizers(), self.lr_schedulers()
            )  # every prompt dropped everywhere
        totals = self.step_totals(mini)
        rows = torch.arange(mini.size, device=self.device).chunk(self.runtime.accumulate_grad_batches)
        return self.accumulated_step(
            (partial(self.micro_loss, mini.rows(part), totals) for part in rows), batch
        )

    def training_step(self, batch: PromptBatch, batch_idx: int) -> torch.Tensor | None:
        self.policy.at_initial_weights = False
        rollout, rollout_metrics = self.make_rollout(batch)
        self.rollouts_done += 1
        tracker = MeanTracker()
        for pass_index in range(self.num_iterations):
            for rows in self.mini_batch_order(rollout, pass_index).chunk(self.num_mini_batches):
                step_metrics = self._optimizer_step(rollout.rows(rows), batch)
                if step_metrics is not None:
                    tracker.add(step_metrics)
        metrics = {**rollout_metrics, **tracker.means()}
        self.log_train_metrics(metrics, batch)
        self.maybe_write_samples(rollout)
        return metrics.get("loss")
