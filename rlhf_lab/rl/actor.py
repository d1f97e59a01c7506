"""The actor side of online RL: sampling a rollout with the engine, scoring it, and the teacher-forced
passes (old policy, reference, critic) its update needs. A mixin of `OnlineObjective`, which owns the
policy, the reference and the companions; the learner side (the update loop) lives there.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import move_data_to_device

from rlhf_lab.data.batches import PromptBatch, Sequences
from rlhf_lab.errors import ConfigError
from rlhf_lab.generation import Generation, SamplingConfig, stop_and_pad_ids
from rlhf_lab.rl.controls import high_entropy_mask
from rlhf_lab.rl.dynamic import fill_rollout, replacement_indices
from rlhf_lab.rl.engine import ENGINES, RolloutEngine
from rlhf_lab.rl.failures import RewardFailures
from rlhf_lab.rl.metrics import completion_metrics
from rlhf_lab.rl.parts import RLParts
from rlhf_lab.rl.rollout import Completions, Rollout, ScoredSamples, share_completions
from rlhf_lab.rl.samples import sample_rows, write_samples
from rlhf_lab.rl.scoring import RewardScorer, Scores
from rlhf_lab.rl.update import correct_sampler, estimate_advantages, shape_rewards


class RolloutActor(RewardFailures):
    """Sampling, scoring and the no-gradient passes over a rollout (mixed into `OnlineObjective`)."""

    # Provided by OnlineObjective / AlignmentObjective.
    policy: Any
    reference: Any
    companions: Any
    runtime: Any
    tokenizer: Any
    device: torch.device
    parts: RLParts
    scorer: RewardScorer
    sampling: SamplingConfig
    generation_backend: str
    num_generations: int
    reward_model_paths: list[str]
    reference_mode: str
    rollouts_done: torch.Tensor
    beta: float
    kl_in_reward: bool
    missing_eos_penalty: float | None
    mask_truncated_completions: bool
    log_samples_every: int
    _engine: RolloutEngine | None
    _rollout_tokens: int
    #: The data module the objective was built with (`prompt_data` when no trainer holds one).
    _prompt_data: Any = None
    #: Teacher-forced passes read each prompt once for its completions (``data.prefix_sharing``).
    share_prompts: bool = False

    if TYPE_CHECKING:  # for type checking only: a definition here would shadow the real ones

        def derived_seed(self, *parts: Any) -> int: ...

        @property
        def needs_old_logps(self) -> bool: ...

    @property
    def reward_names(self) -> list[str]:
        return self.scorer.names

    @property
    def engine(self) -> RolloutEngine:
        if self._engine is None:
            engine = ENGINES[self.generation_backend]
            self._engine = engine(self.policy, self._token_ids, **self.engine_kwargs())
        return self._engine

    def engine_kwargs(self) -> dict[str, Any]:
        """What the objective adds to the engine's constructor (online RL: ``sampler_temperature``)."""
        return {}

    def _token_ids(self) -> dict[str, Any]:
        return stop_and_pad_ids(self.policy.model, self.tokenizer)

    def sample(
        self,
        batch: PromptBatch,
        sampling: SamplingConfig,
        generations: int,
        stream: int,
        index: int | tuple[int, ...],
    ) -> Generation:
        """``generations`` completions per prompt; sample ``j`` of dataset example ``i`` in draw ``index`` of
        ``stream`` is seeded by those alone (``index`` may be several numbers: a rollout and a round)."""
        prompts = batch.sequences
        if generations > 1:
            rows = torch.arange(prompts.num_rows, device=prompts.input_ids.device)
            prompts = prompts.rows(rows.repeat_interleave(generations))
        draw = index if isinstance(index, tuple) else (index,)
        seeds = [
            self.derived_seed(stream, *draw, i, j) for i in batch.index.tolist() for j in range(generations)
        ]
        return self.engine.generate(prompts, sampling, seeds)

    def decode(self, batch: PromptBatch, generation: Generation, generations: int) -> Completions:
        eos = set(self._token_ids()["eos_token_id"])
        return self.scorer.decode(batch, generation, generations, self.tokenizer, eos)

    def score(self, batch: PromptBatch, generation: Generation, generations: int) -> torch.Tensor:
        """``[N, R]`` rewards of every completion by every reward (NaN: not applicable, or failed)."""
        return self.score_completions(self.decode(batch, generation, generations), generations).per_reward

    def score_completions(self, decoded: Completions, group_size: int = 1) -> Scores:
        models = [self.companions[f"reward_model_{i}"] for i in range(len(self.reward_model_paths))]
        return self.scorer.score(decoded, models, self.device, group_size)

    # ---------------------------------------------------------------------------------- rollout
    def make_rollout(self, batch: PromptBatch) -> tuple[Rollout, dict[str, torch.Tensor]]:
        """Sample, score and prepare one rollout; returns it and its metrics.

        The reward and completion metrics describe the first round (the data loader's prompts, as the policy
        did on them); under ``dynamic_sampling`` the rollout trained on is the one `fill_rollout` keeps.
        """
        rollout, generation = self.scored_rollout(batch, 0, int(self.rollouts_done))
        metrics = self.kept_reward_metrics(
            rollout.require("rewards"), rollout.require("per_reward"), rollout.kept, self.num_generations
        )
        metrics.update(completion_metrics(generation.lengths, generation.truncated))
        if self.parts.controls.dynamic_sampling:
            rollout, filtering = self.dynamic_rollout(rollout)
            metrics.update(filtering)
        kept = rollout.kept
        if kept is not None:
            metrics["reward_errors"] = torch.tensor(float(self.dropped_groups), device=self.device)
        self._rollout_tokens = int(rollout.sequences.attention_mask.sum())
        if kept is not None and not self.any_process(bool(kept.any())):
            return rollout, metrics  # nothing to learn from anywhere: no teacher-forced passes
        with torch.no_grad():
            if self.parts.needs_greedy_baseline:
                rollout.baseline_rewards = self.greedy_rewards(batch).repeat_interleave(self.num_generations)
            if self.reference_mode != "none":
                rollout.reference_logps = self._chunked(rollout, self._reference_token_logps)
            self._old_policy_pass(rollout)
            metrics.update(correct_sampler(rollout, self.parts.controls))
            metrics.update(self.score_rollout(rollout))
        return rollout, metrics

    def scored_rollout(
        self, batch: PromptBatch, stream: int, index: int | tuple[int, ...]
    ) -> tuple[Rollout, Generation]:
        """``num_generations`` completions of each prompt of ``batch`` (draw ``index`` of ``stream``), scored
        (a prompt a reward failed on is dropped under ``reward_errors=skip``); no teacher-forced pass yet."""
        generation = self.sample(batch, self.sampling, self.num_generations, stream, index)
        decoded = self.decode(batch, generation, self.num_generations)
        scores = self.score_completions(decoded, self.num_generations)
        kept = self.settle_rewards(decoded, scores, self.num_generations, "train")
        per_reward = scores.per_reward
        rewards = self.scorer.combine(per_reward)
        mask = generation.completion_mask.clone()
        if self.mask_truncated_completions:
            mask &= ~generation.truncated.unsqueeze(1)
        if kept is not None:
            kept = kept.to(mask.device)
            # A dropped prompt's completions leave the loss; a failed reward's NaN or inf reaches no sum.
            mask &= kept.unsqueeze(1)
            rewards = torch.where(kept, rewards, torch.zeros_like(rewards))
        rollout = Rollout(
            generation.sequences(),
            generation.prompts.input_ids.shape[1],
            mask,
            rewards=rewards,
            per_reward=per_reward,
            truncated=generation.truncated,
            sampler_logps=generation.logps,
            texts=decoded,
            kept=kept,
        )
        return rollout, generation

    def dynamic_rollout(self, first: Rollout) -> tuple[Rollout, dict[str, torch.Tensor]]:
        """DAPO's dynamic sampling (`rlhf_lab.rl.dynamic`): ``first`` with its constant groups replaced by
        groups of fresh prompts, and ``num_gen_batches`` / ``num_filtered_groups`` (over every process).

        Round ``r >= 1`` of rollout ``n`` draws its prompts with the seed ``(seed, 5, n, r, rank)`` and
        samples them with ``(seed, 4, n, r, example, sample)``: a resumed run draws the same extra groups.
        """
        done, generations = int(self.rollouts_done), self.num_generations

        def draw(round_index: int) -> Rollout:
            prompts = self.replacement_prompts(round_index, first.size // generations)
            return self.scored_rollout(prompts, 4, (done, round_index))[0]

        rollout, rounds, filtered = fill_rollout(
            first,
            draw,
            num_generations=generations,
            max_rounds=self.parts.controls.max_num_gen_batches,
            anyone_short=self.any_process,
            pad_token_id=self._token_ids()["pad_token_id"] or 0,
        )
        total = sum(self.gather_objects(filtered))
        return rollout, {
            "num_gen_batches": torch.tensor(float(rounds), device=self.device),
            "num_filtered_groups": torch.tensor(float(total), device=self.device),
        }

    def replacement_prompts(self, round_index: int, count: int) -> PromptBatch:
        """``count`` fresh training prompts for round ``round_index`` of this rollout, collated as the data
        loader's (a seeded draw from the whole training set; each process draws its own)."""
        data = self.prompt_data
        if data is None:
            raise RuntimeError("algo.dynamic_sampling draws training prompts, but no data module is attached")
        dataset = data.datasets["train"]
        trainer = self._attached_trainer()
        rank = trainer.global_rank if trainer is not None else 0
        seed = self.derived_seed(5, int(self.rollouts_done), round_index, rank)
        items = [dataset[int(i)] for i in replacement_indices(len(dataset), count, seed)]
        return move_data_to_device(data.collator("train")(items), self.device)

    def keep_prompt_data(self, datamodule: Any) -> None:
        """Under ``dynamic_sampling``, keep the data module replacement prompts come from (its training
        split), failing on image prompts, whose rounds `rlhf_lab.rl.dynamic` cannot join yet."""
        if not self.parts.controls.dynamic_sampling:
            return
        if getattr(datamodule, "images", None) is not None:
            raise ConfigError(
                "algo.dynamic_sampling=true joins groups of several sampling rounds, which is not "
                "supported for image prompts yet: set algo.dynamic_sampling=false"
            )
        self._prompt_data = datamodule

    @property
    def prompt_data(self) -> Any:
        """The data module replacement prompts come from: the trainer's, else the one built with."""
        attached = getattr(self._attached_trainer(), "datamodule", None)
        return attached if attached is not None else self._prompt_data

    def _old_policy_pass(self, rollout: Rollout) -> None:
        """The policy's log-probs before this rollout's updates (when needed) and, under
        ``top_entropy_quantile < 1``, the mask of its high-entropy tokens (one pass for both)."""
        quantile = self.parts.controls.top_entropy_quantile
        if not self.needs_old_logps and quantile >= 1:
            return
        stats = [
            self.token_stats(rollout.rows(part), entropy=quantile < 1) for part in self._row_chunks(rollout)
        ]
        if self.needs_old_logps:
            rollout.old_logps = torch.cat([logps for logps, _ in stats])
        if quantile < 1:
            entropies = torch.cat([entropy for _, entropy in stats if entropy is not None])
            # The threshold is over every process's rollout tokens (2 processes mask what 1 would).
            pooled = self.gather_objects(entropies[rollout.mask].float().cpu())
            rollout.token_mask = high_entropy_mask(entropies, rollout.mask, quantile, torch.cat(pooled))

    def greedy_rewards(self, batch: PromptBatch) -> torch.Tensor:
        """``[B]`` the combined reward of one greedy completion per prompt (ReMax's baseline), at the
        rollout's length limit; a reward that does not apply or fails counts as 0."""
        greedy = dataclasses.replace(self.sampling, do_sample=False)
        generation = self.sample(batch, greedy, 1, 3, int(self.rollouts_done))
        scores = self.score_completions(self.decode(batch, generation, 1), 1)
        return torch.nan_to_num(self.scorer.combine(scores.per_reward), nan=0.0, posinf=0.0, neginf=0.0)

    def held_out_metrics(self, batch: PromptBatch, sampling: SamplingConfig) -> dict[str, torch.Tensor]:
        """The metrics of one completion per held-out prompt (greedy unless ``val_do_sample``)."""
        return self.scored_samples(batch, sampling, 1, (1, 0), "val").metrics

    def scored_samples(
        self,
        batch: PromptBatch,
        sampling: SamplingConfig,
        generations: int,
        draw: tuple[int, int],
        split: str,
    ) -> ScoredSamples:
        """``generations`` completions per prompt (`sample`, draw ``(stream, index)``) scored by the rewards,
        ``algo.reward_errors`` applied (`settle_rewards`), and their reward and completion metrics."""
        generation = self.sample(batch, sampling, generations, *draw)
        decoded = self.decode(batch, generation, generations)
        scores = self.score_completions(decoded, generations)
        kept = self.settle_rewards(decoded, scores, generations, split)
        rewards = self.scorer.combine(scores.per_reward)
        metrics = self.kept_reward_metrics(rewards, scores.per_reward, kept, generations, split)
        metrics.update(completion_metrics(generation.lengths, generation.truncated))
        return ScoredSamples(generation, decoded, scores.per_reward, rewards, kept, metrics)

    def maybe_write_samples(self, rollout: Rollout) -> None:
        """The rollout's sample table, every ``log_samples_every`` rollouts (rank 0)."""
        trainer, every = self._attached_trainer(), self.log_samples_every
        due = bool(every) and (int(self.rollouts_done) - 1) % every == 0
        if due and trainer is not None and trainer.is_global_zero and self.runtime.run_dir is not None:
            rows = sample_rows(rollout, self.reward_names, trainer.global_step)
            if rows:  # every prompt dropped: nothing to show
                write_samples(rows, self.runtime.run_dir, trainer.global_step, list(trainer.loggers))

    def _row_chunks(self, rollout: Rollout) -> tuple[torch.Tensor, ...]:
        """The rollout's rows in micro-batches (memory as one training micro-batch)."""
        return torch.arange(rollout.size, device=self.device).chunk(self.runtime.accumulate_grad_batches)

    def _chunked(self, rollout: Rollout, compute: Any) -> torch.Tensor:
        """``compute`` over the rollout in micro-batches."""
        return torch.cat([compute(rollout.rows(part)) for part in self._row_chunks(rollout)])

    def token_stats(
        self, rollout: Rollout, entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[n, L]`` policy log-probs of the sampled tokens at the sampling temperature (and entropies)."""
        stats = self.policy(
            self._forwarded(rollout), per_token=True, entropy=entropy, temperature=self.sampling.temperature
        )
        width = rollout.prompt_width
        return stats.token_logps[:, width:], stats.token_entropy[:, width:] if entropy else None

    def _forwarded(self, rollout: Rollout) -> Sequences:
        """The rows a teacher-forced pass reads: with ``share_prompts``, each prompt once for its completions
        (`share_completions`; the same values and gradients as the unshared rows)."""
        if not self.share_prompts:
            return rollout.sequences
        return share_completions(rollout.sequences, rollout.prompt_width)

    def _reference_token_logps(self, rollout: Rollout) -> torch.Tensor:
        stats = self.reference.run(
            self._forwarded(rollout), per_token=True, temperature=self.sampling.temperature
        )
        return stats.token_logps[:, rollout.prompt_width :].float()

    def _values(self, rollout: Rollout) -> torch.Tensor:
        """``[n, L]`` the critic's value of the state before each completion token (read at the token before)."""
        values = self.companions["value_model"](rollout.sequences)
        width, length = rollout.prompt_width, rollout.mask.shape[1]
        return values[:, width - 1 : width - 1 + length].float()

    def score_rollout(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Rewards (with the KL penalty when in the reward) -> the estimator's advantages (and returns).

        Dropped completions (``rollout.kept``) are left out of the estimate, so the kept prompts' advantages
        are what the estimator gives them alone (a group's own under GRPO and RLOO); theirs are 0.
        """
        if self.parts.needs_critic:
            rollout.values = self._chunked(rollout, self._values) * rollout.mask
        kept = rollout.kept
        if kept is None or bool(kept.all()):
            return self._estimate(rollout)
        if not bool(kept.any()):
            # Another process has kept prompts, so this one takes the step too: with zero advantages and an
            # empty loss mask, and the estimator's metrics (every process logs the same keys).
            metrics = self._estimate(rollout)
            rollout.advantages = torch.zeros_like(rollout.require("advantages"))
            if rollout.returns is not None:
                rollout.returns = torch.zeros_like(rollout.returns)
            return metrics
        rows = kept.nonzero().flatten()
        part = rollout.rows(rows)
        metrics = self._estimate(part)
        for name in ("advantages", "returns"):
            value = getattr(part, name)
            if value is not None:
                full = value.new_zeros((rollout.size, *value.shape[1:]))
                full[rows] = value
                setattr(rollout, name, full)
        return metrics

    def _estimate(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        *shaped, metrics = shape_rewards(
            rollout,
            beta=self.beta,
            kl_in_reward=self.kl_in_reward,
            missing_eos_penalty=self.missing_eos_penalty,
            controls=self.parts.controls,
            max_new_tokens=self.sampling.max_new_tokens,
        )
        rewards, scores, token_rewards = shaped
        estimated = estimate_advantages(
            self.parts, rollout, (rewards, scores, token_rewards), self.num_generations
        )
        return {**metrics, **estimated}
