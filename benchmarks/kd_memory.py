"""Peak memory and time of one knowledge-distillation step: rlhf_lab's chunked path vs full logits.

Forward + backward of the per-token generalised JSD between a teacher and a student (both Llamas built from
config with a 32k vocabulary, where the output heads dominate small models) over the completion tokens of
one batch; each variant in its own process, so peak RSS (``ru_maxrss``) is that variant's own.

    python benchmarks/kd_memory.py [--vocab 32000] [--hidden 256] [--seq 512] [--completion 128] [--beta 0.5]

Variants:
    decoders   the student's and the teacher's decoder passes without any output head (the floor)
    rlhf_lab   `rlhf_lab.logprobs.completion_distillation`: both heads only at completion positions, in chunks
               (the student's checkpointed), so no ``[batch, seq, vocab]`` tensor exists
    trl        full student and teacher logits, then TRL's ``GKDTrainer.generalized_jsd_loss`` (labels -100
               off the completion), as TRL's GKD trainer computes it
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

    def llama(layers: int):
        torch.manual_seed(layers)
        config = LlamaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=args.hidden * 3,
            max_position_embeddings=args.seq,
        )
        return LlamaForCausalLM(config)

    student, teacher = llama(args.layers), llama(args.teacher_layers).requires_grad_(False).eval()
    ids = torch.randint(0, args.vocab, (args.sequences, args.seq))
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, args.seq - args.completion :] = True
    return student, teacher, ids, completion


def loss_of(variant: str, student, teacher, ids, completion, args: argparse.Namespace):
    import torch

    attention = torch.ones_like(ids)
    if variant == "decoders":
        with torch.no_grad():
            teacher.model(input_ids=ids, attention_mask=attention)
        return student.model(input_ids=ids, attention_mask=attention)[0].mean()
    if variant == "rlhf_lab":
        from rlhf_lab.logprobs import completion_distillation

        hidden = student.model(input_ids=ids, attention_mask=attention)[0]
        with torch.no_grad():
            teacher_hidden = teacher.model(input_ids=ids, attention_mask=attention)[0][:, :-1]
        tokens = completion_distillation(
            hidden,
            lambda rows, cols: teacher.lm_head(teacher_hidden[rows, cols]),
            ids,
            completion,
            student.lm_head,
            chunk_size=args.chunk,
            beta=args.beta,
            nll_grad=False,  # GKD's loss: the divergence alone
        )
        return tokens.divergence.mean()
    from trl.experimental.gkd import GKDTrainer

    logits = student(input_ids=ids, attention_mask=attention).logits[:, :-1]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids, attention_mask=attention).logits[:, :-1]
    labels = torch.where(completion[:, 1:], ids[:, 1:], -100)
    return GKDTrainer.generalized_jsd_loss(logits, teacher_logits, labels=labels, beta=args.beta)


def measure(args: argparse.Namespace) -> dict[str, float]:
    import torch

    torch.set_num_threads(args.threads)
    student, teacher, ids, completion = build(args)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timings = []
    for repeat in range(args.repeats + 1):
        student.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = loss_of(args.variant, student, teacher, ids, completion, args)
        loss.backward()
        if repeat:  # the first pass warms up allocators and kernels
            timings.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": args.variant,
        "peak_mib_above_models": (peak_kib - baseline_kib) / 1024,
        "seconds_per_step": sum(timings) / len(timings),
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2, help="student layers")
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--completion", type=int, default=128)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=256, help="rlhf_lab's logps_chunk_size")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args)))
        return
    rows = []
    for variant in ("decoders", "rlhf_lab", "trl"):
        try:
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--variant", variant],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            rows.append(json.loads(out.splitlines()[-1]))
        except subprocess.CalledProcessError as error:
            rows.append({"variant": variant, "error": error.stderr.strip().splitlines()[-1]})
    print(
        f"vocab={args.vocab} hidden={args.hidden} student_layers={args.layers} teacher_layers={args.teacher_layers} "
        f"sequences={args.sequences} seq={args.seq} completion={args.completion} beta={args.beta} "
        f"threads={args.threads} chunk={args.chunk}"
    )
    print(f"{'variant':<10} {'peak MiB above models':>22} {'s/step (fwd+bwd)':>18} {'loss':>10}")
    for row in rows:
        if "error" in row:
            print(f"{row['variant']:<10} failed: {row['error']}")
            continue
        print(
            f"{row['variant']:<10} {row['peak_mib_above_models']:>22.0f} {row['seconds_per_step']:>18.3f} "
            f"{row['loss']:>10.4f}"
        )


if __name__ == "__main__":
    main()
