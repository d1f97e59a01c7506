"""Online RL and distillation speed and memory: rlhf_lab against TRL's trainers on the same work.

- ``grpo``: rlhf_lab's ``algo=grpo`` against TRL's ``GRPOTrainer``: 4 prompts x 4 generations x 64 sampled
  tokens per step, KL to a reference copy (``beta`` 0.04), one optimiser step per rollout, the reward
  `rlhf_lab.prompt_rewards.allowed_letters` on both sides.
- ``gkd``: rlhf_lab's ``algo=gkd`` with ``lmbda=1`` (every batch completed by the student) against TRL's
  ``DistillationTrainer`` (always on-policy) and ``GKDTrainer`` (``lmbda=1``): 16 prompts x 64 sampled tokens
  per step, generalised JSD (``beta`` 0.5, temperature 1), from a teacher twice as wide as the student.

The student is a Llama built from config (32k vocabulary: Mistral-7B's real tokenizer, hidden 256, 4 layers;
the teacher hidden 512), fp32 on CPU, 1 thread per process by default. Equal work is checked before anything
is timed: every system reads the same prompt ids at every step (the data set is exactly one step's prompts,
so each step sees all of them) and generates the same number of tokens (EOS is banned until the last
position on every side with ``min_new_tokens``). Each measurement is its own process, and the systems
alternate (A B C A B C ...), so a noisy machine's drift hits all of them.

Reported per system: s/step (median after a warm-up step), generated tokens/s (generated tokens over step
time), the split of a step into generation, the reference's or teacher's forward pass and the rest (the
training pass: forward, loss, backward and optimiser, plus rewards and bookkeeping), peak RSS, and the ratio
to the first TRL trainer with its spread over repetitions.

    python benchmarks/online_vs_trl.py [--work grpo gkd] [--steps 4] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The systems measured per work, the first TRL one the baseline of the ratios.
SYSTEMS = {
    "grpo": ("rlhf_lab", "trl_grpo"),
    "gkd": ("rlhf_lab", "trl_distillation", "trl_gkd"),
}
BASELINE = {"grpo": "trl_grpo", "gkd": "trl_distillation"}
#: Prompts per step and completions per prompt.
SHAPE = {"grpo": (4, 4), "gkd": (16, 1)}
LEARNING_RATE = 1e-6
GRPO_BETA = 0.04
JSD_BETA = 0.5


# -------------------------------------------------------------------------------------------- setup
def prompt_texts(count: int, seed: int) -> list[str]:
    """``count`` prompts of 20-30 pseudo-words, each naming four allowed letters (`allowed_letters`)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(500)]
    return [
        f"Use only these letters: {' '.join(sorted(rng.sample(letters, 4)))}. "
        + " ".join(rng.choice(words) for _ in range(rng.randint(20, 30)))
        for _ in range(count)
    ]


