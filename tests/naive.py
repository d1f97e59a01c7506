"""Naive recomputations the tests use as oracles: full-vocabulary logits from a plain HF forward."""

from __future__ import annotations

import torch

from rlhf_lab.data.batches import Sequences
from rlhf_lab.logprobs import naive_completion_logps


@torch.no_grad()
def full_logits(model: torch.nn.Module, sequences: Sequences) -> torch.Tensor:
    """``[N, T, V]`` logits of a plain ``model(input_ids, attention_mask)`` call."""
    return model(input_ids=sequences.input_ids, attention_mask=sequences.attention_mask).logits


def naive_logps(model: torch.nn.Module, sequences: Sequences, score_prompt: bool = False) -> torch.Tensor:
    """``[N]`` summed log-probs of the completion (or, with ``score_prompt``, every real) tokens."""
    mask = sequences.attention_mask.bool() if score_prompt else sequences.completion_mask
    return naive_completion_logps(full_logits(model, sequences), sequences.input_ids, mask)


def completion_lengths(sequences: Sequences) -> torch.Tensor:
    return sequences.completion_mask[:, 1:].sum(1)
