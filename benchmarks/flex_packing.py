"""Packing DPO pairs across a batch with a block-sparse mask (flex_attention): does it pay on CPU?

On the `benchmarks/dpo_vs_trl.py` configuration (its data and Llama from config: vocab 32000, hidden 256, 4
layers, 4 pairs per batch, max_length 512, prompts of 24-300 words, completions of 12-150 words) one real
batch from rlhf_lab's datamodule is scored three ways:

- ``padded_shared``: what rlhf_lab does now (``data.prefix_sharing=auto``): one right-padded row per pair,
  ``[prompt | chosen | rejected]``, a dense 4-D mask, sdpa (`rlhf_lab.policy.sequence_logps`).
- ``dense_packed``: all pairs of the batch in one row with no padding, a dense ``[1, 1, L, L]`` boolean mask
  that is block-diagonal over pairs with the prefix-sharing structure inside each pair, sdpa.
- ``flex_packed``: the same row, the same mask as a `BlockMask` (`create_block_mask` over per-token pair
  ids and segments), through transformers' ``flex_attention`` attention (compiled by inductor on CPU).

All three gather each unshared row's hidden states and score its completion with rlhf_lab's own chunked
head (`rlhf_lab.logprobs.completion_logps`). The check first requires each variant's per-sequence
log-probs (and, where a backward runs, the gradients of their sum) to equal those of plain unshared padded
rows (relative 1e-5). Timing: each (variant, task, threads) in its own process, variants alternating; the
first call (inductor's compile for flex) is reported apart and left out of the median s/step; peak RSS is
the process's. Tasks: ``train`` is forward + backward of the summed completion log-probs (the policy's
step), ``forward`` is a no-grad forward (the reference model's part of a DPO step).

Conclusion (torch 2.13 CPU, transformers 5.25, 2 shared cores; batch 0: padded rows [4, 530], packed
[1, 1624]): not added to the product. All variants agree with unshared rows (log-probs to 4e-8, gradients
to 1.5e-6 relative), but flex_attention cannot train on CPU: its backward raises ``NotImplementedError:
FlexAttention does not support backward on CPU`` (`torch.nn.attention.flex_attention._validate_device`),
so the policy's step, the bulk of a DPO step, cannot use it. For the no-grad forward (the reference's part)
it was faster at 1 thread (0.63x-0.96x of padded sharing's time, three invocations) but slower at 2 threads
(1.47x, one run) and even at 1 thread on batch 1 (1.02x; rows [4, 400], packed 1419), after a cold inductor compile of 15-22 s per process (a new packed length may recompile).
Dense packing is slower than padded sharing in every case (1.10x-1.39x: its attention is quadratic in the
whole batch's length). Rerun when torch supports flex_attention's backward on CPU, or on a GPU.

    python benchmarks/flex_packing.py [--steps 5] [--repeats 2] [--threads 1,2] [--tasks train,forward]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("padded_shared", "dense_packed", "flex_packed")
TASKS = ("train", "forward")


# -------------------------------------------------------------------------------------------- setup
def setup(args: argparse.Namespace, workdir: Path) -> None:
    """The data, the model (`dpo_vs_trl.prepare`) and one real prefix-shared batch from rlhf_lab's datamodule."""
    import torch
    from dpo_vs_trl import prepare, rlhf_lab_config

    from rlhf_lab.train import build

    prepare(args, workdir)
    _, datamodule, _ = build(rlhf_lab_config(args, workdir))
    start = args.batch * args.pairs
    examples = datamodule.datasets["train"].examples[start : start + args.pairs]
    batch = datamodule.collator("train")(list(enumerate(examples)))
    if batch.sequences.shared is None:
        raise AssertionError("the datamodule did not pack the pairs (data.prefix_sharing)")
    torch.save(batch, workdir / "batch.pt")


