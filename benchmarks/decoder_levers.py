"""Decoder levers not built into rlhf_lab, measured before building them: ``torch.compile`` of the decoder,
and padding-free packing of several sequences per row.

Both time forward + backward of the decoder of ``dpo_vs_trl.py``'s Llama (built from config: 32k vocabulary,
hidden 256, 4 layers) on one DPO step's rows, in one process (the baseline timed before and after, so drift
on a noisy machine shows). The output head is left out: rlhf_lab runs it at completion positions only, so
neither lever changes it.

- ``compile``: eager against ``torch.compile``, on 8 rows of ``--length`` tokens.
- ``packing``: the 8 rows of 4 pairs with the benchmark's length spread (prompts of 30-300 tokens,
  completions of 15-145, about 490 tokens a pair as there; a pair's rows share their prompt length), padded
  to the longest (as batches are now), against the same sequences packed first-fit into rows of at most
  ``--capacity`` tokens (``--max-length`` and twice it by default) with a
  block-diagonal 4-D attention mask and positions restarting per sequence (what padding-free batches would
  run on CPU). Tokens per batch and the padded share are printed with the times.

    python benchmarks/decoder_levers.py [--lever compile|packing|all] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any


def median_step(step: Callable[[], None], steps: int) -> float:
    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def build_decoder(max_positions: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).model


def backward(decoder: Any, **inputs: Any) -> None:
    decoder(**inputs).last_hidden_state.pow(2).mean().backward()


def compile_lever(args: argparse.Namespace) -> None:
    import torch

    decoder = build_decoder(max(1024, args.length))
    ids = torch.randint(0, 32000, (8, args.length))
    mask = torch.ones_like(ids)
    eager_before = median_step(lambda: backward(decoder, input_ids=ids, attention_mask=mask), args.steps)
    compiled = torch.compile(decoder)
    started = time.perf_counter()
    backward(compiled, input_ids=ids, attention_mask=mask)
    first = time.perf_counter() - started
    compiled_step = median_step(lambda: backward(compiled, input_ids=ids, attention_mask=mask), args.steps)
    eager_after = median_step(lambda: backward(decoder, input_ids=ids, attention_mask=mask), args.steps)
    eager = (eager_before + eager_after) / 2
    print(
        f"compile: decoder forward + backward, 8 x {args.length} tokens, {args.threads} threads: eager "
        f"{eager_before:.3f} s (before) / {eager_after:.3f} s (after), compiled {compiled_step:.3f} s: "
        f"{eager / compiled_step:.2f}x; the first compiled step took {first:.0f} s"
    )


def sequence_lengths(rng: random.Random, pairs: int, max_length: int) -> list[int]:
    lengths = []
    for _ in range(pairs):
        prompt = rng.randint(30, 300)
        for _ in range(2):  # chosen and rejected share the prompt
            lengths.append(min(max_length, prompt + rng.randint(15, 145)))
    return lengths


def packed_inputs(lengths: list[int], capacity: int) -> dict[str, Any]:
    """First-fit-decreasing rows of at most ``capacity`` tokens; a block-diagonal mask keeps each sequence
    to itself (causal within it) and positions restart at each sequence."""
    import torch

    rows: list[list[int]] = []
    for length in sorted(lengths, reverse=True):
        row = next((r for r in rows if sum(r) + length <= capacity), None)
        if row is None:
            rows.append([length])
        else:
            row.append(length)
    width = max(sum(row) for row in rows)
    allowed = torch.zeros(len(rows), 1, width, width, dtype=torch.bool)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    for index, row in enumerate(rows):
        start = 0
        for length in row:
            block = torch.ones(length, length, dtype=torch.bool).tril()
            allowed[index, 0, start : start + length, start : start + length] = block
            positions[index, start : start + length] = torch.arange(length)
            start += length
        # Padding after the last sequence attends to itself only (no row of the mask may be empty).
        for pad in range(start, width):
            allowed[index, 0, pad, pad] = True
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ids = torch.randint(0, 32000, (len(rows), width))
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def packing_lever(args: argparse.Namespace, capacity: int) -> None:
    import torch

    decoder = build_decoder(capacity)
    rng = random.Random(args.seed)
    batches = [sequence_lengths(rng, 4, args.max_length) for _ in range(args.batches)]
    padded_times, packed_times, padded_tokens, packed_tokens, real_tokens = [], [], 0, 0, 0
    for lengths in batches:
        width = max(lengths)
        ids = torch.randint(0, 32000, (len(lengths), width))
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
        packed = packed_inputs(lengths, capacity)
        padded_times.append(
            median_step(
                lambda ids=ids, mask=mask: backward(decoder, input_ids=ids, attention_mask=mask), args.steps
            )
        )
        packed_times.append(median_step(lambda packed=packed: backward(decoder, **packed), args.steps))
        padded_tokens += ids.numel()
        packed_tokens += packed["input_ids"].numel()
        real_tokens += sum(lengths)
    padded, packed_s = sum(padded_times), sum(packed_times)
    print(
        f"packing: decoder forward + backward over {args.batches} batches of 4 pairs, {args.threads} threads: "
        f"padded {padded:.3f} s ({padded_tokens} positions, {1 - real_tokens / padded_tokens:.0%} padding), "
        f"packed into rows of <= {capacity} {packed_s:.3f} s ({packed_tokens} positions, "
        f"{1 - real_tokens / packed_tokens:.0%} padding): {padded / packed_s:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lever", choices=("compile", "packing", "all"), default="all")
    parser.add_argument("--length", type=int, default=490, help="compile: tokens per row")
    parser.add_argument("--max-length", type=int, default=512, help="packing: the longest sequence")
    parser.add_argument(
        "--capacity", type=int, nargs="*", default=None, help="packing: row lengths to pack into"
    )
    parser.add_argument("--batches", type=int, default=6, help="packing: batches timed")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.lever in ("compile", "all"):
        compile_lever(args)
    if args.lever in ("packing", "all"):
        for capacity in args.capacity or [args.max_length, 2 * args.max_length]:
            packing_lever(args, capacity)


if __name__ == "__main__":
    main()
