"""Rollout engines: what samples completions for the online objective.

An engine generates from prompt batches and returns token ids, the sampler's log-probs and finish reasons
(a `rlhf_lab.generation.Generation`), and receives the policy's weights after each optimiser step. The
in-process engine samples from the live policy (so it needs no weight transfer, and its log-probs equal
teacher forcing); an engine that runs elsewhere (vLLM, SGLang) implements the same two methods and is
registered in `ENGINES` under its ``algo.generation_backend`` name, without touching the objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from torch import nn

from rlhf_lab.data.batches import Sequences
from rlhf_lab.generation import Generation, SamplingConfig


class RolloutEngine(Protocol):
    """Samples completions; kept in sync with the policy's weights."""

    def generate(self, prompts: Sequences, sampling: SamplingConfig, row_seeds: list[int]) -> Generation:
        """Sample one completion per row of left-padded ``prompts``; row ``i`` draws from ``row_seeds[i]``."""
        ...

    def update_weights(self, model: nn.Module) -> None:
        """Receive the policy's current weights (after an optimiser step)."""
        ...


class InProcessEngine:
    """Samples with the policy itself (`rlhf_lab.policy.Policy.generate`): nothing to synchronise.

    Args:
        policy: The `Policy` being trained.
        token_ids: Returns the ``eos_token_id`` / ``pad_token_id`` keyword arguments of `generate`.
        temperature: Sample, and report log-probs, at this temperature instead of the trainer's
            (``algo.sampler_temperature``): a sampler whose log-probs differ from teacher forcing, a stand-in
            for vLLM's in tests and debugging of the importance-sampling correction. None: the trainer's.
        static_cache: Decode over a preallocated KV cache written in place (``algo.cache_implementation``).
        compile: Compile the one-token pass (``algo.compile_generation``; CUDA graphs on a GPU).
    """

    def __init__(
        self,
        policy: Any,
        token_ids: Callable[[], dict[str, Any]],
        temperature: float | None = None,
        static_cache: bool = False,
        compile: bool = False,
    ) -> None:
        self.policy = policy
        self.token_ids = token_ids
        self.temperature = temperature
        self.decoding = {"static_cache": static_cache, "compile": compile}

    def generate(self, prompts: Sequences, sampling: SamplingConfig, row_seeds: list[int]) -> Generation:
        if self.temperature is not None and sampling.do_sample:
            sampling = dataclasses.replace(sampling, temperature=self.temperature)
        return self.policy.generate(
            prompts, sampling, row_seeds=row_seeds, **self.token_ids(), **self.decoding
        )

    def update_weights(self, model: nn.Module) -> None:
        """Nothing to do: the engine reads the live weights."""


#: Engines by ``algo.generation_backend`` (``vllm`` is checked, and refused with its reason, by
#: `rlhf_lab.generation.check_generation_backend` before this is read).
ENGINES: dict[str, type] = {"hf": InProcessEngine}