def load(workdir: Path, attention: str) -> tuple[Any, Any]:
    """The model (fp32, train mode, with ``attention``) and the saved batch."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        workdir / "model", dtype=torch.float32, attn_implementation=attention
    )
    model.train()
    return model, torch.load(workdir / "batch.pt", weights_only=False)


# ------------------------------------------------------------------------------------------ packing
class Packed:
    """A batch's pairs in one row, ``[prompt | chosen | rejected]`` after one another, with no padding.

    Attributes:
        input_ids: ``[1, L]``.
        position_ids: ``[1, L]``, restarting at each pair (and at each rejected block, as in `SharedPrompts`).
        pairs: ``[L]`` the pair of each token.
        segments: ``[L]`` 0 prompt, 1 chosen, 2 rejected.
        gather: ``[2B, T]`` the packed position of each position of the unshared rows.
    """

    def __init__(self, sequences: Any) -> None:
        import torch

        shared = sequences.shared
        lengths = (shared.segments >= 0).sum(1)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        keep = shared.segments >= 0
        self.input_ids = shared.input_ids[keep][None]
        self.position_ids = shared.position_ids[keep][None]
        self.segments = shared.segments[keep]
        self.pairs = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        self.gather = offsets[shared.source_rows] + shared.source_positions

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def allowed(self, q: Any, kv: Any) -> Any:
        """Whether query ``q`` attends to key ``kv``: same pair, causal, a rejected token never sees chosen."""
        return (
            (self.pairs[q] == self.pairs[kv])
            & (q >= kv)
            & ~((self.segments[q] == 2) & (self.segments[kv] == 1))
        )

    def dense_mask(self) -> Any:
        """``[1, 1, L, L]`` boolean mask (True: attend)."""
        import torch

        index = torch.arange(self.length)
        return self.allowed(index[:, None], index[None, :])[None, None]

    def block_mask(self) -> Any:
        """The same mask as a flex_attention `BlockMask`."""
        from torch.nn.attention.flex_attention import create_block_mask

        return create_block_mask(
            lambda b, h, q, kv: self.allowed(q, kv), 1, None, self.length, self.length, device="cpu"
        )


# ------------------------------------------------------------------------------------------ scoring
def logps(variant: str, model: Any, batch: Any, packed: Packed | None) -> Any:
    """``[2B]`` summed completion log-probs of the batch's rows, read through ``variant``'s layout."""
    import dataclasses

    from rlhf_lab.logprobs import completion_logps, decoder_and_head, last_hidden_state
    from rlhf_lab.policy import sequence_logps

    sequences = batch.sequences
    if variant == "unshared":
        return sequence_logps(model, dataclasses.replace(sequences, shared=None)).logps
    if variant == "padded_shared":
        return sequence_logps(model, sequences).logps
    assert packed is not None
    decoder, head = decoder_and_head(model)
    mask = packed.dense_mask() if variant == "dense_packed" else packed.block_mask()
    outputs = decoder(
        input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids, use_cache=False
    )
    hidden = last_hidden_state(outputs)[0, packed.gather]
    return completion_logps(hidden, sequences.input_ids, sequences.completion_mask, head).logps


def attention_of(variant: str) -> str:
    return "flex_attention" if variant == "flex_packed" else "sdpa"


def check(workdir: Path) -> dict[str, Any]:
    """Each variant's per-sequence log-probs and gradients against unshared padded rows (relative errors)."""
    import torch

    models = {name: load(workdir, name)[0] for name in ("sdpa", "flex_attention")}
    batch = load(workdir, "sdpa")[1]
    torch.manual_seed(1)
    with torch.no_grad():  # away from the initial weights, so every position matters
        for parameter in models["sdpa"].parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    models["flex_attention"].load_state_dict(models["sdpa"].state_dict())
    packed = Packed(batch.sequences)
    results: dict[str, Any] = {
        "packed_length": packed.length,
        "padded_shape": list(batch.sequences.shared.input_ids.shape),
    }

    def run(variant: str, backward: bool) -> tuple[Any, list[Any]]:
        model = models[attention_of(variant)]
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(backward):
            values = logps(variant, model, batch, packed)
        if not backward:
            return values.detach(), []
        values.sum().backward()
        return values.detach(), [p.grad.clone() for p in model.parameters()]

    reference, reference_grads = run("unshared", True)
    for variant in VARIANTS:
        entry: dict[str, Any] = {}
        try:
            values, grads = run(variant, True)
            entry["grad_error"] = max(
                float((g - r).abs().max() / r.abs().max())
                for g, r in zip(grads, reference_grads, strict=True)
            )
        except NotImplementedError as error:  # flex_attention's backward on CPU
            entry["backward_error"] = f"{type(error).__name__}: {error}"
            values, _ = run(variant, False)
        entry["logps_error"] = float((values - reference).abs().max() / reference.abs().max())
        results[variant] = entry
    return results


