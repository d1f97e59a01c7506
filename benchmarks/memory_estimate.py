"""The preflight's memory estimate against the measured peak of a few real training steps on the CPU.

Each configuration runs twice, each time in its own process: once to build the model from config into the
cache (not measured), then a measured run of a few DPO steps through `rlhf_lab.train.run`. Measured: the peak
RSS (``ru_maxrss``) over the RSS after every import (the post-import baseline). Estimated:
`rlhf_lab.preflight.estimate` of the same composed config. Every batch is padded to ``data.max_length``, the
length the estimate assumes (the worst case).

    python benchmarks/memory_estimate.py [--models tiny mid] [--steps 3] [--json] [KEY=VALUE ...]

Overrides (``data.batch_size=1``...) apply to every model after its own settings.

Models (Llama architecture, built from config, byte-level BPE vocabulary of 512):
    tiny   model=tiny as shipped: 2 layers, hidden 64 (~0.1M parameters)
    mid    12 layers, hidden 1024, intermediate 2816, 16 heads / 4 KV heads (~136M parameters)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = {
    "tiny": ["data.batch_size=8", "data.max_length=128"],
    "mid": [
        "model.hidden_size=1024",
        "model.num_layers=12",
        "model.num_heads=16",
        "model.num_kv_heads=4",
        "model.intermediate_size=2816",
        "data.batch_size=4",
        "data.max_length=128",
    ],
}

COMMON = [
    "algo=dpo",
    "data.source.num_train=64",
    "data.source.num_eval=8",
    "data.pad_to_multiple_of=128",
    "trainer.val_check_interval=1.0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "checkpoint.save_top_k=0",
    "checkpoint.save_last=false",
    "export.enabled=false",
    "logger=csv",
]


def compose(overrides: list[str], run_dir: str, cache_dir: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from rlhf_lab.config import CONF_DIR, register_schemas

    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.run_dir = run_dir
        cfg.paths.cache_dir = cache_dir
    return cfg


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Start the process's peak RSS (``VmHWM``) over from its current RSS (Linux 4.0+; else a no-op)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_bytes() -> int:
    """The peak RSS since `reset_peak_rss` (``VmHWM``), else over the process's life (``ru_maxrss``)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> None:
    """One process: build the model (``--prepare``) or run the steps and print estimate and measurement."""
    import lightning  # noqa: F401  (imported before the baseline, like every run's own imports)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from rlhf_lab.cli import quiet_libraries
    from rlhf_lab.preflight import estimate, locate_models, plan_of
    from rlhf_lab.train import build, run

    quiet_libraries()
    overrides = [*COMMON, *MODELS[args.model], f"trainer.max_steps={args.steps}", *args.overrides]
    cfg = compose(overrides, args.run_dir, args.cache_dir)
    if args.prepare or args.one_process:
        build(cfg)  # the model into the cache (a one-process run measures after this, in the same process)
        if args.prepare:
            return
        gc.collect()
    plan = plan_of(cfg, locate_models(cfg))
    assert plan is not None
    predicted = estimate(plan)
    reset_peak_rss()  # a transient peak before the run (a cold schema cache's imports) is not the run's
    baseline = rss_bytes()
    run(cfg)
    peak = peak_rss_bytes()
    result = {
        "model": args.model,
        "params": plan.policy.params,
        "estimate": predicted.total,
        "measured": peak - baseline,
        "baseline": baseline,
        "parts": predicted.parts,
    }
    print("RESULT " + json.dumps(result), flush=True)


def measure(
    model: str, steps: int, cache_dir: str, overrides: tuple[str, ...] = (), one_process: bool = False
) -> dict:
    """Estimate and measured peak of ``model``: built in one process, measured in another (``one_process``:
    both in one, after the build: quicker, for a model whose build leaves little behind); ``steps`` >= 2, so
    the optimiser state exists while a step's activations do."""
    results = {}
    for prepare in (False,) if one_process else (True, False):
        with tempfile.TemporaryDirectory() as run_dir:
            command = [sys.executable, __file__, "--child", "--model", model, "--steps", str(steps)]
            command += ["--run-dir", run_dir, "--cache-dir", cache_dir] + (["--prepare"] if prepare else [])
            command += ["--one-process"] if one_process else []
            command += list(overrides)
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{model}: the child failed:\n{done.stderr[-3000:]}")
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if lines:
                results = json.loads(lines[-1][len("RESULT ") :])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object per model")
    parser.add_argument("--cache-dir", default=None, help="where built models go (default: a temporary one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--one-process", action="store_true", help="build and measure in one process (quicker)"
    )
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument(
        "overrides", nargs="*", help="config overrides for every model, e.g. data.batch_size=1"
    )
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as default_cache:
        cache_dir = args.cache_dir or default_cache
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        if not args.json:
            print(f"{'model':6} {'params':>10} {'estimate MiB':>13} {'measured MiB':>13} {'error':>7}")
        for model in args.models:
            r = measure(model, args.steps, cache_dir, tuple(args.overrides), args.one_process)
            if args.json:
                print(json.dumps(r))
                continue
            error = r["estimate"] / r["measured"] - 1
            mib = 1024**2
            print(
                f"{model:6} {r['params']:>10,} {r['estimate'] / mib:>13.1f} {r['measured'] / mib:>13.1f} {error:>+7.1%}"
            )


if __name__ == "__main__":
    main()
