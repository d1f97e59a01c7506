"""What the rewards see of a rollout, and their scores: decoding, reward functions and reward models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf_lab.data.batches import PromptBatch
from rlhf_lab.data.formats import PreferenceExample
from rlhf_lab.errors import ConfigError
from rlhf_lab.generation import Generation
from rlhf_lab.models.build import Companion
from rlhf_lab.models.hub import HubModel
from rlhf_lab.rewards import (
    RewardFailure,
    check_reward_settings,
    check_reward_weights,
    combine_rewards,
    resolve_reward_functions,
    reward_name,
    reward_values,
)
from rlhf_lab.rl.rollout import Completions


@dataclass
class Scores:
    """What the rewards made of a batch of completions.

    Attributes:
        per_reward: ``[N, R]`` every reward's score of every completion (NaN: not applicable, or failed).
        failures: The rewards that failed, and on which completions (empty: none did).
    """

    per_reward: torch.Tensor
    failures: list[RewardFailure] = field(default_factory=list)

    def failed_rows(self) -> set[int]:
        """The completions some reward failed on."""
        return {row for failure in self.failures for row in failure.rows}


class RewardScorer:
    """Reward functions (TRL's signature) and reward models, weighted.

    Args:
        reward_functions: Import paths or ``{_target_: ...}`` mappings (`rlhf_lab.rewards`).
        reward_models: The reward models scoring beside them (built as companions by the objective): their
            directories or hub ids, as messages name them.
        reward_weights: One weight per reward, functions first (None: all 1).
        reward_timeout: Seconds one call of a reward function may take (None: no limit).
        reward_errors: ``stop`` or ``skip`` (checked here; `rlhf_lab.rl.failures` applies it).
    """

    def __init__(
        self,
        reward_functions: list[Any] | None,
        reward_models: list[str],
        reward_weights: list[float] | None,
        reward_timeout: float | None = None,
        reward_errors: str = "stop",
    ) -> None:
        check_reward_settings(reward_errors, reward_timeout)
        self.functions = resolve_reward_functions(reward_functions or [])
        self.model_paths = list(reward_models)
        self.num_models = len(self.model_paths)
        self.timeout = reward_timeout
        if not self.functions and not self.num_models:
            raise ConfigError(
                "online RL needs a reward: set algo.reward_functions (e.g. [rlhf_lab.rewards.exact_match]) "
                "and/or algo.reward_models (e.g. [<run dir of algo=reward>/export])"
            )
        self.weights = check_reward_weights(reward_weights, len(self.functions) + self.num_models)

    @property
    def names(self) -> list[str]:
        """One name per reward column: functions by name, then ``reward_model`` (or ``reward_model_<i>``)."""
        names = [reward_name(function) for function in self.functions]
        models = self.num_models
        return names + (["reward_model"] if models == 1 else [f"reward_model_{i}" for i in range(models)])

    @staticmethod
    def companion_specs(paths: list[str], dtype: str) -> dict[str, Companion]:
        """The reward models to build beside the policy (``reward_model_<i>``), each with its own tokenizer."""
        return {
            f"reward_model_{i}": Companion(
                HubModel(name_or_path=path, dtype=dtype),
                task="sequence_classification",
                key=f"algo.reward_models[{i}]",
                role="reward model",
            )
            for i, path in enumerate(paths)
        }

    def decode(
        self, batch: PromptBatch, generation: Generation, generations: int, tokenizer: Any, eos: set[int]
    ) -> Completions:
        """Each row's prompt, decoded completion (assistant messages for conversational prompts), token ids
        without EOS, and the data's extra columns, repeated per sample."""
        ids = [
            row[mask].tolist()
            for row, mask in zip(
                generation.completion_ids.cpu(), generation.completion_mask.cpu(), strict=True
            )
        ]
        ids = [row[:-1] if row and row[-1] in eos else row for row in ids]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        prompts = [prompt for prompt in batch.prompts for _ in range(generations)]
        completions: list[Any] = [
            [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
            for prompt, text in zip(prompts, texts, strict=True)
        ]
        columns = {
            name: [v for v in values for _ in range(generations)] for name, values in batch.columns.items()
        }
        return Completions(prompts, completions, ids, columns)

    def score(
        self, decoded: Completions, reward_models: list[Any], device: torch.device, group_size: int = 1
    ) -> Scores:
        """Every reward's score of every completion, and the rewards that failed (`reward_values`; a reward
        model fails on a non-finite score). ``group_size``: completions per prompt (consecutive rows)."""
        columns, failures = [], []
        for function in self.functions:
            values, failed = reward_values(
                function,
                decoded.prompts,
                decoded.completions,
                decoded.ids,
                decoded.columns,
                timeout=self.timeout,
                group_size=group_size,
            )
            columns.append(values)
            failures += failed
        if reward_models:
            examples = [
                PreferenceExample(prompt=prompt, chosen=completion, rejected=None, source=f"rollout:{i}")
                for i, (prompt, completion) in enumerate(
                    zip(decoded.prompts, decoded.completions, strict=True)
                )
            ]
            for i, model in enumerate(reward_models):
                scores = model.score_examples(examples).float().cpu()
                bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
                if bad:
                    what = f"reward model algo.reward_models[{i}] ({self.model_paths[i]})"
                    problem = f"scored {float(scores[bad[0]])} for a completion (a non-finite score)"
                    failures.append(RewardFailure(what, problem, bad))
                columns.append(scores)
        return Scores(torch.stack(columns, 1).to(device), failures)

    def combine(self, per_reward: torch.Tensor) -> torch.Tensor:
        """``[N]`` weighted sums (not-applicable rewards left out)."""
        return combine_rewards(per_reward, torch.tensor(self.weights, device=per_reward.device))