# -------------------------------------------------------------------------------------------- timing
def measure(args: argparse.Namespace, workdir: Path, variant: str, task: str) -> dict[str, Any]:
    """``args.steps`` timed calls after a first one (compile for flex) of ``variant`` on ``task``."""
    import torch

    model, batch = load(workdir, attention_of(variant))
    if task == "forward":
        model.requires_grad_(False).eval()

    def step() -> None:
        packed = None if variant == "padded_shared" else Packed(batch.sequences)
        if task == "forward":
            with torch.no_grad():
                logps(variant, model, batch, packed)
            return
        model.zero_grad(set_to_none=True)
        logps(variant, model, batch, packed).sum().backward()

    start = time.perf_counter()
    try:
        step()
    except NotImplementedError as error:
        return {"error": f"{type(error).__name__}: {error}"}
    first = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "first_s": first,
        "median_s": statistics.median(times),
        "times": times,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --------------------------------------------------------------------------------------------- main
def run_child(args: argparse.Namespace, workdir: Path, *child: str, threads: int = 1) -> dict[str, Any]:
    command = [sys.executable, __file__, "--workdir", str(workdir), f"--steps={args.steps}"]
    command += [f"--threads={threads}", "--child", *child]
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:  # a cold compile in every process
        environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        out = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{child} failed:\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed calls per measurement (after the first)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repetitions of every variant")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, from " + ", ".join(TASKS))
    parser.add_argument("--batch", type=int, default=0, help="which batch of the data (in order)")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--min-prompt-words", type=int, default=24)
    parser.add_argument("--max-prompt-words", type=int, default=300)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(int(args.threads))
        workdir = Path(args.workdir)
        result = check(workdir) if args.child[0] == "check" else measure(args, workdir, *args.child)
        print("RESULT " + json.dumps(result))
        return result
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="flex_packing-"))
    workdir.mkdir(parents=True, exist_ok=True)
    setup(args, workdir)
    checked = run_child(args, workdir, "check")
    print(
        f"batch {args.batch}: {args.pairs} pairs, padded prefix-shared rows {checked['padded_shape']}, "
        f"packed row [1, {checked['packed_length']}]"
    )
    print("check against unshared padded rows (relative max error):")
    for variant in VARIANTS:
        entry = checked[variant]
        grads = f"{entry['grad_error']:.1e}" if "grad_error" in entry else entry["backward_error"]
        print(f"  {variant:14} log-probs {entry['logps_error']:.1e}  gradients {grads}")
        if entry["logps_error"] > 1e-5 or entry.get("grad_error", 0.0) > 1e-5:
            raise AssertionError(f"{variant} does not give the unshared rows' results")
    keys = [(task, int(threads)) for task in args.tasks.split(",") for threads in args.threads.split(",")]
    results: dict[str, list[dict[str, Any]]] = {}
    for task, threads in keys:
        for _ in range(args.repeats):
            for variant in VARIANTS:  # alternating: A B C A B C ...
                name = f"{task}/{threads}/{variant}"
                results.setdefault(name, []).append(run_child(args, workdir, variant, task, threads=threads))
    print(
        f"\n{'task':8}{'threads':>8}  {'variant':14}{'first s':>9}{'s/step':>9}{'vs padded (range)':>22}{'peak MiB':>10}"
    )
    for task, threads in keys:
        base = results[f"{task}/{threads}/padded_shared"]
        for variant in VARIANTS:
            runs = results[f"{task}/{threads}/{variant}"]
            if "error" in runs[0]:
                print(f"{task:8}{threads:>8}  {variant:14}  cannot run: {runs[0]['error'][:60]}")
                continue
            median = statistics.median(r["median_s"] for r in runs)
            ratios = [r["median_s"] / b["median_s"] for r, b in zip(runs, base, strict=True)]
            ratio = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            print(
                f"{task:8}{threads:>8}  {variant:14}{statistics.median(r['first_s'] for r in runs):9.2f}"
                f"{median:9.3f}{ratio:>22}{statistics.median(r['peak_mib'] for r in runs):10.0f}"
            )
    (workdir / "results.json").write_text(json.dumps({"check": checked, "results": results}, indent=1))
    return {"check": checked, "results": results}


if __name__ == "__main__":
    main()