def prepare(args: argparse.Namespace, workdir: Path) -> None:
    """The tokenizer folder (Mistral-7B's, with its chat template and a pad token), the student and the teacher
    (weights from a seed), and the data files: one step's prompts per work, in each system's layout."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.real_tokenizers import mistral_instruct_template, mistral_tokenizer

    os.environ.setdefault("RLHF_LAB_CACHE", str(workdir / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(mistral_tokenizer())
    tokenizer.pad_token = tokenizer.unk_token  # Mistral-7B has none; TRL's trainers need one
    tokenizer.chat_template = mistral_instruct_template().read_text()
    for name, hidden in (("student", args.hidden), ("teacher", 2 * args.hidden)):
        torch.manual_seed(args.seed + (name == "teacher"))
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 11 // 4,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        LlamaForCausalLM(config).save_pretrained(workdir / name)
        tokenizer.save_pretrained(workdir / name)
    grpo = prompt_texts(SHAPE["grpo"][0], args.seed)
    _write(workdir / "grpo.jsonl", [{"prompt": text} for text in grpo])
    gkd = prompt_texts(SHAPE["gkd"][0], args.seed + 1)
    user = [[{"role": "user", "content": text}] for text in gkd]
    answer = [[{"role": "assistant", "content": "abc"}] for _ in gkd]  # replaced: every batch is on-policy
    _write(workdir / "gkd.jsonl", [{"prompt": u, "completion": a} for u, a in zip(user, answer, strict=True)])
    _write(workdir / "gkd_messages.jsonl", [{"messages": u + a} for u, a in zip(user, answer, strict=True)])


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# -------------------------------------------------------------------------------------------- phases
class Phases:
    """Seconds per phase within the current step, and each step's record (phases, prompts, tokens)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.prompts: list[list[int]] = []
        self.generated = 0
        self.steps: list[dict[str, Any]] = []
        self.started = 0.0

    def timed(self, phase: str, function: Any, when: Any = None) -> Any:
        """``function`` with its time added to ``phase`` (only the calls ``when(*args)`` accepts, if given)."""

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if when is not None and not when(*args, **kwargs):
                return function(*args, **kwargs)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - start

        return wrapper

    def begin(self) -> None:
        self.current, self.prompts, self.generated = defaultdict(float), [], 0
        self.started = time.perf_counter()

    def end(self) -> None:
        total = time.perf_counter() - self.started
        self.steps.append(
            {
                "total": total,
                **self.current,
                "prompts": sorted(self.prompts),
                "generated": self.generated,
            }
        )

    def record(self, input_ids: Any, attention_mask: Any) -> None:
        """The step's prompts (each row's real tokens, left padding removed)."""
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            self.prompts.append([token for token, keep in zip(ids, mask, strict=True) if keep])


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- rlhf_lab
def rlhf_lab_config(args: argparse.Namespace, workdir: Path, work: str) -> Any:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from rlhf_lab.config import CONF_DIR, register_schemas

    prompts, generations = SHAPE[work]
    tokens = [f"algo.max_new_tokens={args.tokens}", f"algo.min_new_tokens={args.tokens - 1}"]
    if work == "grpo":
        algo = [
            "algo=grpo",
            f"algo.beta={GRPO_BETA}",
            "algo.reference=copy",
            f"algo.num_generations={generations}",
            "algo.reward_functions=[rlhf_lab.prompt_rewards.allowed_letters]",
            "algo.log_samples_every=0",
            *tokens,
        ]
        data = [f"data.source.{split}_path={workdir / 'grpo.jsonl'}" for split in ("train", "eval")]
    else:
        algo = [
            "algo=gkd",
            "algo.lmbda=1.0",
            f"algo.beta={JSD_BETA}",
            "algo.temperature=1.0",
            "algo.generation_temperature=1.0",
            "teacher=hub",
            f"teacher.name_or_path={workdir / 'teacher'}",
            "teacher.dtype=float32",
            *tokens,
        ]
        data = [f"data.source.{split}_path={workdir / 'gkd.jsonl'}" for split in ("train", "eval")]
    overrides = [
        *algo,
        "model=hub",
        f"model.name_or_path={workdir / 'student'}",
        "model.dtype=float32",
        "data=jsonl",
        *data,
        f"data.batch_size={prompts}",
        "data.num_workers=0",
        f"optim.lr={LEARNING_RATE}",
        "optim.scheduler=constant",
        "optim.warmup_ratio=0.0",
        "trainer=cpu",
        "logger=csv",
    ]
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.run_dir = str(workdir / f"rlhf_lab_{work}")
        cfg.paths.cache_dir = str(workdir / "cache")
    return cfg


def run_rlhf_lab(args: argparse.Namespace, workdir: Path, work: str) -> Phases:
    import lightning as L
    from dpo_vs_trl import _fit

    from rlhf_lab.objectives.distill import GKD
    from rlhf_lab.rl.actor import RolloutActor
    from rlhf_lab.train import build

    phases = Phases()

    def generated(generation: Any) -> Any:
        phases.record(generation.prompts.input_ids, generation.prompts.attention_mask)
        phases.generated += int(generation.completion_mask.sum())
        return generation

    if work == "grpo":
        sample = phases.timed("generation", RolloutActor.sample)
        RolloutActor.sample = lambda *a, **k: generated(sample(*a, **k))  # type: ignore[method-assign]
        RolloutActor._reference_token_logps = phases.timed(  # type: ignore[method-assign]
            "reference", RolloutActor._reference_token_logps
        )
    else:
        import rlhf_lab.objectives.distill as distill

        generate_with = phases.timed("generation", GKD.generate_with)
        GKD.generate_with = lambda *a, **k: generated(generate_with(*a, **k))  # type: ignore[method-assign]
        # The teacher's decoder pass is the one run without gradients.
        distill.hidden_states = phases.timed(  # type: ignore[attr-defined]
            "reference", distill.hidden_states, lambda *_, **__: not __import__("torch").is_grad_enabled()
        )
    objective, datamodule, _ = build(rlhf_lab_config(args, workdir, work))

    class Timer(L.Callback):
        def on_train_batch_start(self, *_: Any) -> None:
            phases.begin()

        def on_train_batch_end(self, *_: Any) -> None:
            phases.end()

    _fit(objective, datamodule, [Timer()], max_steps=args.steps + 1)  # dpo_vs_trl's: training only, CPU
    return phases


