"""Online RL learning parity: rlhf_lab's GRPO and RLOO against TRL's GRPOTrainer and RLOOTrainer.

Both systems train from the same initial model (one directory, loaded by each) on the same prompts (JSONL
files written once), with the same reward function, the same hyperparameters (prompts per step, completions
per prompt, completion length, temperature, clip range, KL weight and its place, loss aggregation,
AdamW and its learning-rate schedule, gradient clipping) and the same number of optimiser steps. One
evaluator, this script's own (greedy decoding with the model's chat template, then the task's reward),
scores every export on held-out prompts neither system trained on.

Tasks:
- ``bundled``: the bundled RL task (`rlhf_lab.data.synthetic`: "Is a wrench an animal or a tool?"),
  rewarded by exact match with the right answer (`rlhf_lab.rewards.exact_match`).
- ``letters``: "Use only these letters: e s y z." with four letters drawn per prompt, rewarded by the share
  of the completion's letters that the prompt allows (`rlhf_lab.prompt_rewards.allowed_letters`): the reward
  needs the prompt.

Starts: ``sft``, supervised on the task with half the answers wrong (bundled: the category at random;
letters: each letter allowed with probability one half), so the held-out reward starts near 0.5 and rises
only by reading the prompt; ``random``, the untrained tiny model (its tokenizer trained on the task's text).

    python benchmarks/rl_vs_trl.py [--tasks bundled letters] [--starts sft random] [--algos grpo rloo]
        [--seeds 42 43 44] [--steps 240] [--csv docs/rl_vs_trl.csv]

Each run is its own process; the table prints held-out reward before -> after per system, the mean over
seeds with a 95% t interval, and seconds per run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Prompts per optimiser step, completions per prompt: one rollout per step in both systems.
PROMPTS_PER_STEP = 4
NUM_GENERATIONS = 8
LEARNING_RATE = 5e-4
#: Per algorithm, rlhf_lab's YAML settings as both systems spell them: (rlhf_lab overrides, TRL config).
ALGOS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "grpo": (
        ["algo=grpo", "algo.beta=0.0", "algo.loss_type=grpo", "algo.scale_rewards=group"],
        {"beta": 0.0, "loss_type": "grpo", "scale_rewards": "group", "epsilon": 0.2},
    ),
    "rloo": (
        ["algo=rloo", "algo.beta=0.05", "algo.kl_in_reward=true", "algo.normalize_advantages=false"],
        {"beta": 0.05, "normalize_advantages": False, "epsilon": 0.2},
    ),
}
TASKS = {
    "bundled": {"reward": "rlhf_lab.rewards.exact_match", "max_new_tokens": 32},
    "letters": {"reward": "rlhf_lab.prompt_rewards.allowed_letters", "max_new_tokens": 16},
}


def warmup_steps(steps: int) -> int:
    """A tenth of the run, at least one step, in both systems (the same linear warm-up, then cosine)."""
    return max(1, steps // 10)


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


# ----------------------------------------------------------------------------------------------- data
def bundled_rows() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The bundled task's splits: ``prompts`` (prompt, answer) and ``sft`` (half the answers wrong)."""
    from rlhf_lab.data.synthetic import SyntheticPreferences

    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for layout, rate in (("prompts", 1.0), ("sft", 0.5)):
        source = SyntheticPreferences(num_train=2000, num_eval=256, seed=1234, rows=layout, correct_rate=rate)
        out[layout] = {
            split: [r for block in blocks for r in block.rows] for split, blocks in source.load().items()
        }
    return out


