"""Drawing the next token from ``[B, V]`` logits: greedily, from a generator shared by the batch, or by
inverting each row's CDF at a uniform from the row's own seeded stream (what makes a row's samples
independent of the batch it is in), with the sampled token's log-probability."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from rlhf_lab.generation import SamplingConfig


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask all but the top-k / nucleus tokens with -inf (HF's TopK and TopP warpers)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop tokens once the mass before them reaches top_p (the most likely token always stays).
        drop = (cumulative - sorted_logits.softmax(-1)) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def row_uniforms(
    row_seeds: list[int] | None, batch: int, sampling: SamplingConfig, device: torch.device
) -> torch.Tensor | None:
    """``[B, max_new_tokens]`` float64 uniforms, row ``b``'s drawn from its own seed (None: sample with the
    shared generator, or decode greedily)."""
    if row_seeds is None or not sampling.do_sample:
        return None
    if len(row_seeds) != batch:
        raise ValueError(f"{len(row_seeds)} row seeds for {batch} rows")
    return torch.stack(
        [
            torch.rand(
                sampling.max_new_tokens,
                generator=torch.Generator().manual_seed(seed),
                dtype=torch.float64,
            )
            for seed in row_seeds
        ]
    ).to(device)


def draw(
    logits: torch.Tensor,
    sampling: SamplingConfig,
    step: int,
    generator: torch.Generator | None,
    uniforms: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B]`` next tokens from ``[B, V]`` logits (scaled in place), and their log-probs under
    ``softmax(logits / temperature)`` (before top-k/top-p filtering)."""
    if not sampling.do_sample:
        token = logits.argmax(-1)
        return token, token_logps(logits, token)
    scaled = logits if sampling.temperature == 1.0 else logits.div_(sampling.temperature)
    filtered = filter_logits(scaled, sampling.top_k, sampling.top_p)
    if uniforms is None:
        token = torch.multinomial(filtered.softmax(-1), 1, generator=generator).squeeze(-1)
    else:
        token = invert_cdf(filtered, uniforms[:, step])
    return token, token_logps(scaled, token)


def token_logps(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, token.unsqueeze(-1)).squeeze(-1)


#: Tokens per block of `invert_cdf`'s two-level CDF.
CDF_BLOCK = 256


def invert_cdf(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """``[B]`` tokens drawn from ``softmax(logits)`` by inverting each row's CDF at its ``[B]`` float64
    uniform.

    The CDF is summed in two levels, over blocks of `CDF_BLOCK` tokens and then within the block the
    uniform lands in, instead of a cumulative sum over the vocabulary (a sequential scan, once the loop's
    costliest op). Every reduction is within one row, so a row draws the same token in any batch.
    """
    batch, vocab = logits.shape
    weights = (logits - logits.amax(-1, keepdim=True)).exp_()
    if vocab % CDF_BLOCK:
        weights = F.pad(weights, (0, -vocab % CDF_BLOCK))
    blocks = weights.view(batch, -1, CDF_BLOCK)
    # Block sums in fp32 (a pairwise sum, as exact as the fp32 weights; casting them all to fp64 cost more
    # than the rest of the draw), accumulated over the blocks in fp64.
    cdf = blocks.sum(-1).double().cumsum(-1)
    total = cdf[:, -1:]
    target = uniform.unsqueeze(-1) * total
    block = first_above(cdf, target)
    target = target - F.pad(cdf, (1, 0)).gather(-1, block)  # the mass of the blocks before it
    within = blocks.gather(1, block.unsqueeze(-1).expand(-1, -1, CDF_BLOCK)).squeeze(1)
    token = block * CDF_BLOCK + first_above(within.cumsum(-1, dtype=torch.float64), target)
    return token.squeeze(-1)


def first_above(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B, 1]`` index of each row's first ``cdf`` entry above ``target``, never past the row's last entry
    with mass (a target rounded up to the total would land on the zero-mass tail)."""
    last = (cdf < cdf[:, -1:]).sum(-1, keepdim=True)
    return torch.minimum(torch.searchsorted(cdf, target, right=True), last)
