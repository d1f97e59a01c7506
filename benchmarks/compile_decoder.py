"""Does ``torch.compile`` of the decoder pay? Forward + backward of the DPO benchmark's decoder, eager against
compiled, in one process (eager timed before and after, so drift on a noisy machine shows).

The model is the Llama of ``dpo_vs_trl.py`` (built from config: 32k vocabulary, hidden 256, 4 layers), the
batch one DPO step's unshared rows (4 pairs = 8 rows of ~490 tokens). Only the decoder is compiled: the
output head runs through rlhf_lab's chunked completion-only pass, which is already the step's largest cost.

    python benchmarks/compile_decoder.py [--rows 8] [--length 490] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=490)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max(1024, args.length),
    )
    decoder = LlamaForCausalLM(config).model
    ids = torch.randint(0, config.vocab_size, (args.rows, args.length))
    mask = torch.ones_like(ids)

    def step(fn) -> None:
        hidden = fn(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden.pow(2).mean().backward()

    def median_step(fn) -> float:
        step(fn)
        times = []
        for _ in range(args.steps):
            started = time.perf_counter()
            step(fn)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    eager_before = median_step(decoder)
    compiled = torch.compile(decoder)
    started = time.perf_counter()
    step(compiled)
    first = time.perf_counter() - started
    compiled_step = median_step(compiled)
    eager_after = median_step(decoder)
    eager = (eager_before + eager_after) / 2
    print(
        f"decoder forward + backward, {args.rows} x {args.length} tokens, {args.threads} threads: "
        f"eager {eager_before:.3f} s (before) / {eager_after:.3f} s (after), compiled {compiled_step:.3f} s: "
        f"{eager / compiled_step:.2f}x; the first compiled step took {first:.0f} s"
    )


if __name__ == "__main__":
    main()
