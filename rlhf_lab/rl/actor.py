"""The actor side of online RL: sampling a rollout with the engine, scoring it, and the teacher-forced
passes (old policy, reference, critic) its update needs. A mixin of `OnlineObjective`, which owns the
policy, the reference and the companions; the learner side (the update loop) lives there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rlhf_lab.data.batches import PromptBatch
from rlhf_lab.generation import Generation, SamplingConfig, stop_and_pad_ids
from rlhf_lab.rl.engine import ENGINES, RolloutEngine
from rlhf_lab.rl.metrics import completion_metrics, reward_metrics
from rlhf_lab.rl.parts import RLParts
from rlhf_lab.rl.rollout import Completions, Rollout
from rlhf_lab.rl.scoring import RewardScorer
from rlhf_lab.rl.update import estimate_advantages, shape_rewards


class RolloutActor:
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
    _engine: RolloutEngine | None
    _rollout_tokens: int

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
            self._engine = ENGINES[self.generation_backend](self.policy, self._token_ids)
        return self._engine

    def _token_ids(self) -> dict[str, Any]:
        return stop_and_pad_ids(self.policy.model, self.tokenizer)

    def sample(
        self, batch: PromptBatch, sampling: SamplingConfig, generations: int, stream: int, index: int
    ) -> Generation:
        """``generations`` completions per prompt; sample ``j`` of dataset example ``i`` in draw ``index`` of
        ``stream`` is seeded by those alone."""
        prompts = batch.sequences
        if generations > 1:
            rows = torch.arange(prompts.num_rows, device=prompts.input_ids.device)
            prompts = prompts.rows(rows.repeat_interleave(generations))
        seeds = [
            self.derived_seed(stream, index, i, j) for i in batch.index.tolist() for j in range(generations)
        ]
        return self.engine.generate(prompts, sampling, seeds)

    def decode(self, batch: PromptBatch, generation: Generation, generations: int) -> Completions:
        eos = set(self._token_ids()["eos_token_id"])
        return self.scorer.decode(batch, generation, generations, self.tokenizer, eos)

    def score(self, batch: PromptBatch, generation: Generation, generations: int) -> torch.Tensor:
        """``[N, R]`` rewards of every completion by every reward (NaN: not applicable)."""
        return self.score_completions(self.decode(batch, generation, generations))

    def score_completions(self, decoded: Completions) -> torch.Tensor:
        models = [self.companions[f"reward_model_{i}"] for i in range(len(self.reward_model_paths))]
        return self.scorer.score(decoded, models, self.device)

    def make_rollout(self, batch: PromptBatch) -> tuple[Rollout, dict[str, torch.Tensor]]:
        """Sample, score and prepare one rollout; returns it and its metrics."""
        generation = self.sample(batch, self.sampling, self.num_generations, 0, int(self.rollouts_done))
        decoded = self.decode(batch, generation, self.num_generations)
        per_reward = self.score_completions(decoded)
        mask = generation.completion_mask.clone()
        if self.mask_truncated_completions:
            mask &= ~generation.truncated.unsqueeze(1)
        rollout = Rollout(
            generation.sequences(),
            generation.prompts.input_ids.shape[1],
            mask,
            rewards=self.scorer.combine(per_reward),
            per_reward=per_reward,
            truncated=generation.truncated,
            sampler_logps=generation.logps,
            texts=decoded,
        )
        metrics = reward_metrics(
            rollout.require("rewards"), per_reward, self.reward_names, self.num_generations
        )
        metrics.update(completion_metrics(generation.lengths, generation.truncated))
        self._rollout_tokens = int(rollout.sequences.attention_mask.sum())
        with torch.no_grad():
            if self.reference_mode != "none":
                rollout.reference_logps = self._chunked(rollout, self._reference_token_logps)
            if self.needs_old_logps:
                rollout.old_logps = self._chunked(rollout, lambda part: self.token_stats(part)[0])
            metrics.update(self.score_rollout(rollout))
        return rollout, metrics

    def _chunked(self, rollout: Rollout, compute: Any) -> torch.Tensor:
        """``compute`` over the rollout in micro-batches (memory as one training micro-batch)."""
        rows = torch.arange(rollout.size, device=self.device).chunk(self.runtime.accumulate_grad_batches)
        return torch.cat([compute(rollout.rows(part)) for part in rows])

    def token_stats(
        self, rollout: Rollout, entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[n, L]`` policy log-probs of the sampled tokens at the sampling temperature (and entropies)."""
        stats = self.policy(
            rollout.sequences, per_token=True, entropy=entropy, temperature=self.sampling.temperature
        )
        width = rollout.prompt_width
        return stats.token_logps[:, width:], stats.token_entropy[:, width:] if entropy else None

    def _reference_token_logps(self, rollout: Rollout) -> torch.Tensor:
        stats = self.reference.run(rollout.sequences, per_token=True, temperature=self.sampling.temperature)
        return stats.token_logps[:, rollout.prompt_width :].float()

    def _values(self, rollout: Rollout) -> torch.Tensor:
        """``[n, L]`` the critic's value of the state before each completion token (read at the token before)."""
        values = self.companions["value_model"](rollout.sequences)
        width, length = rollout.prompt_width, rollout.mask.shape[1]
        return values[:, width - 1 : width - 1 + length].float()

    def score_rollout(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Rewards (with the KL penalty when in the reward) -> the estimator's advantages (and returns)."""
        scores, token_rewards, metrics = shape_rewards(
            rollout,
            beta=self.beta,
            kl_in_reward=self.kl_in_reward,
            missing_eos_penalty=self.missing_eos_penalty,
        )
        if self.parts.needs_critic:
            rollout.values = self._chunked(rollout, self._values) * rollout.mask
        return {
            **metrics,
            **estimate_advantages(self.parts, rollout, scores, token_rewards, self.num_generations),
        }