def letters_rows(seed: int = 1234) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The letters task: distinct letter sets in train and held-out; SFT words allow each letter half the time."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase
    sets = sorted({" ".join(sorted(rng.sample(alphabet, 4))) for _ in range(4000)})
    rng.shuffle(sets)
    splits = {"val": sets[:256], "train": sets[256:2256]}
    asks = ["Write a word.", "Say something short.", "Name a thing.", "Give me a word."]
    prompts: dict[str, list[dict[str, Any]]] = {}
    sft: dict[str, list[dict[str, Any]]] = {}
    for split, letter_sets in splits.items():
        prompts[split], sft[split] = [], []
        for letters in letter_sets:
            question = f"{rng.choice(asks)} Use only these letters: {letters}."
            allowed = letters.split()
            word = "".join(
                rng.choice(allowed) if rng.random() < 0.5 else rng.choice(alphabet)
                for _ in range(rng.randint(3, 7))
            )
            message = [{"role": "user", "content": question}]
            prompts[split].append({"prompt": message})
            sft[split].append({"prompt": message, "completion": [{"role": "assistant", "content": word}]})
    return {"prompts": prompts, "sft": sft}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def prepare(task: str, workdir: Path, env: dict[str, str]) -> dict[str, Path]:
    """The task's prompt files and both starts' model directories."""
    rows = bundled_rows() if task == "bundled" else letters_rows()
    paths = {}
    for layout in ("prompts", "sft"):
        for split in ("train", "val"):
            paths[f"{layout}_{split}"] = workdir / task / f"{layout}_{split}.jsonl"
            write_jsonl(paths[f"{layout}_{split}"], rows[layout][split])
    data = [
        "data=jsonl",
        f"data.source.train_path={paths['sft_train']}",
        f"data.source.eval_path={paths['sft_val']}",
        "data.max_length=128",
        "data.max_prompt_length=96",
    ]
    for start, steps in (
        ("random", ["trainer.max_steps=0"]),
        ("sft", ["trainer.max_epochs=4", "optim.lr=1e-3"]),
    ):
        run_dir = workdir / task / f"start_{start}"
        if not (run_dir / "export" / "config.json").exists():
            lab(
                ["algo=sft", *data, *steps, "checkpoint.save_top_k=0", "export.require_learning=false"],
                run_dir,
                env,
            )
        paths[start] = run_dir / "export"
    return paths


