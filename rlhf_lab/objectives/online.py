"""Online RL: the policy samples completions for prompt batches, rewards score them, and a policy-gradient
loss improves it. `OnlineObjective` holds what RLOO, GRPO and PPO share; each is a thin subclass.

One training batch (``data.batch_size`` prompts per process) is one *rollout*: each prompt gets
``num_generations`` completions from `rlhf_lab.generation.generate` (seeded by the run's seed, the rollout
number and the rank, so rollouts are reproducible and a resumed run samples exactly what an uninterrupted
one would), every reward function and reward model scores them, and the objective turns rewards into
advantages (`score_rollout`). The rollout is then optimised for ``passes`` passes (``num_iterations``;
PPO's ``num_ppo_epochs``), each split into ``num_mini_batches`` optimiser steps, each of those into
``trainer.accumulate_grad_batches`` micro-batches. Every normaliser is computed over the whole optimiser
step (and, for ``dapo``, over every process) before the first micro-batch, so accumulation is exact.

Optimisation is manual (Lightning's ``automatic_optimization = False``): ``trainer.global_step`` counts
optimiser steps (``passes * num_mini_batches`` per rollout), ``trainer.max_steps`` is in optimiser steps,
and the training entry point hands ``trainer.accumulate_grad_batches`` and ``trainer.gradient_clip_val`` to
the objective instead of Lightning. Held-out batches are generated (greedy unless ``val_do_sample``) and
scored by the same rewards: ``val/reward`` is what a sweep maximises and what checkpoints are ranked by.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhf_lab.data.batches import PromptBatch, Sequences
from rlhf_lab.data.formats import PreferenceExample
from rlhf_lab.errors import ConfigError, check_range
from rlhf_lab.generation import Generation, SamplingConfig, check_generation_backend, stop_and_pad_ids
from rlhf_lab.losses.policy_gradient import kl_estimate, masked_mean
from rlhf_lab.models.build import Companion
from rlhf_lab.models.hub import HubModel
from rlhf_lab.objectives.base import AlignmentObjective
from rlhf_lab.rewards import (
    call_reward_function,
    check_reward_weights,
    combine_rewards,
    resolve_reward_functions,
    reward_name,
)

log = logging.getLogger(__name__)


@dataclass
class Completions:
    """Sampled completions as the reward functions see them, row-aligned (TRL's arguments).

    Attributes:
        prompts: Each row's prompt as data (a string or messages).
        completions: Decoded completions (strings, or assistant messages for conversational prompts).
        ids: Completion token ids without EOS.
        columns: The data's extra columns, one value per row.
    """

    prompts: list[Any]
    completions: list[Any]
    ids: list[list[int]]
    columns: dict[str, list[Any]]


@dataclass
class Rollout:
    """One rollout: sampled completions and everything the loss needs about them, row-aligned.

    Attributes:
        sequences: ``[N, P + L]`` prompt (left-padded to ``P``) + completion rows.
        prompt_width: ``P``: completion token ``t`` is column ``P + t``.
        mask: ``[N, L]`` completion tokens the loss counts (truncated ones dropped under
            ``mask_truncated_completions``).
        tensors: Per-row tensors (``[N]`` or ``[N, L]``): ``rewards``, ``per_reward``, ``advantages``,
            ``old_logps``, ``reference_logps``, PPO's ``values`` and ``returns``...
        texts: What the rewards saw (for the sample tables); not carried into `rows`.
    """

    sequences: Sequences
    prompt_width: int
    mask: torch.Tensor
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    texts: Completions | None = None

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def rows(self, index: torch.Tensor) -> Rollout:
        """The rows ``index`` (a ``[n]`` long tensor) of everything."""
        return Rollout(
            self.sequences.rows(index),
            self.prompt_width,
            self.mask[index],
            {k: v[index] for k, v in self.tensors.items()},
        )


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


def _reduce_fx(key: str) -> str:
    """How a metric combines over batches and processes: extremes of lengths stay extremes."""
    return {"completions/min_length": "min", "completions/max_length": "max"}.get(key, "mean")


class _MeanTracker:
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


class OnlineObjective(AlignmentObjective):
    """Shared base of RLOO, GRPO and PPO: rollouts, rewards, the optimisation loop, samples and validation.

    Args:
        reward_functions: Import paths (or ``{_target_: ...}`` mappings) of reward functions
            (`rlhf_lab.rewards`).
        reward_models: Sequence classifiers scoring (prompt, completion): local directories or hub ids (an
            ``algo=reward`` export), each with its own tokenizer and chat template.
        reward_weights: One weight per reward, functions first (None: all 1).
        num_generations: Completions per prompt (``G``).
        max_new_tokens: Longest completion (EOS included).
        temperature: Sampling temperature (log-probs of the loss are computed at it too).
        top_p: Nucleus sampling.
        top_k: Top-k sampling (0: off).
        num_iterations: Optimisation passes over each rollout (the old policy's log-probs are kept for the
            importance ratio when > 1).
        num_mini_batches: Optimiser steps per pass (the rollout split into this many mini-batches).
        beta: Weight of the KL to the reference (0: no reference model is loaded).
        mask_truncated_completions: Leave completions that hit ``max_new_tokens`` out of the loss.
        val_do_sample: Sample held-out completions (at ``temperature``) instead of greedy decoding.
        log_samples_every: Write ``samples/step_NNNNNN.jsonl`` (and a W&B table) every N rollouts (0: never).
        generation_backend: ``hf`` (the policy's own `generate`) or ``vllm`` (not available yet: fails
            with the reason).
        **kwargs: `AlignmentObjective` arguments.
    """

    batch_kind = "prompts"
    monitor = ("val/reward", "max")

    def __init__(
        self,
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
        beta: float = 0.0,
        mask_truncated_completions: bool = False,
        val_do_sample: bool = False,
        log_samples_every: int = 50,
        generation_backend: str = "hf",
        **kwargs: Any,
    ) -> None:
        check_range("algo.beta", beta, 0.0, 1e3)
        self.beta = float(beta)
        self.reward_functions = resolve_reward_functions(reward_functions or [])
        self.reward_model_paths = list(reward_models or [])
        if not self.reward_functions and not self.reward_model_paths:
            raise ConfigError(
                "online RL needs a reward: set algo.reward_functions (e.g. [rlhf_lab.rewards.exact_match]) "
                "and/or algo.reward_models (e.g. [<run dir of algo=reward>/export])"
            )
        self.reward_weights = check_reward_weights(
            reward_weights, len(self.reward_functions) + len(self.reward_model_paths)
        )
        check_range("algo.num_generations", num_generations, 1)
        check_range("algo.num_iterations", num_iterations, 1)
        check_range("algo.num_mini_batches", num_mini_batches, 1)
        check_range("algo.log_samples_every", log_samples_every, 0)
        check_generation_backend(generation_backend)
        self.sampling = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, do_sample=True
        )
        self.val_sampling = SamplingConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            do_sample=val_do_sample,
        )
        self.num_generations = num_generations
        self.num_iterations = num_iterations
        self.num_mini_batches = num_mini_batches
        self.mask_truncated_completions = mask_truncated_completions
        self.log_samples_every = log_samples_every
        self.generation_backend = generation_backend
        super().__init__(**kwargs)
        self.automatic_optimization = False
        # Rollouts sampled so far: seeds the next one, so a resumed run samples what an uninterrupted run would.
        self.register_buffer("rollouts_done", torch.zeros((), dtype=torch.long))
        self._rollout_tokens = 0

    # ------------------------------------------------------------------------------------ config
    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.beta > 0

    @property
    def passes(self) -> int:
        """Optimisation passes over one rollout."""
        return self.num_iterations

    @property
    def needs_sample_logps(self) -> bool:
        """Whether `score_rollout` needs the sampling policy's per-token log-probs (a KL in the reward)."""
        return False

    @property
    def steps_per_rollout(self) -> int:
        return self.passes * self.num_mini_batches

    def _resolve_reference(self, requested: str) -> str:
        mode = super()._resolve_reference(requested)
        if mode == "precomputed":
            raise ConfigError(
                f"algo.reference=precomputed: {self.name} scores completions it samples during training, "
                "which no table computed before training holds; use algo.reference=copy or adapter_off"
            )
        return mode

    @property
    def reward_names(self) -> list[str]:
        names = [reward_name(function) for function in self.reward_functions]
        models = len(self.reward_model_paths)
        names += ["reward_model"] if models == 1 else [f"reward_model_{i}" for i in range(models)]
        return names

    def reward_model_spec(self, path: str) -> HubModel:
        # Reward models load in the policy's dtype (a tiny policy is float32).
        return HubModel(name_or_path=path, dtype=getattr(self.model_spec, "dtype", "float32"))

    def companion_specs(self) -> dict[str, Companion]:
        specs = super().companion_specs()
        for position, path in enumerate(self.reward_model_paths):
            specs[f"reward_model_{position}"] = Companion(
                self.reward_model_spec(path), task="sequence_classification"
            )
        return specs

    def check_data(self, datamodule: Any) -> None:
        # The policy's tokenizer: decodes completions for the rewards, and knows EOS and padding.
        self.tokenizer = datamodule.tokenizer
        rows = datamodule.batch_size * self.num_generations
        accumulate = self.runtime.accumulate_grad_batches
        parts = self.num_mini_batches * accumulate
        if rows % parts:
            raise ConfigError(
                f"a rollout of data.batch_size={datamodule.batch_size} prompts x algo.num_generations="
                f"{self.num_generations} = {rows} completions does not split into algo.num_mini_batches="
                f"{self.num_mini_batches} x trainer.accumulate_grad_batches={accumulate} equal micro-batches"
            )

    def metric_names(self, split: str) -> set[str]:
        """Every metric this objective logs for ``split`` (unprefixed), without running a rollout."""
        names = {"reward", "reward_std", *(f"rewards/{n}/mean" for n in self.reward_names)}
        names |= set(completion_metrics(torch.ones(1), torch.zeros(1)))
        if self.num_generations > 1:
            names.add("frac_reward_zero_std")
        if split == "train":
            names |= {"loss", "policy_loss", "entropy", *self.loss_metric_names()}
            if self.reference_mode != "none":
                names.add("kl")
        return names

    def loss_metric_names(self) -> set[str]:
        return {"clip_ratio/low", "clip_ratio/high"}

    def total_optimizer_steps(self) -> int:
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018 - sets up the training data (num_training_batches)
        batches = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        steps = int(batches * epochs * self.steps_per_rollout) if math.isfinite(batches) else 0
        if trainer.max_steps and trainer.max_steps > 0:
            steps = min(steps, trainer.max_steps) if steps else trainer.max_steps
        return max(1, steps)

    # ----------------------------------------------------------------------------------- rollouts
    def _token_ids(self) -> dict[str, Any]:
        return stop_and_pad_ids(self.policy.model, self.tokenizer)

    def _generator(self, stream: int, index: int) -> torch.Generator:
        """A generator for draw ``index`` of ``stream`` (PPO's mini-batch order): the same on every resume."""
        rank = self.trainer.global_rank if self._trainer is not None else 0
        return torch.Generator(device=self.device).manual_seed(self.derived_seed(stream, index, rank))

    def sample(
        self, batch: PromptBatch, sampling: SamplingConfig, generations: int, stream: int, index: int
    ) -> Generation:
        """``generations`` completions per prompt; sample ``j`` of dataset example ``i`` in draw ``index`` of
        ``stream`` is seeded by those alone, so rollouts depend neither on batch layout, rank nor resume."""
        prompts = batch.sequences
        if generations > 1:
            rows = torch.arange(prompts.num_rows, device=prompts.input_ids.device)
            prompts = prompts.rows(rows.repeat_interleave(generations))
        seeds = [
            self.derived_seed(stream, index, example, j)
            for example in batch.index.tolist()
            for j in range(generations)
        ]
        return self.policy.generate(prompts, sampling, row_seeds=seeds, **self._token_ids())

    def decode(self, batch: PromptBatch, generation: Generation, generations: int) -> Completions:
        """What the rewards see: each row's prompt, decoded completion (assistant messages for conversational
        prompts), token ids without EOS, and the data's extra columns, repeated per sample."""
        ids = [
            row[mask].tolist()
            for row, mask in zip(
                generation.completion_ids.cpu(), generation.completion_mask.cpu(), strict=True
            )
        ]
        eos = set(self._token_ids()["eos_token_id"])
        ids = [row[:-1] if row and row[-1] in eos else row for row in ids]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        prompts = [prompt for prompt in batch.prompts for _ in range(generations)]
        completions: list[Any] = [
            [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
            for prompt, text in zip(prompts, texts, strict=True)
        ]
        columns = {
            name: [v for v in values for _ in range(generations)] for name, values in batch.columns.items()
        }
        return Completions(prompts, completions, ids, columns)

    def score(self, batch: PromptBatch, generation: Generation, generations: int) -> torch.Tensor:
        """``[N, R]`` rewards of every completion by every reward (NaN: not applicable)."""
        return self.score_completions(self.decode(batch, generation, generations))

    def score_completions(self, decoded: Completions) -> torch.Tensor:
        scores = [
            call_reward_function(function, decoded.prompts, decoded.completions, decoded.ids, decoded.columns)
            for function in self.reward_functions
        ]
        if self.reward_model_paths:
            examples = [
                PreferenceExample(prompt=prompt, chosen=completion, rejected=None, source=f"rollout:{i}")
                for i, (prompt, completion) in enumerate(
                    zip(decoded.prompts, decoded.completions, strict=True)
                )
            ]
            for position in range(len(self.reward_model_paths)):
                model = self.companions[f"reward_model_{position}"]
                scores.append(model.score_examples(examples).float().cpu())
        return torch.stack(scores, 1).to(self.device)

    def make_rollout(self, batch: PromptBatch) -> tuple[Rollout, dict[str, torch.Tensor]]:
        """Sample, score and prepare one rollout; returns it and its metrics."""
        generation = self.sample(batch, self.sampling, self.num_generations, 0, int(self.rollouts_done))
        decoded = self.decode(batch, generation, self.num_generations)
        per_reward = self.score_completions(decoded)
        weights = torch.tensor(self.reward_weights, device=per_reward.device)
        rewards = combine_rewards(per_reward, weights)
        mask = generation.completion_mask.clone()
        if self.mask_truncated_completions:
            mask &= ~generation.truncated.unsqueeze(1)
        rollout = Rollout(generation.sequences(), generation.prompts.input_ids.shape[1], mask, texts=decoded)
        rollout.tensors["rewards"] = rewards
        rollout.tensors["per_reward"] = per_reward
        rollout.tensors["truncated"] = generation.truncated
        metrics = reward_metrics(rewards, per_reward, self.reward_names, self.num_generations)
        metrics.update(completion_metrics(generation.lengths, generation.truncated))
        self._rollout_tokens = int(rollout.sequences.attention_mask.sum())
        with torch.no_grad():
            if self.reference_mode != "none":
                rollout.tensors["reference_logps"] = self._chunked(rollout, self._reference_token_logps)
            if self.steps_per_rollout > 1 or self.needs_sample_logps:
                # The sampling policy's log-probs, teacher-forced: the ratio's denominator over later passes.
                sample_logps = self._chunked(rollout, lambda part: self.token_stats(part)[0])
                rollout.tensors["sample_logps"] = rollout.tensors["old_logps"] = sample_logps
            metrics.update(self.score_rollout(rollout))
        return rollout, metrics

    def _chunked(self, rollout: Rollout, compute: Any) -> torch.Tensor:
        """``compute`` over the rollout in micro-batches (memory as one training micro-batch)."""
        parts = [
            compute(rollout.rows(rows))
            for rows in self._micro_batches(torch.arange(rollout.size, device=self.device))
        ]
        return torch.cat(parts)

    def _micro_batches(self, rows: torch.Tensor) -> list[torch.Tensor]:
        return list(rows.chunk(self.runtime.accumulate_grad_batches))

    def token_stats(
        self, rollout: Rollout, entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[n, L]`` policy log-probs of the sampled tokens at the sampling temperature (and entropies)."""
        stats = self.policy(
            rollout.sequences, per_token=True, entropy=entropy, temperature=self.sampling.temperature
        )
        width = rollout.prompt_width
        entropies = stats.token_entropy[:, width:] if entropy else None
        return stats.token_logps[:, width:], entropies

    def _reference_token_logps(self, rollout: Rollout) -> torch.Tensor:
        stats = self.reference.run(rollout.sequences, per_token=True, temperature=self.sampling.temperature)
        return stats.token_logps[:, rollout.prompt_width :].float()

    def score_rollout(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Turn rewards into ``advantages`` (and whatever else the loss needs) in ``rollout.tensors``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- losses
    def step_totals(self, rollout: Rollout) -> dict[str, float]:
        """Normalisers of one optimiser step's batch (``rollout`` is that mini-batch), before any
        micro-batch: ``sequences`` and ``tokens`` of this process, ``global_tokens`` of every process."""
        tokens = rollout.mask.sum().float()
        global_tokens = tokens
        if self._trainer is not None and self.trainer.world_size > 1:
            global_tokens = self.trainer.strategy.reduce(tokens.clone(), reduce_op="sum")
        return {
            "sequences": float(rollout.size),
            "tokens": float(tokens),
            "global_tokens": float(global_tokens),
        }

    def micro_loss(
        self, part: Rollout, totals: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This micro-batch's share of the optimiser step's loss, and its metrics (weighted by the share of
        the step's tokens it holds, so summing over micro-batches gives the step's values)."""
        raise NotImplementedError

    def _kl_terms(self, part: Rollout, logps: torch.Tensor) -> torch.Tensor | None:
        reference = part.tensors.get("reference_logps")
        if reference is None:
            return None
        return kl_estimate(logps, reference, estimator="k3")

    def _token_share(self, part: Rollout, totals: dict[str, float]) -> float:
        return float(part.mask.sum()) / max(totals["tokens"], 1.0)

    def _shared_token_metrics(
        self, part: Rollout, totals: dict[str, float], entropies: torch.Tensor | None, kl: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        share = self._token_share(part, totals)
        metrics = {}
        if entropies is not None:
            metrics["entropy"] = masked_mean(entropies.detach(), part.mask) * share
        if kl is not None:
            metrics["kl"] = masked_mean(kl.detach(), part.mask) * share
        return metrics

    # ------------------------------------------------------------------------------- the loop
    def mini_batch_order(self, rollout: Rollout, pass_index: int) -> torch.Tensor:
        """Row order of one pass (in order; PPO shuffles)."""
        return torch.arange(rollout.size, device=self.device)

    def training_step(self, batch: PromptBatch, batch_idx: int) -> torch.Tensor | None:
        self.policy.at_initial_weights = False
        rollout, rollout_metrics = self.make_rollout(batch)
        self.rollouts_done += 1
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        tracker = _MeanTracker()
        for pass_index in range(self.passes):
            order = self.mini_batch_order(rollout, pass_index)
            for mini_rows in order.chunk(self.num_mini_batches):
                mini = rollout.rows(mini_rows)
                totals = self.step_totals(mini)
                step_metrics: dict[str, torch.Tensor] = {}
                step_loss = torch.zeros((), device=self.device)
                finite = True
                for micro_rows in self._micro_batches(torch.arange(mini.size, device=self.device)):
                    loss, metrics = self.micro_loss(mini.rows(micro_rows), totals)
                    if self.runtime.nan_policy != "ignore" and not self._all_ranks(
                        bool(torch.isfinite(loss.detach()))
                    ):
                        finite = False
                        break
                    self.manual_backward(loss)
                    step_loss += loss.detach()
                    for key, value in metrics.items():
                        step_metrics[key] = step_metrics.get(key, 0.0) + value.detach()
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    self._non_finite("loss", batch)
                    continue
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()
                tracker.add({"loss": step_loss, **step_metrics})
        metrics = {**rollout_metrics, **tracker.means()}
        self._log_metrics("train", metrics, batch.size)
        if scheduler is not None:
            self.log("train/lr", scheduler.get_last_lr()[0], on_step=True, on_epoch=False)
        self._maybe_write_samples(rollout)
        return metrics.get("loss")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._batch_started is not None:
            elapsed = time.perf_counter() - self._batch_started
            self.log(
                "train/tokens_per_sec",
                self._rollout_tokens / max(elapsed, 1e-9),
                on_step=True,
                on_epoch=False,
            )

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        generations = 1
        generation = self.sample(batch, self.val_sampling, generations, 1, 0)
        per_reward = self.score(batch, generation, generations)
        rewards = combine_rewards(per_reward, torch.tensor(self.reward_weights, device=per_reward.device))
        metrics = reward_metrics(rewards, per_reward, self.reward_names, generations)
        metrics.update(completion_metrics(generation.lengths, generation.truncated))
        self._log_metrics("val", metrics, batch.size)

    def _log_metrics(self, split: str, metrics: dict[str, torch.Tensor], batch_size: int) -> None:
        """Training metrics per rollout, held-out ones per validation; both over every process (ranks hold
        equal batches, so a mean of means is the mean; lengths' extremes stay extremes)."""
        for key, value in metrics.items():
            self.log(
                f"{split}/{key}",
                value,
                on_step=split == "train",
                on_epoch=split != "train",
                batch_size=batch_size,
                sync_dist=True,
                reduce_fx=_reduce_fx(key),
                prog_bar=key in ("reward", "loss"),
            )

    def compute(self, batch: Any, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError(f"{self.name} trains on its own rollouts (training_step), not on batches")

    # ------------------------------------------------------------------------------------ samples
    def _maybe_write_samples(self, rollout: Rollout) -> None:
        every = self.log_samples_every
        done = int(self.rollouts_done)
        if not every or (done - 1) % every or self._trainer is None or not self.trainer.is_global_zero:
            return
        run_dir = self.runtime.run_dir
        if run_dir is None:
            return
        assert rollout.texts is not None
        prompts, completions = rollout.texts.prompts, rollout.texts.completions
        per_reward, rewards = rollout.tensors["per_reward"], rollout.tensors["rewards"]
        advantages = rollout.tensors.get("advantages")
        rows = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            row: dict[str, Any] = {
                "step": self.trainer.global_step,
                "prompt": prompt,
                "completion": completion,
                "reward": float(rewards[i]),
            }
            for column, name in enumerate(self.reward_names):
                value = float(per_reward[i, column])
                row[f"rewards/{name}"] = None if math.isnan(value) else value
            if advantages is not None:
                value = advantages[i]
                row["advantage"] = float(value if value.ndim == 0 else value[rollout.mask[i]].mean())
            rows.append(row)
        path = Path(run_dir) / "samples" / f"step_{self.trainer.global_step:06d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        for logger in self.trainer.loggers:
            if hasattr(logger, "log_table"):  # W&B
                columns = list(rows[0])
                logger.log_table(
                    key="samples",
                    columns=columns,
                    data=[
                        [json.dumps(r[c]) if isinstance(r[c], (list, dict)) else r[c] for c in columns]
                        for r in rows
                    ],
                )
