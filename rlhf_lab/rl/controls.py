"""The controls researchers sweep around an online-RL loss, as flat ``algo.*`` keys (paper names).

- ``kl_estimator``: which of Schulman's (2020) k1/k2/k3 estimates the KL to the reference, in the loss
  or, under ``kl_in_reward``, in the reward (None: k3 in the loss, GRPO's Eq. 4; k1 in the reward, as PPO
  for RLHF and TRL's RLOO).
- ``entropy_coef``: an entropy bonus, ``loss - entropy_coef * H`` with ``H`` the mean entropy of the step's
  (trained) tokens (TRL's ``entropy_coef``; verl's ``entropy_coeff``).
- ``top_entropy_quantile``: "Beyond the 80/20 rule" (Wang et al., 2025): the policy loss counts only the
  top fraction of the rollout's tokens by entropy (TRL's ``top_entropy_quantile``, the paper's rho = 0.2).
- ``overlong_buffer_len`` / ``overlong_penalty_factor``: DAPO's soft overlong punishment (Yu et al., 2025,
  Eq. 13; verl's ``overlong_buffer``), a reward term: 0 up to ``max_new_tokens - buffer`` tokens, then
  falling linearly to ``-penalty_factor`` at ``max_new_tokens``.
- ``min_new_tokens``: EOS cannot be sampled before this many tokens.
- ``dynamic_sampling`` / ``max_num_gen_batches``: DAPO's dynamic sampling (Yu et al., 2025, Eq. 11; verl's
  ``algorithm.filter_groups``): groups whose rewards all agree are replaced by groups of fresh prompts, in
  at most ``max_num_gen_batches`` sampling rounds per rollout, the first included (`rlhf_lab.rl.dynamic`).
- ``importance_sampling_correction`` / ``importance_sampling_cap``: weight the policy loss by the ratio of
  the trainer's to the sampler's log-probs, truncated at (``*_truncate``, TIS; Yao et al., 2025) or masked
  above (``*_mask``) the cap, per token or per sequence (TRL's ``vllm_importance_sampling_mode`` and
  ``_cap``; `rlhf_lab.losses.correction`).
- ``sampler_temperature``: the in-process engine samples, and reports log-probs, at this temperature while
  the trainer scores at ``temperature``: a sampler that disagrees with the trainer, standing in for vLLM's
  numerics in tests and debugging (None: ``temperature``).
- ``cache_implementation`` / ``compile_generation``: how the in-process engine decodes. ``static`` keeps the KV
  cache preallocated and written in place (transformers' ``StaticCache``; TRL's ``cache_implementation``);
  ``compile_generation`` runs each one-token pass through ``torch.compile(mode="reduce-overhead")`` over a
  static cache (CUDA graphs on a GPU). Both sample exactly what the default (a growing cache) samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from rlhf_lab.errors import ConfigError, check_choice, check_range
from rlhf_lab.losses.correction import IS_CORRECTION_MODES
from rlhf_lab.losses.policy_gradient import KL_ESTIMATORS

#: The controls' keys: (annotation, default).
CONTROL_SETTINGS: dict[str, tuple[Any, Any]] = {
    "kl_estimator": (Optional[str], None),  # noqa: UP045 - Hydra's structured configs read typing.Optional
    "entropy_coef": (float, 0.0),
    "top_entropy_quantile": (float, 1.0),
    "overlong_buffer_len": (int, 0),
    "overlong_penalty_factor": (float, 1.0),
    "min_new_tokens": (int, 0),
    "dynamic_sampling": (bool, False),
    "max_num_gen_batches": (int, 4),
    "importance_sampling_correction": (Optional[str], None),  # noqa: UP045
    "importance_sampling_cap": (float, 3.0),
    "sampler_temperature": (Optional[float], None),  # noqa: UP045
    "cache_implementation": (str, "dynamic"),
    "compile_generation": (bool, False),
}
#: ``algo.cache_implementation``'s choices: transformers' growing cache, or a preallocated one.
CACHE_IMPLEMENTATIONS = ("dynamic", "static")


@dataclass(frozen=True)
class Controls:
    """The run's controls (see the module docstring); defaults change nothing."""

    kl_estimator: str | None = None
    entropy_coef: float = 0.0
    top_entropy_quantile: float = 1.0
    overlong_buffer_len: int = 0
    overlong_penalty_factor: float = 1.0
    min_new_tokens: int = 0
    dynamic_sampling: bool = False
    max_num_gen_batches: int = 4
    importance_sampling_correction: str | None = None
    importance_sampling_cap: float = 3.0
    sampler_temperature: float | None = None
    cache_implementation: str = "dynamic"
    compile_generation: bool = False

    @classmethod
    def take(cls, values: dict[str, Any]) -> Controls:
        """The controls among ``values`` (the others at their defaults), range-checked."""
        picked = {k: values[k] for k in CONTROL_SETTINGS if values.get(k) is not None}
        controls = cls(**picked)
        if controls.kl_estimator is not None:
            check_choice("algo.kl_estimator", controls.kl_estimator, KL_ESTIMATORS)
        check_range("algo.entropy_coef", controls.entropy_coef, 0.0)
        check_range("algo.top_entropy_quantile", controls.top_entropy_quantile, 0.0, 1.0, low_inclusive=False)
        check_range("algo.overlong_buffer_len", controls.overlong_buffer_len, 0)
        check_range("algo.overlong_penalty_factor", controls.overlong_penalty_factor, 0.0)
        check_range("algo.min_new_tokens", controls.min_new_tokens, 0)
        # verl's 0 (no cap) is not offered: a task the policy always solves (or never) would sample forever.
        check_range("algo.max_num_gen_batches", controls.max_num_gen_batches, 1)
        if controls.importance_sampling_correction is not None:
            check_choice(
                "algo.importance_sampling_correction",
                controls.importance_sampling_correction,
                IS_CORRECTION_MODES,
            )
        # A cap below 1 would down-weight (or mask) tokens the sampler and the trainer agree on.
        check_range("algo.importance_sampling_cap", controls.importance_sampling_cap, 1.0)
        if controls.sampler_temperature is not None:
            check_range("algo.sampler_temperature", controls.sampler_temperature, 0.0, low_inclusive=False)
        check_choice("algo.cache_implementation", controls.cache_implementation, CACHE_IMPLEMENTATIONS)
        return controls

    def check(self, *, beta: float, max_new_tokens: int) -> None:
        """Fail on combinations that make no sense (`check_dynamic_sampling`: those with the estimator)."""
        if self.kl_estimator is not None and beta == 0:
            raise ConfigError(
                f"algo.kl_estimator={self.kl_estimator} chooses how the KL to the reference is estimated, but "
                "algo.beta=0 leaves the KL out (and loads no reference): set algo.beta > 0 or drop the key"
            )
        for key in ("min_new_tokens", "overlong_buffer_len"):
            value = getattr(self, key)
            if value >= max_new_tokens and value > 0:
                raise ConfigError(
                    f"algo.{key}={value} must be below algo.max_new_tokens={max_new_tokens}"
                    + (": every completion would be punished" if key == "overlong_buffer_len" else "")
                )

    def check_dynamic_sampling(
        self, estimator: str, compares_generations: bool, num_generations: int
    ) -> None:
        """Fail when ``dynamic_sampling`` cannot tell a useful group from a useless one."""
        if not self.dynamic_sampling:
            return
        if not compares_generations:
            raise ConfigError(
                f"algo.dynamic_sampling=true drops the prompts whose completions all got the same reward, which "
                f"teach nothing to an estimator comparing a prompt's completions (grpo, rloo, "
                f"reinforce_pp_baseline); algo.advantage_estimator={estimator} does not compare them: set "
                "algo.dynamic_sampling=false"
            )
        if num_generations < 2:
            raise ConfigError(
                f"algo.dynamic_sampling=true keeps the prompts whose completions got different rewards: "
                f"algo.num_generations={num_generations} must be at least 2"
            )

    @property
    def corrects_sampler(self) -> bool:
        """The policy loss is weighted by the trainer/sampler ratio (needs teacher-forced old log-probs)."""
        return self.importance_sampling_correction is not None

    def engine_kwargs(self) -> dict[str, Any]:
        """What the controls add to the rollout engine's constructor (``sampler_temperature``, the cache)."""
        kwargs: dict[str, Any] = {
            "static_cache": self.cache_implementation == "static",
            "compile": self.compile_generation,
        }
        if self.sampler_temperature is not None:
            kwargs["temperature"] = self.sampler_temperature
        return kwargs

    def reward_kl(self) -> str:
        """The estimator of the KL penalty in the reward."""
        return self.kl_estimator or "k1"

    def loss_kl(self) -> str:
        """The estimator of the KL term in the loss."""
        return self.kl_estimator or "k3"

    def overlong_penalty(self, lengths: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """DAPO's soft overlong punishment (Eq. 13) of ``[N]`` completion lengths: 0 up to ``L_max -
        L_cache``, ``((L_max - L_cache) - |y|) / L_cache * factor`` beyond (``-factor`` at ``L_max``)."""
        if not self.overlong_buffer_len:
            return torch.zeros(lengths.shape, device=lengths.device)
        expected = max_new_tokens - self.overlong_buffer_len
        over = (lengths.float() - expected).clamp(min=0.0)
        return -over / self.overlong_buffer_len * self.overlong_penalty_factor


def high_entropy_mask(
    entropies: torch.Tensor, mask: torch.Tensor, quantile: float, pool: torch.Tensor | None = None
) -> torch.Tensor:
    """``[N, L]`` True at the completion tokens whose entropy is at or above the ``1 - quantile`` quantile of
    the masked entropies (the top ``quantile`` share by entropy; TRL's ``get_high_entropy_mask``, linear
    interpolation as ``torch.quantile``). ``pool``: the entropies the quantile is taken over (every
    process's rollout tokens; default: ``entropies`` under ``mask``). Departure: TRL pools the micro-batch's
    tokens; this, the rollout's, so that gradient accumulation does not change the mask."""
    on = mask.bool()
    values = (entropies[on] if pool is None else pool).float().to(entropies.device)
    if values.numel() == 0:
        return torch.zeros_like(on)
    threshold = torch.quantile(values, 1 - quantile)
    return (entropies >= threshold) & on
