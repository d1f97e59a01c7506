"""Sampling speed: rlhf_lab's decoding loop (`rlhf_lab.generation.generate`) against transformers' ``generate``.

The same Llama (built from config: a 32k vocabulary, hidden 256, 4 layers), the same left-padded prompts,
the same sampling settings (temperature 1, no top-k/top-p) and the same number of tokens per row (EOS is
banned until the last step on both sides with ``min_new_tokens``), at 1 and at 2 threads; each thread count
in its own process, the two systems alternating within it. rlhf_lab samples with per-row seeded streams
(what online RL uses); transformers with its global generator.

    python benchmarks/generation_vs_hf.py [--rows 16] [--prompt 32] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# This checkout's rlhf_lab, not the installed one (an editable install may point at another checkout).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_lab.data.batches import Sequences
    from rlhf_lab.generation import SamplingConfig, generate

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, 32000, (args.rows, args.prompt))
    attention = torch.ones_like(ids)
    attention[1::2, : args.prompt // 4] = 0  # every other row left-padded by a quarter
    prompts = Sequences(ids, attention, torch.zeros_like(ids, dtype=torch.bool))
    sampling = SamplingConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens - 1)
    eos = 2

    def ours() -> int:
        out = generate(
            model, prompts, sampling, eos_token_id=eos, pad_token_id=0, row_seeds=list(range(args.rows))
        )
        return int(out.completion_mask.sum())

    def theirs() -> int:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attention, do_sample=True, top_k=0, top_p=1.0,
                                 max_new_tokens=args.tokens, min_new_tokens=args.tokens - 1, eos_token_id=eos,
                                 pad_token_id=0)  # fmt: skip
        new = out[:, args.prompt :]
        ended = (new == eos).cumsum(1) - (new == eos).int()  # tokens after a row's first EOS do not count
        return int((ended == 0).sum())

    times: dict[str, list[float]] = {"rlhf_lab": [], "generate": []}
    tokens: dict[str, int] = {}
    for repeat in range(args.repeats + 1):
        for name, run in (("rlhf_lab", ours), ("generate", theirs)):
            start = time.perf_counter()
            tokens[name] = run()
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {
        "threads": args.threads,
        **{f"{name}_s": statistics.median(values) for name, values in times.items()},
        **{f"{name}_tokens": count for name, count in tokens.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        print(json.dumps(measure(args)))
        return
    print(f"rows={args.rows} prompt={args.prompt} new tokens={args.tokens} repeats={args.repeats} (median s)")
    print(
        f"{'threads':>7} {'rlhf_lab s':>11} {'generate s':>11} {'speed-up':>9} {'tokens (ours / theirs)':>24}"
    )
    for threads in (1, 2):
        argv = [sys.executable, __file__, *sys.argv[1:], f"--threads={threads}"]
        row = json.loads(
            subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
        speedup = row["generate_s"] / row["rlhf_lab_s"]
        print(
            f"{threads:>7} {row['rlhf_lab_s']:>11.2f} {row['generate_s']:>11.2f} {speedup:>8.2f}x "
            f"{row['rlhf_lab_tokens']:>12} / {row['generate_tokens']}"
        )


if __name__ == "__main__":
    main()
