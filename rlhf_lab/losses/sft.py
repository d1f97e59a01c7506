"""Negative log-likelihood of target completions (SFT, and the SFT term mixed into preference losses)."""

from __future__ import annotations

import torch


def nll_loss(completion_logps: torch.Tensor, completion_lengths: torch.Tensor) -> torch.Tensor:
    """Per-example NLL, averaged over each completion's tokens.

    ``-log pi(y|x) / |y|`` per example. Averaging per example, then over the batch, weights every example
    equally (HF's causal-LM loss averages over all tokens of a micro-batch instead); the per-example form
    makes gradient accumulation exact: 8 examples x 1 step equals 4 x 2.

    Args:
        completion_logps: ``[B]`` summed completion log-probs.
        completion_lengths: ``[B]`` completion token counts.

    Returns:
        ``[B]`` per-example losses.

    Example:
        ``completion_logps=[-6.0, -1.0]``, ``completion_lengths=[3, 1]`` gives ``[2.0, 1.0]``.
    """
    return -completion_logps / completion_lengths.clamp(min=1).to(completion_logps.dtype)
