"""Peak memory and time of completion log-probs: rlhf_lab vs TRL's path vs a naive log-softmax.

Each variant runs forward + backward of the summed completion log-probs of one DPO batch, in its own
process, so peak RSS (``ru_maxrss``) is that variant's own. The model is a Llama built from config with a
32k vocabulary (where the output head dominates a small model), so nothing is downloaded.

    python benchmarks/logps_memory.py [--vocab 32000] [--hidden 256] [--seq 512] [--completion 128]

Variants:
    decoder_only  the decoder pass without any output head (the floor every variant pays)
    rlhf_lab      head only at completion positions, chunked, logsumexp per chunk under checkpointing
    trl_fused     TRL 1.16's own path: ``add_fused_lm_head`` (its DPO, KTO and GRPO trainers call the model
                  with ``fused_lm_head=True``: a tiled head on labelled positions only)
    trl_full      full logits for every position, then TRL's ``selective_log_softmax`` (TRL's path before
                  its fused head, and what its trainers without one still do)
    naive         full logits, full ``log_softmax``, gather
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def build(args: argparse.Namespace):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=args.hidden * 3,
        max_position_embeddings=args.seq,
    )
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, args.vocab, (args.sequences, args.seq))
    attention = torch.ones_like(ids)
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, args.seq - args.completion :] = True
    return model, {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


def logps_of(variant: str, model, batch, args: argparse.Namespace):
    import torch

    if variant == "decoder_only":  # the floor: the same decoder pass with no output head at all
        return model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0].mean(
            (1, 2)
        )
    if variant == "rlhf_lab":
        from rlhf_lab.data.batches import Sequences
        from rlhf_lab.policy import sequence_logps

        # recompute=True: the memory-lean path (logps_recompute=auto keeps logits that fit in 512 MiB instead).
        return sequence_logps(model, Sequences(**batch), chunk_size=args.chunk, recompute=True).logps
    if variant == "trl_fused":
        from trl.trainer.utils import add_fused_lm_head

        if not getattr(model, "_fused_head_added", False):
            add_fused_lm_head(model)
            model._fused_head_added = True
        labels = batch["input_ids"].masked_fill(~batch["completion_mask"], -100)
        outputs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
            fused_lm_head=True,
        )
        return outputs.log_probs.sum(-1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:]
    if variant == "trl_full":
        from trl.trainer.utils import selective_log_softmax

        token_logps = selective_log_softmax(logits, targets)
    else:
        token_logps = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


def measure(args: argparse.Namespace) -> dict[str, float]:
    import torch

    torch.set_num_threads(args.threads)
    model, batch = build(args)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timings = []
    for repeat in range(args.repeats + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        logps = logps_of(args.variant, model, batch, args)
        logps.sum().backward()
        if repeat:  # the first pass warms up allocators and kernels
            timings.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": args.variant,
        "peak_mib_above_model": (peak_kib - baseline_kib) / 1024,
        "seconds_per_step": sum(timings) / len(timings),
        "logps_sum": float(logps.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=8, help="chosen + rejected rows (4 pairs)")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--completion", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=256, help="rlhf_lab's logps_chunk_size")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args)))
        return

    rows = []
    passthrough = [a for a in sys.argv[1:]]
    for variant in ("decoder_only", "rlhf_lab", "trl_fused", "trl_full", "naive"):
        try:
            out = (
                subprocess.run(
                    [sys.executable, __file__, *passthrough, "--variant", variant],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            rows.append(json.loads(out))
        except subprocess.CalledProcessError as error:
            rows.append({"variant": variant, "error": error.stderr.strip().splitlines()[-1]})
    print(
        f"vocab={args.vocab} hidden={args.hidden} layers={args.layers} sequences={args.sequences} "
        f"seq={args.seq} completion={args.completion} threads={args.threads} chunk={args.chunk}"
    )
    print(f"{'variant':<10} {'peak MiB above model':>22} {'s/step (fwd+bwd)':>18} {'sum of logps':>14}")
    for row in rows:
        if "error" in row:
            print(f"{row['variant']:<10} failed: {row['error']}")
            continue
        print(
            f"{row['variant']:<10} {row['peak_mib_above_model']:>22.0f} {row['seconds_per_step']:>18.3f} "
            f"{row['logps_sum']:>14.2f}"
        )


if __name__ == "__main__":
    main()