# ------------------------------------------------------------------------------------------------ TRL
def trl_common(args: argparse.Namespace, workdir: Path, system: str) -> dict[str, Any]:
    return {
        "output_dir": str(workdir / system),
        "use_cpu": True,
        "bf16": False,
        "seed": args.seed,
        "max_steps": args.steps + 1,
        "learning_rate": LEARNING_RATE,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def run_trl(args: argparse.Namespace, workdir: Path, system: str) -> Phases:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    phases = Phases()
    tokenizer = AutoTokenizer.from_pretrained(workdir / "student")
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(workdir / "student", dtype=torch.float32)
    prompts, generations = SHAPE["grpo" if system == "trl_grpo" else "gkd"]
    common = trl_common(args, workdir, system)
    minimum = {"min_new_tokens": args.tokens - 1}

    def counted(generate: Any) -> Any:
        """HF ``generate`` recording the prompts and the generated tokens (up to each row's first EOS)."""

        @functools.wraps(generate)
        def wrapper(*a: Any, **k: Any) -> Any:
            out = generate(*a, **k)
            ids, mask = k["input_ids"], k["attention_mask"]
            phases.record(ids, mask)
            sequences = out if isinstance(out, torch.Tensor) else out.sequences
            new = sequences[:, ids.shape[1] :]
            eos = torch.tensor(model.generation_config.eos_token_id).flatten()
            ended = torch.isin(new, eos).int().cumsum(1) - torch.isin(new, eos).int()
            phases.generated += int((ended == 0).sum())
            return out

        return wrapper

    model.generate = counted(model.generate)  # type: ignore[method-assign]
    if system == "trl_grpo":
        from trl import GRPOConfig, GRPOTrainer

        from rlhf_lab.prompt_rewards import allowed_letters

        dataset = datasets.load_dataset("json", data_files=str(workdir / "grpo.jsonl"), split="train")
        config = GRPOConfig(
            **common,
            per_device_train_batch_size=prompts * generations,
            num_generations=generations,
            max_completion_length=args.tokens,
            generation_kwargs=minimum,
            temperature=1.0,
            top_k=0,
            beta=GRPO_BETA,
            loss_type="grpo",
            scale_rewards="group",
            epsilon=0.2,
            num_iterations=1,
        )
        trainer: Any = GRPOTrainer(
            model=model,
            reward_funcs=allowed_letters,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer._generate = phases.timed("generation", trainer._generate)
        trainer._get_per_token_logps_and_entropies = phases.timed(
            "reference",
            trainer._get_per_token_logps_and_entropies,
            lambda m, *_, **__: m is trainer.ref_model,
        )
    elif system == "trl_distillation":
        from trl import DistillationConfig, DistillationTrainer

        teacher = AutoModelForCausalLM.from_pretrained(workdir / "teacher", dtype=torch.float32)
        dataset = datasets.load_dataset("json", data_files=str(workdir / "gkd.jsonl"), split="train")
        dataset = dataset.remove_columns("completion")
        config = DistillationConfig(
            **common,
            per_device_train_batch_size=prompts,
            max_completion_length=args.tokens,
            generation_kwargs=minimum,
            temperature=1.0,
            top_k=0,
            beta=JSD_BETA,
        )
        trainer = DistillationTrainer(
            model=model, teacher_model=teacher, args=config, train_dataset=dataset, processing_class=tokenizer
        )
        trainer._generate = phases.timed("generation", trainer._generate)
        trainer._get_last_hidden_state = phases.timed(
            "reference", trainer._get_last_hidden_state, lambda *_, **__: not torch.is_grad_enabled()
        )
    else:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        teacher = AutoModelForCausalLM.from_pretrained(workdir / "teacher", dtype=torch.float32)
        dataset = datasets.load_dataset("json", data_files=str(workdir / "gkd_messages.jsonl"), split="train")
        config = GKDConfig(
            **common,
            per_device_train_batch_size=prompts,
            max_new_tokens=args.tokens,
            temperature=1.0,
            lmbda=1.0,
            beta=JSD_BETA,
            max_length=512,
        )
        trainer = GKDTrainer(
            model=model, teacher_model=teacher, args=config, train_dataset=dataset, processing_class=tokenizer
        )
        trainer.generation_config.min_new_tokens = minimum["min_new_tokens"]
        trainer.generate_on_policy_outputs = phases.timed("generation", trainer.generate_on_policy_outputs)
        trainer.teacher_model.forward = phases.timed("reference", trainer.teacher_model.forward)

    class Timer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            phases.begin()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            phases.end()

    trainer.add_callback(Timer())
    trainer.train()
    return phases


# --------------------------------------------------------------------------------------------- report
def summary(phases: Phases) -> dict[str, Any]:
    """Steady-state figures (the first step warms up) and the first step's work, for the equality check."""
    steady = phases.steps[1:]
    totals = [step["total"] for step in steady]
    share = {
        phase: sum(step.get(phase, 0.0) for step in steady) / sum(totals)
        for phase in ("generation", "reference")
    }
    return {
        "step_s": statistics.median(totals),
        "generated_per_s": sum(step["generated"] for step in steady) / sum(totals),
        "generation": share["generation"],
        "reference": share["reference"],
        "training": 1 - share["generation"] - share["reference"],
        "peak_mib": _peak_mib(),
        "work": [(step["prompts"], step["generated"]) for step in phases.steps],
    }


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    work, system = args.child.split(":")
    phases = run_rlhf_lab(args, workdir, work) if system == "rlhf_lab" else run_trl(args, workdir, system)
    print("RESULT " + json.dumps(summary(phases)))


def run_child(args: argparse.Namespace, workdir: Path, work: str, system: str) -> dict[str, Any]:
    argv = [
        f"--steps={args.steps}",
        f"--threads={args.threads}",
        f"--tokens={args.tokens}",
        f"--hidden={args.hidden}",
        f"--layers={args.layers}",
        f"--seed={args.seed}",
        f"--workdir={workdir}",
        f"--child={work}:{system}",
    ]
    env = {**os.environ, "RLHF_LAB_CACHE": str(workdir / "cache"), "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, check=False, env=env, cwd=REPO
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{work}:{system} failed:\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def check_work(work: str, results: dict[str, dict[str, Any]]) -> str:
    """Every system read the same prompt ids and generated the same number of tokens at every step."""
    systems = list(results)
    first = results[systems[0]]["work"]
    for system in systems[1:]:
        theirs = results[system]["work"]
        if len(theirs) != len(first):
            raise AssertionError(f"{work}: {system} ran {len(theirs)} steps, {systems[0]} {len(first)}")
        for step, ((prompts, generated), (their_prompts, their_generated)) in enumerate(
            zip(first, theirs, strict=True)
        ):
            if prompts != their_prompts:
                raise AssertionError(
                    f"{work} step {step}: {system} read other prompt ids than {systems[0]}: "
                    f"{their_prompts[0][:12]}... against {prompts[0][:12]}..."
                )
            if generated != their_generated:
                raise AssertionError(
                    f"{work} step {step}: {system} generated {their_generated} tokens, {systems[0]} {generated}"
                )
    prompts, generated = first[0]
    lengths = sorted(len(row) for row in prompts)
    return (
        f"{work}: equal work checked: {len(prompts)} prompt rows of {lengths[0]}-{lengths[-1]} tokens and "
        f"{generated} generated tokens per step, the same ids in every system at every step"
    )


def _spread(values: list[float]) -> str:
    middle = statistics.median(values)
    return f"{middle:.2f}x ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement (after 1 warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="A B C A B C repetitions")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per completion")
    parser.add_argument("--hidden", type=int, default=256, help="the student's (the teacher's is twice)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--check-only", action="store_true", help="each system once, the equal-work check, no table"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return {}
    if args.check_only:
        args.repeats = 1
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="online_vs_trl-"))
    workdir.mkdir(parents=True, exist_ok=True)
    prepare(args, workdir)
    report: dict[str, Any] = {}
    for work in args.work:
        runs: dict[str, list[dict[str, Any]]] = {system: [] for system in SYSTEMS[work]}
        for _ in range(args.repeats):
            for system in SYSTEMS[work]:  # alternating
                runs[system].append(run_child(args, workdir, work, system))
        checked = check_work(work, {system: results[0] for system, results in runs.items()})
        print(checked)
        report[work] = runs
        if args.check_only:
            continue
        prompts, generations = SHAPE[work]
        print(
            f"{work}: {prompts} prompts x {generations} completions x {args.tokens} tokens per step, "
            f"hidden {args.hidden}, {args.layers} layers, threads={args.threads}, steps={args.steps}, "
            f"repeats={args.repeats}"
        )
        print(
            f"{'system':18}{'s/step':>8}{'gen tok/s':>11}{'gen':>6}{'ref':>6}{'train':>7}{'peak MiB':>10}"
            f"{'speed vs ' + BASELINE[work]:>28}{'memory':>20}"
        )
        base = runs[BASELINE[work]]
        for system, results in runs.items():
            speed = [ref["step_s"] / run["step_s"] for run, ref in zip(results, base, strict=True)]
            memory = [run["peak_mib"] / ref["peak_mib"] for run, ref in zip(results, base, strict=True)]

            def median(key: str, results: list[dict[str, Any]] = results) -> float:
                return statistics.median(run[key] for run in results)

            print(
                f"{system:18}{median('step_s'):8.2f}{median('generated_per_s'):11.0f}{median('generation'):6.0%}"
                f"{median('reference'):6.0%}{median('training'):7.0%}{median('peak_mib'):10.0f}"
                f"{_spread(speed):>28}{_spread(memory):>20}"
            )
    return report


if __name__ == "__main__":
    main()
