"""The GPU check, ready for one short window: every strategy and objective family on one ~0.5B model.

On one GPU it trains, each in its own process and for a few steps: bf16 DPO (full and LoRA), DPO under
ZeRO-2, ZeRO-3 and FSDP2 (one device), QLoRA nf4, GRPO and KD, on a model built from config (Qwen2.5-0.5B's
body: hidden 896, 24 layers, 14 heads, 2 KV heads) with Mistral-7B's real tokenizer (``mistral-common``'s
``tokenizer.model.v1``, 32k), then TRL's ``DPOTrainer`` against rlhf_lab on the same DPO work
(``benchmarks/dpo_vs_trl.py --gpu``). Each line: tokens/s (median of ``train/tokens_per_sec``), peak
``torch.cuda.max_memory_allocated`` and MFU against the card's bf16 dense peak (training-pass FLOPs: 6N per
trained token, 2N per frozen forward, N the parameters; generation excluded).

    bash benchmarks/gpu_check.sh              # on the GPU machine (installs the carried wheels first)
    python benchmarks/gpu_check.py --dry-run  # on CPU: tiny sizes, 2 steps, what can run on CPU runs

``--dry-run`` is in the test suite (tests/test_benchmarks.py), so the check cannot rot: every run's config
composes, and the runs CPU can do (DPO full and LoRA, GRPO, KD) train 2 steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Each run's overrides on top of the model's and the trainer's.
RUNS: dict[str, list[str]] = {
    "dpo_full": ["algo=dpo"],
    "dpo_lora": ["algo=dpo", "adapter=lora"],
    "dpo_zero2": ["algo=dpo", "strategy=zero2"],
    "dpo_zero3": ["algo=dpo", "strategy=zero3"],
    "dpo_fsdp2": ["algo=dpo", "strategy=fsdp", "strategy.mixed_precision=bf16"],
    "dpo_qlora_nf4": ["algo=dpo", "quant=nf4", "adapter=lora"],
    "grpo": ["algo=grpo", "data=synthetic_rl", "algo.num_generations=4", "algo.max_new_tokens=32"],
    "kd": ["algo=kd", "teacher=tiny"],
}
#: Runs a CPU can do (the dry run trains these; the others only compose).
CPU_RUNS = ("dpo_full", "dpo_lora", "grpo", "kd")
#: FLOPs per token of a run's training pass, in units of N (6 per trained pass, 2 per frozen forward).
FLOPS_PER_TOKEN = {"dpo_lora": 6, "dpo_qlora_nf4": 6, "kd": 8, "grpo": 8}
#: bf16 dense peak FLOP/s by card name.
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

BODY = {
    "full": {
        "hidden_size": 896,
        "num_layers": 24,
        "num_heads": 14,
        "num_kv_heads": 2,
        "intermediate_size": 4864,
    },
    "dry": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128},
}


def mistral_tokenizer(folder: Path) -> Path:
    """Mistral-7B's tokenizer as a Hugging Face folder (from ``mistral-common``; no hub access)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import os

    os.environ.setdefault("RLHF_LAB_CACHE", str(folder))
    from tests.real_tokenizers import mistral_tokenizer as build

    return build()


def mistral_template() -> Path:
    """Mistral-7B-Instruct-v0.1's chat template (tests/assets/templates)."""
    from tests.real_tokenizers import mistral_instruct_template

    return mistral_instruct_template()


def model_overrides(tokenizer: Path, dry_run: bool) -> list[str]:
    body = BODY["dry" if dry_run else "full"]
    overrides = ["model=tiny", f"model.tokenizer={tokenizer}", f"model.chat_template={mistral_template()}"]
    overrides += [f"model.{k}={v}" for k, v in body.items()]
    if dry_run:
        return [
            *overrides,
            "trainer=cpu",
            "trainer.max_steps=2",
            "data.batch_size=2",
            "trainer.limit_val_batches=1",
        ]
    return [
        *overrides,
        "model.dtype=bfloat16",
        "trainer=gpu",
        "trainer.max_steps=12",
        "trainer.limit_val_batches=2",
    ]


def teacher_overrides(tokenizer: Path, dry_run: bool) -> list[str]:
    """KD's teacher: the same body and tokenizer, its own seed (a teacher twice as wide would not fit the
    window's budget; KD's cost is the student's pass plus one frozen forward either way)."""
    body = BODY["dry" if dry_run else "full"]
    overrides = [
        f"teacher.tokenizer={tokenizer}",
        f"teacher.chat_template={mistral_template()}",
        "teacher.seed=1",
    ]
    overrides += [f"teacher.{k}={v}" for k, v in body.items()]
    return overrides if dry_run else [*overrides, "teacher.dtype=bfloat16"]