# ------------------------------------------------------------------------------------------- training
def lab(overrides: list[str], run_dir: Path, env: dict[str, str]) -> float:
    """``python -m rlhf_lab <overrides>`` into ``run_dir``; returns its wall time."""
    command = [sys.executable, "-m", "rlhf_lab", *overrides, "trainer.enable_progress_bar=false"]
    started = time.perf_counter()
    result = subprocess.run(
        [*command, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def train_lab(
    algo: str,
    task: str,
    start: Path,
    files: dict[str, Path],
    seed: int,
    steps: int,
    out: Path,
    env: dict[str, str],
) -> float:
    overrides = [
        *ALGOS[algo][0],
        "model=hub",
        f"model.name_or_path={start}",
        "model.dtype=float32",
        "data=jsonl",
        f"data.source.train_path={files['prompts_train']}",
        f"data.source.eval_path={files['prompts_val']}",
        f"data.batch_size={PROMPTS_PER_STEP}",
        "data.max_length=128",
        "data.max_prompt_length=96",
        f"algo.num_generations={NUM_GENERATIONS}",
        f"algo.max_new_tokens={TASKS[task]['max_new_tokens']}",
        f"algo.reward_functions=[{TASKS[task]['reward']}]",
        "algo.num_iterations=1",
        f"optim.lr={LEARNING_RATE}",
        "optim.scheduler=cosine",
        f"optim.warmup_steps={warmup_steps(steps)}",
        f"seed={seed}",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=1.0",
        "trainer.val_on_start=false",
        "checkpoint.save_top_k=0",
        "export.require_learning=false",
    ]
    seconds = lab(overrides, out, env)
    return seconds


def train_trl(algo: str, task: str, start: str, train_file: str, seed: int, steps: int, out: str) -> None:
    """TRL's trainer on the same work (run in its own process: ``--trl-run``)."""
    import importlib

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    module, name = TASKS[task]["reward"].rsplit(".", 1)
    reward = getattr(importlib.import_module(module), name)
    dataset = load_dataset("json", data_files=train_file, split="train")
    tokenizer = AutoTokenizer.from_pretrained(start)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(start, dtype="float32")
    common = {
        "output_dir": out,
        "use_cpu": True,
        "bf16": False,
        "seed": seed,
        "max_steps": steps,
        "learning_rate": LEARNING_RATE,
        "lr_scheduler_type": "cosine",
        "warmup_steps": warmup_steps(steps),
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "per_device_train_batch_size": PROMPTS_PER_STEP * NUM_GENERATIONS,
        "num_generations": NUM_GENERATIONS,
        "max_completion_length": TASKS[task]["max_new_tokens"],
        "temperature": 1.0,
        "num_iterations": 1,
        "logging_steps": 20,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        **ALGOS[algo][1],
    }
    if algo == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer: Any = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=GRPOConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        from trl import RLOOConfig, RLOOTrainer

        trainer = RLOOTrainer(
            model=model,
            reward_funcs=reward,
            args=RLOOConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    trainer.train()
    trainer.save_model(str(Path(out) / "export"))
    tokenizer.save_pretrained(str(Path(out) / "export"))


# ------------------------------------------------------------------------------------------ evaluator
def evaluate(model_dir: Path, task: str, val_file: Path, max_new_tokens: int) -> float:
    """Mean reward of greedy completions of the held-out prompts (the chat template's generation prompt)."""
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    module, name = TASKS[task]["reward"].rsplit(".", 1)
    reward = getattr(importlib.import_module(module), name)
    rows = [json.loads(line) for line in val_file.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    scores: list[float] = []
    for first in range(0, len(rows), 64):
        batch = rows[first : first + 64]
        texts = [
            tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
            for r in batch
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        ids = [
            [t for t in row.tolist() if t not in (tokenizer.pad_token_id, tokenizer.eos_token_id)]
            for row in out[:, encoded["input_ids"].shape[1] :]
        ]
        completions = [
            [{"role": "assistant", "content": tokenizer.decode(i, skip_special_tokens=True)}] for i in ids
        ]
        columns = {k: [r.get(k) for r in batch] for k in batch[0] if k != "prompt"}
        values = reward([r["prompt"] for r in batch], completions, ids, **columns)
        scores.extend(0.0 if v is None else float(v) for v in values)
    return sum(scores) / len(scores)


def interval(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    half = T_975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):.2f} ± {half:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--starts", nargs="+", default=["sft", "random"], choices=["sft", "random"])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--systems", nargs="+", default=["rlhf_lab", "trl"], choices=["rlhf_lab", "trl"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--csv", type=Path, default=None, help="append every run's row here")
    parser.add_argument(
        "--trl-run", nargs=7, metavar=("ALGO", "TASK", "START", "TRAIN", "SEED", "STEPS", "OUT")
    )
    args = parser.parse_args()
    if args.trl_run:
        algo, task, start, train, seed, steps, out = args.trl_run
        train_trl(algo, task, start, train, int(seed), int(steps), out)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rl_vs_trl_"))
    env = {
        **os.environ,
        "RLHF_LAB_CACHE": str(workdir / "cache"),
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO),
    }
    results: list[dict[str, Any]] = []
    for task in args.tasks:
        files = prepare(task, workdir, env)
        max_new = TASKS[task]["max_new_tokens"]
        for start in args.starts:
            before = evaluate(files[start], task, files["prompts_val"], max_new)
            for algo in args.algos:
                for system in args.systems:
                    for seed in args.seeds:
                        out = workdir / task / start / algo / system / str(seed)
                        started = time.perf_counter()
                        if system == "rlhf_lab":
                            train_lab(algo, task, files[start], files, seed, args.steps, out, env)
                        else:
                            command = [
                                sys.executable,
                                __file__,
                                "--trl-run",
                                algo,
                                task,
                                str(files[start]),
                                str(files["prompts_train"]),
                                str(seed),
                                str(args.steps),
                                str(out),
                            ]
                            result = subprocess.run(
                                command, env=env, capture_output=True, text=True, check=False
                            )
                            if result.returncode != 0:
                                raise RuntimeError(f"TRL run failed:\n{result.stderr[-3000:]}")
                        seconds = time.perf_counter() - started
                        after = evaluate(out / "export", task, files["prompts_val"], max_new)
                        row = {
                            "task": task,
                            "start": start,
                            "algo": algo,
                            "system": system,
                            "seed": seed,
                            "steps": args.steps,
                            "before": round(before, 4),
                            "after": round(after, 4),
                            "seconds": round(seconds, 1),
                        }
                        results.append(row)
                        print(json.dumps(row), flush=True)
                        if args.csv:
                            new = not args.csv.exists()
                            with args.csv.open("a", newline="") as handle:
                                writer = csv.DictWriter(handle, fieldnames=list(row))
                                if new:
                                    writer.writeheader()
                                writer.writerow(row)
    print(
        f"\n{'task':8} {'start':7} {'algo':5} {'system':9} {'before':>6}  {'after (mean ± 95% CI)':>22}  per seed   s/run"
    )
    keys = sorted({(r["task"], r["start"], r["algo"], r["system"]) for r in results}, key=str)
    for key in keys:
        runs = [r for r in results if (r["task"], r["start"], r["algo"], r["system"]) == key]
        afters = [r["after"] for r in runs]
        seeds = ", ".join(f"{a:.2f}" for a in afters)
        print(
            f"{key[0]:8} {key[1]:7} {key[2]:5} {key[3]:9} {runs[0]['before']:6.2f}  {interval(afters):>22}  {seeds}  "
            f"{statistics.mean(r['seconds'] for r in runs):.0f}"
        )


if __name__ == "__main__":
    main()