def parameters(body: dict[str, int], vocab: int) -> int:
    """A Llama body's parameter count (untied embeddings)."""
    hidden, layers, heads, kv = (
        body["hidden_size"],
        body["num_layers"],
        body["num_heads"],
        body["num_kv_heads"],
    )
    head_dim = hidden // heads
    attention = hidden * hidden * 2 + 2 * hidden * kv * head_dim
    return (
        2 * vocab * hidden
        + layers * (attention + 3 * hidden * body["intermediate_size"] + 2 * hidden)
        + hidden
    )


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for card, peak in PEAK_BF16.items() if card in name), None)


def one_run(name: str, overrides: list[str], workdir: Path, compose_only: bool) -> dict[str, Any]:
    """Train one run in its own process and read its figures (or only compose its config)."""
    run_dir = workdir / name
    command = [sys.executable, "-m", "rlhf_lab", *RUNS[name], *overrides, f"hydra.run.dir={run_dir}",
               f"paths.cache_dir={workdir / 'cache'}", "logger=csv", "checkpoint.save_top_k=0",
               "trainer.enable_progress_bar=false", "export.enabled=false"]  # fmt: skip
    if compose_only:
        command += ["--cfg", "job"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    result: dict[str, Any] = {"run": name, "seconds": time.perf_counter() - start, "exit": done.returncode}
    if done.returncode != 0:
        result["error"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return result
    if compose_only:
        return result
    summary = json.loads((run_dir / "summary.json").read_text())
    result["peak_mib"] = summary.get("gpu/max_memory_allocated_mib")
    result["tokens_per_s"] = median_metric(run_dir, "train/tokens_per_sec") or summary.get(
        "train/tokens_per_sec"
    )
    return result


def median_metric(run_dir: Path, key: str) -> float | None:
    """The median of a metric over the logged steps after the first (warm-up) one."""
    import csv

    values = []
    for path in sorted(run_dir.glob("**/metrics*.csv")):
        with open(path) as handle:
            values += [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]
    return statistics.median(values[1:] or values) if values else None


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 2 steps")
    parser.add_argument("--workdir", default="gpu_check_runs")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated, from " + ", ".join(RUNS))
    parser.add_argument("--skip-trl", action="store_true", help="no TRL DPOTrainer comparison")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = mistral_tokenizer(workdir / "tokenizers")
    overrides = model_overrides(tokenizer, args.dry_run)
    body, peak = BODY["dry" if args.dry_run else "full"], peak_flops()
    count = parameters(body, 32000)
    print(f"model: {body} with Mistral-7B's tokenizer: {count / 1e6:.0f}M parameters; bf16 peak {peak}")
    results = []
    for name in [run for run in args.runs.split(",") if run]:
        extra = teacher_overrides(tokenizer, args.dry_run) if name == "kd" else []
        result = one_run(
            name, [*overrides, *extra], workdir, compose_only=args.dry_run and name not in CPU_RUNS
        )
        if peak and result.get("tokens_per_s"):
            result["mfu"] = FLOPS_PER_TOKEN.get(name, 8) * count * result["tokens_per_s"] / peak
        results.append(result)
        print(format_row(result), flush=True)
    if not args.skip_trl:
        results.append(trl_comparison(args, body, workdir))
    (workdir / "gpu_check.json").write_text(json.dumps(results, indent=1))
    return results


def format_row(result: dict[str, Any]) -> str:
    if result.get("error"):
        return f"{result['run']:16} FAILED ({result['exit']}): {result['error']}"
    parts = [f"{result['run']:16} {result['seconds']:6.0f} s"]
    if result.get("tokens_per_s"):
        parts.append(f"{result['tokens_per_s']:10.0f} tokens/s")
    if result.get("peak_mib"):
        parts.append(f"peak {result['peak_mib']:8.0f} MiB")
    if result.get("mfu"):
        parts.append(f"MFU {100 * result['mfu']:5.1f}%")
    return "  ".join(parts) if len(parts) > 1 or result["exit"] else f"{parts[0]}  composed"


def trl_comparison(args: argparse.Namespace, body: dict[str, int], workdir: Path) -> dict[str, Any]:
    """rlhf_lab against TRL's DPOTrainer on the same DPO work (`dpo_vs_trl.py`, bf16 on CUDA)."""
    size = ["--hidden", str(body["hidden_size"]), "--layers", str(body["num_layers"])]
    steps = ["--steps", "1", "--repeats", "1", "--examples", "8"] if args.dry_run else ["--steps", "8"]
    command = [sys.executable, str(Path(__file__).with_name("dpo_vs_trl.py")), *size, *steps,
               "--systems", "rlhf_lab,trl", "--workdir", str(workdir / "dpo_vs_trl")]  # fmt: skip
    if not args.dry_run:
        command.append("--gpu")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    print(done.stdout.strip() if done.returncode == 0 else f"dpo_vs_trl FAILED: {done.stderr.strip()[-400:]}")
    return {"run": "dpo_vs_trl", "exit": done.returncode, "output": done.stdout[-2000:]}


if __name__ == "__main__":
    main()
