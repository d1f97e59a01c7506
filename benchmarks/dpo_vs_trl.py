"""End-to-end DPO training speed and memory: rlhf_lab against TRL's DPOTrainer, side by side in one run.

Both systems train the same Llama (built from config, saved once, loaded by each) on the same preference
data (plain text, generated deterministically: prompts of 24-300 words, completions of 12-150 words) with
the same batch, ``max_length``, precision (fp32), optimiser (AdamW, constant learning rate) and reference
(a frozen copy of the initial weights; no gradient checkpointing). Each measurement is its own process,
and the systems alternate (A B A B ...) so a noisy machine's drift hits both.

Reported per system: tokens/s (the non-pad prompt + completion tokens of chosen and rejected, as an
unshared batch holds them, so any sharing shows up as speed rather than as fewer tokens), the median step
time after warm-up, peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on a GPU) and the ratios to
TRL with their spread over the repetitions. A second TRL row uses its own best setting here
(``precompute_ref_log_probs=True``), so the comparison is not against a strawman. ``rlhf_lab`` runs the
defaults (``data.prefix_sharing=auto``: each pair's prompt read once, by the policy and the reference),
``rlhf_lab_unshared`` turns sharing off, ``rlhf_lab_grouped`` adds ``data.group_by_length=8`` (batches of
similar lengths: less padding), and ``rlhf_lab_recompute`` is the defaults with ``logps_recompute=true`` (the
head's logits recomputed in backward rather than kept, which ``auto`` does here). ``--gpu`` runs both on
CUDA in bf16 mixed precision (``benchmarks/gpu_check.sh``).

Before timing anything, `check` runs both systems' own code on one batch and requires the same token ids,
the same per-sequence log-probs and the same DPO loss (policy moved away from the reference so the loss is
informative): speed is never bought with a different computation.

    python benchmarks/dpo_vs_trl.py [--steps 6] [--repeats 2] [--vocab 32000] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: rlhf_lab's variants: the data options each adds (the levers), then the peer's.
RLHF_LAB_VARIANTS = {
    "rlhf_lab_recompute": ["logps_recompute=true"],
    "rlhf_lab_unshared": ["data.prefix_sharing=false"],
    "rlhf_lab": [],  # the defaults: data.prefix_sharing=auto (each pair's prompt read once here)
    "rlhf_lab_grouped": ["data.group_by_length=8"],
}
#: Where both systems run: ``--gpu`` sets bf16 mixed precision on CUDA for both (`set_device`).
DEVICE = {"gpu": False}


def set_device(args: argparse.Namespace) -> None:
    DEVICE["gpu"] = bool(getattr(args, "gpu", False))


SYSTEMS = (*RLHF_LAB_VARIANTS, "trl", "trl_precompute")


# -------------------------------------------------------------------------------------------- setup
def make_rows(
    count: int, seed: int, prompt_words: tuple[int, int], completion_words: tuple[int, int]
) -> list[dict]:
    """Plain-text pairs over a fixed pseudo-word vocabulary (deterministic for ``seed``)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(6000)})

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))

    return [
        {
            "prompt": text(*prompt_words) + ".",
            "chosen": " " + text(*completion_words) + ".",
            "rejected": " " + text(*completion_words) + ".",
        }
        for _ in range(count)
    ]


def prepare(args: argparse.Namespace, workdir: Path, completion_words: tuple[int, int] = (12, 150)) -> None:
    """The data file and the model directory (tokenizer trained on the data, weights from a seed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_lab.models.tiny import train_tokenizer

    rows = make_rows(
        args.examples, args.seed, (args.min_prompt_words, args.max_prompt_words), completion_words
    )
    (workdir / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    texts = [row[key] for row in rows for key in ("prompt", "chosen", "rejected")]
    tokenizer = train_tokenizer(texts, vocab_size=min(args.vocab, 32000))
    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=max(args.vocab, len(tokenizer)),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=args.hidden * 11 // 4,
        max_position_embeddings=max(2048, args.max_length),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")


def rlhf_lab_config(args: argparse.Namespace, workdir: Path, extra: list[str] | tuple[str, ...] = ()) -> Any:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from rlhf_lab.config import CONF_DIR, register_schemas

    register_schemas()
    overrides = [
        "algo=dpo",
        "algo.reference=copy",
        "model=hub",
        f"model.name_or_path={workdir / 'model'}",
        "model.dtype=float32",
        "data=jsonl",
        f"data.source.train_path={workdir / 'train.jsonl'}",
        f"data.source.eval_path={workdir / 'train.jsonl'}",
        f"data.max_length={args.max_length}",
        "data.max_prompt_length=null",
        "data.truncation_mode=keep_start",
        f"data.batch_size={args.pairs}",
        "data.pad_to_multiple_of=null",
        "data.num_workers=0",
        f"optim.lr={args.lr}",
        "optim.scheduler=constant",
        "optim.warmup_ratio=0.0",
        "trainer=gpu" if DEVICE["gpu"] else "trainer=cpu",
        "logger=csv",
        *extra,
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.run_dir = str(workdir / "rlhf_lab_run")
        cfg.paths.cache_dir = str(workdir / "cache")
    return cfg


def trl_trainer(
    args: argparse.Namespace, workdir: Path, precompute: bool, callbacks: list | None = None
) -> Any:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype="float32")
    dataset = datasets.load_dataset("json", data_files=str(workdir / "train.jsonl"), split="train")
    config = DPOConfig(
        output_dir=str(workdir / "trl_run"),
        per_device_train_batch_size=args.pairs,
        max_length=args.max_length,
        truncation_mode="keep_start",  # the sequence's first max_length tokens: rlhf_lab's keep_start too
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=args.steps + 1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not DEVICE["gpu"],
        bf16=DEVICE["gpu"],
        fp16=False,
        gradient_checkpointing=False,
        precompute_ref_log_probs=precompute,
        dataloader_num_workers=0,
        seed=args.seed,
        beta=0.1,
        disable_tqdm=True,
    )
    return DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )


# ------------------------------------------------------------------------------------------- checks
def check(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """Both systems' own code on one batch: token ids, per-sequence log-probs and the DPO loss agree."""
    import torch

    from rlhf_lab.losses import dpo_loss
    from rlhf_lab.policy import sequence_logps
    from rlhf_lab.train import build

    trainer = trl_trainer(args, workdir, precompute=False)
    trl_rows = [trainer.train_dataset[i] for i in range(args.pairs)]
    trl_batch = trainer.data_collator(trl_rows)
    _, datamodule, _ = build(rlhf_lab_config(args, workdir))
    ours = datamodule.datasets["train"].examples[: args.pairs]
    batch = datamodule.collator("train")(list(enumerate(ours)))
    # Row by row, after each system's own tokenisation, truncation and collation.
    for row in range(2 * args.pairs):
        for name, mine, theirs in (
            ("tokens", batch.sequences.input_ids, trl_batch["input_ids"]),
            ("completion tokens", batch.sequences.completion_mask, trl_batch["completion_mask"]),
        ):
            kept_mine = mine[row][batch.sequences.attention_mask[row].bool()].long().tolist()
            kept_theirs = theirs[row][trl_batch["attention_mask"][row].bool()].long().tolist()
            if kept_mine != kept_theirs:
                raise AssertionError(f"row {row}: rlhf_lab and TRL give different {name}")
    policy, reference = trainer.model, trainer.ref_model
    torch.manual_seed(1)
    with torch.no_grad():  # away from the reference, so the loss is not log 2 for both
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(policy, trl_batch))
        labels = trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100)
        inputs = {"input_ids": trl_batch["input_ids"], "attention_mask": trl_batch["attention_mask"]}
        trl_logps = policy(**inputs, labels=labels, fused_lm_head=True, use_cache=False).log_probs.sum(1)
        our_logps = sequence_logps(policy, batch.sequences).logps
        our_reference = sequence_logps(reference, batch.sequences).logps
        size = batch.size
        out = dpo_loss(
            our_logps[:size], our_logps[size:], our_reference[:size], our_reference[size:], beta=0.1
        )
        our_loss = float(out.losses.mean())
    logps_error = float((trl_logps - our_logps).abs().max() / our_logps.abs().max())
    loss_error = abs(trl_loss - our_loss)
    # fp32 sums over hundreds of tokens: a relative 1e-7 in the log-probs moves the loss by about 1e-5.
    if logps_error > 1e-5 or loss_error > 1e-4:
        raise AssertionError(
            f"rlhf_lab and TRL disagree: log-probs {logps_error:.2e} (relative), loss {loss_error:.2e}"
        )
    return {"trl_loss": trl_loss, "rlhf_lab_loss": our_loss, "logps_relative_error": logps_error}


# -------------------------------------------------------------------------------------------- timing
def _peak_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tokens(attention_mask: Any) -> int:
    return int(attention_mask.sum())


def time_rlhf_lab(args: argparse.Namespace, workdir: Path, extra: list[str]) -> dict[str, float]:
    import lightning as L

    from rlhf_lab.train import build

    objective, datamodule, _ = build(rlhf_lab_config(args, workdir, extra))
    times: list[float] = []
    tokens: list[int] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            self.start = time.perf_counter()
            tokens.append(_tokens(batch.sequences.attention_mask))

        def on_train_batch_end(self, *_: Any) -> None:
            times.append(time.perf_counter() - self.start)

    _fit(objective, datamodule, [Timer()], max_steps=args.steps + 1, gradient_clip_val=1.0)
    return _summary(times, tokens)


def _fit(objective: Any, datamodule: Any, callbacks: list[Any] | None = None, **limits: Any) -> None:
    """Lightning's fit on one CPU, fp32, with nothing but training (no logger, checkpoints or validation)."""
    import lightning as L

    trainer = L.Trainer(
        accelerator="gpu" if DEVICE["gpu"] else "cpu",
        devices=1,
        precision="bf16-mixed" if DEVICE["gpu"] else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
        **limits,
    )
    trainer.fit(objective, datamodule=datamodule)


def time_trl(args: argparse.Namespace, workdir: Path, precompute: bool) -> dict[str, float]:
    from transformers import TrainerCallback

    times: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter() - self.start)

    trainer = trl_trainer(args, workdir, precompute, callbacks=[Timer()])
    collate = trainer.data_collator

    def counting(rows: list[dict]) -> Any:
        batch = collate(rows)
        tokens.append(_tokens(batch["attention_mask"]))
        return batch

    trainer.data_collator = counting
    trainer.train()
    return _summary(times, tokens)


def _summary(times: list[float], tokens: list[int]) -> dict[str, float]:
    steady_times, steady_tokens = times[1:], tokens[1 : len(times)]  # the first step warms up
    return {
        "tokens_per_s": sum(steady_tokens) / sum(steady_times),
        "median_step_s": statistics.median(steady_times),
        "peak_mib": _peak_mib(),
        "steps": len(steady_times),
    }


def time_sweep_run(args: argparse.Namespace, workdir: Path, reference: str, beta: float) -> dict[str, float]:
    """One run of an ``algo.beta`` sweep, whole: model loading, any reference precomputation (train and
    held-out splits) and one epoch of training."""
    from rlhf_lab.train import build

    start = time.perf_counter()
    # A sweep's run trains on its data (one epoch here) and holds out a split, as a real one does.
    extra = [
        f"algo.reference={reference}",
        f"algo.beta={beta}",
        "data.source.eval_path=null",
        "data.source.eval_fraction=0.125",
    ]
    objective, datamodule, _ = build(rlhf_lab_config(args, workdir, extra))
    _fit(objective, datamodule, max_epochs=1)
    return {"wall_s": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------- ceiling
def _matmul_rate(rows: int, inner: int, cols: int, repeats: int = 5) -> float:
    """FLOP/s of ``[rows, inner] @ [inner, cols]`` forward and both backward products (best of ``repeats``)."""
    import torch

    a, b = torch.randn(rows, inner, requires_grad=True), torch.randn(inner, cols, requires_grad=True)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        (a @ b).backward(torch.ones(rows, cols))
        best = min(best, time.perf_counter() - start)
    return 3 * 2 * rows * inner * cols / best


def ceiling(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """The fastest a default DPO step could run here: its useful FLOPs (real tokens only, the policy's
    forward and backward and the reference's forward) at this machine's measured matmul rates.

    Per real decoder position (prefix-shared: each pair's prompt once) the decoder's matmuls cost
    ``2 * decoder weights`` forward, attention ``4 * hidden`` per layer per attended position; the head
    ``2 * hidden * vocab`` per completion token (the only positions it runs on). Backward costs twice the
    forward. Each part is priced at the rate of a matmul of its own shape on these threads.
    """
    import itertools

    from rlhf_lab.train import build

    config = json.loads((workdir / "model" / "config.json").read_text())
    hidden, vocab, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    decoder_weights = layers * (4 * hidden * hidden + 3 * hidden * config["intermediate_size"])
    _, datamodule, _ = build(rlhf_lab_config(args, workdir))
    datamodule.setup("fit")
    positions = attended = completions = counted = 0
    for batch in itertools.islice(datamodule.train_dataloader(), args.steps):
        shared = batch.sequences.shared
        if shared is None:
            raise RuntimeError("the default DPO batch is expected to be prefix-shared here")
        real = shared.segments >= 0
        positions += int(real.sum())
        attended += int((shared.attention()[:, 0] & real[:, :, None]).sum())
        completions += int(batch.sequences.completion_mask.sum())
        counted += _tokens(batch.sequences.attention_mask)
    decoder_flops = 2 * decoder_weights * positions + 4 * hidden * layers * attended
    head_flops = 2 * hidden * vocab * completions
    # Policy: forward + backward (3x the forward); reference: forward (1x). The rates are FLOP/s.
    decoder_rate = _matmul_rate(positions // args.steps, hidden, config["intermediate_size"])
    head_rate = _matmul_rate(completions // args.steps, hidden, vocab)
    seconds = 4 * (decoder_flops / decoder_rate + head_flops / head_rate)
    return {
        "tokens_per_s": counted / seconds,
        "gflop_per_step": 4 * (decoder_flops + head_flops) / args.steps / 1e9,
        "decoder_gflops": decoder_rate / 1e9,
        "head_gflops": head_rate / 1e9,
        "head_share": head_flops / (decoder_flops + head_flops),
    }


# --------------------------------------------------------------------------------------------- main
def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    if args.child == "check":
        result = check(args, workdir)
    elif args.child == "ceiling":
        result = ceiling(args, workdir)
    elif args.child.startswith("sweep_"):
        _, reference, beta = args.child.split("_", 2)
        result = time_sweep_run(args, workdir, reference, float(beta))
    elif args.child in RLHF_LAB_VARIANTS:
        result = time_rlhf_lab(args, workdir, RLHF_LAB_VARIANTS[args.child])
    else:
        result = time_trl(args, workdir, precompute=args.child == "trl_precompute")
    print("RESULT " + json.dumps(result))


def child_argv(args: argparse.Namespace, workdir: Path) -> list[str]:
    """A measurement's command line: every setting of ``args``, and the directory its data and model are in."""
    modes = ("child", "workdir", "check_only", "sweep_cost", "scaling")
    settings = [
        f"--{key.replace('_', '-')}" if value is True else f"--{key.replace('_', '-')}={value}"
        for key, value in vars(args).items()
        if key not in modes and value is not None and value is not False
    ]
    return [*settings, "--workdir", str(workdir)]


def run_child(name: str, argv: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--child", name], capture_output=True, text=True, check=False
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement (after 1 warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="A B A B repetitions")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--min-prompt-words", type=int, default=24)
    parser.add_argument("--max-prompt-words", type=int, default=300)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated, from " + ", ".join(SYSTEMS)
    )
    parser.add_argument("--check-only", action="store_true", help="run the equality check and stop")
    parser.add_argument(
        "--sweep-cost",
        action="store_true",
        help="instead: a 4-point algo.beta sweep with algo.reference=precomputed (one cached table) against "
        "4 runs with a live reference copy, whole runs timed",
    )
    parser.add_argument(
        "--scaling",
        default=None,
        help="instead: the scaling sweep, written as CSV and PNG with this path prefix (e.g. docs/dpo_scaling)",
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--gpu", action="store_true", help="both systems on CUDA in bf16 mixed precision")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_device(args)
    if args.child:
        child(args)
        return {}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dpo_vs_trl-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.scaling:
        return {"scaling": scaling(args, workdir, Path(args.scaling))}
    prepare(args, workdir)
    common = child_argv(args, workdir)
    checked = run_child("check", common)
    print(
        f"check: same token ids; log-probs agree to {checked['logps_relative_error']:.1e} (relative); "
        f"DPO loss rlhf_lab {checked['rlhf_lab_loss']:.6f}, TRL {checked['trl_loss']:.6f}"
    )
    if args.check_only:
        return {"check": checked}
    if args.sweep_cost:
        return {"check": checked, "sweep_cost": sweep_cost(common)}
    systems = [name for name in args.systems.split(",") if name]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name in systems:  # alternating: A B C A B C ...
            results[name].append(run_child(name, common))
    print(
        f"\nvocab={args.vocab} hidden={args.hidden} layers={args.layers} pairs={args.pairs} "
        f"max_length={args.max_length} prompts={args.min_prompt_words}-{args.max_prompt_words} words "
        f"completions=12-150 words threads={args.threads} steps={args.steps} repeats={args.repeats}"
    )
    print(
        f"{'system':16}{'tokens/s':>10}{'s/step':>9}{'peak MiB':>10}{'speed vs trl':>22}{'memory vs trl':>22}"
    )
    base = results.get("trl")
    for name in systems:
        runs = results[name]
        speed = [run["tokens_per_s"] for run in runs]
        line = (
            f"{name:16}{statistics.median(speed):10.0f}{statistics.median(r['median_step_s'] for r in runs):9.2f}"
            f"{statistics.median(r['peak_mib'] for r in runs):10.0f}"
        )
        if base:
            speed_ratio = [
                run["tokens_per_s"] / ref["tokens_per_s"] for run, ref in zip(runs, base, strict=True)
            ]
            memory_ratio = [run["peak_mib"] / ref["peak_mib"] for run, ref in zip(runs, base, strict=True)]
            line += f"{_spread(speed_ratio):>22}{_spread(memory_ratio):>22}"
        print(line)
    bound = run_child("ceiling", common)
    line = (
        f"ceiling: {bound['gflop_per_step']:.1f} GFLOP of useful work per default step "
        f"({bound['head_share']:.0%} of it the head); matmul rates here {bound['decoder_gflops']:.0f} GFLOP/s "
        f"(decoder shapes), {bound['head_gflops']:.0f} GFLOP/s (head shape): at most "
        f"{bound['tokens_per_s']:.0f} tokens/s"
    )
    if base:
        line += f" = {bound['tokens_per_s'] / statistics.median(r['tokens_per_s'] for r in base):.1f}x trl"
    print(line)
    return {"check": checked, "results": results, "ceiling": bound}


#: (max_length, vocabulary) of the scaling sweep: max_length at a 32k vocabulary, the vocabulary at 512.
SCALING_POINTS = ((256, 32000), (512, 32000), (1024, 32000), (2048, 32000), (512, 64000), (512, 128000))


def scaling(args: argparse.Namespace, workdir: Path, prefix: Path) -> list[dict[str, float]]:
    """rlhf_lab and TRL at each `SCALING_POINTS` (word counts scaled with max_length); CSV and PNG at ``prefix``."""
    import csv

    rows = []
    for max_length, vocab in SCALING_POINTS:
        scale = max_length / 512
        point = argparse.Namespace(
            **{
                **vars(args),
                "max_length": max_length,
                "vocab": vocab,
                "min_prompt_words": max(4, round(24 * scale)),
                "max_prompt_words": round(300 * scale),
                "scaling": None,
            }
        )
        directory = workdir / f"L{max_length}_V{vocab}"
        directory.mkdir(parents=True, exist_ok=True)
        prepare(point, directory, completion_words=(max(2, round(12 * scale)), round(150 * scale)))
        common = child_argv(point, directory)
        result = {"max_length": max_length, "vocab": vocab}
        for name in ("rlhf_lab", "trl"):
            measured = run_child(name, common)
            result[f"{name}_tokens_per_s"] = measured["tokens_per_s"]
            result[f"{name}_ms_per_token"] = 1000 / measured["tokens_per_s"]
            result[f"{name}_peak_mib"] = measured["peak_mib"]
        result["speed_ratio"] = result["rlhf_lab_tokens_per_s"] / result["trl_tokens_per_s"]
        result["memory_ratio"] = result["rlhf_lab_peak_mib"] / result["trl_peak_mib"]
        print(
            f"max_length={max_length:5d} vocab={vocab:6d}: rlhf_lab {result['rlhf_lab_tokens_per_s']:7.0f} tok/s "
            f"{result['rlhf_lab_peak_mib']:6.0f} MiB, trl {result['trl_tokens_per_s']:6.0f} tok/s "
            f"{result['trl_peak_mib']:6.0f} MiB: {result['speed_ratio']:.2f}x speed, {result['memory_ratio']:.2f}x memory",
            flush=True,
        )
        rows.append(result)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, prefix.with_suffix(".png"))
    return rows


def _plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [row for row in rows if row["vocab"] == 32000]
    vocabs = [row for row in rows if row["max_length"] == 512]
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, style in (("rlhf_lab", "o-"), ("trl", "s--")):
        axes[0].plot(
            [r["max_length"] for r in lengths],
            [r[f"{name}_ms_per_token"] for r in lengths],
            style,
            label=name,
        )
        axes[1].plot(
            [r["vocab"] for r in vocabs], [r[f"{name}_ms_per_token"] for r in vocabs], style, label=name
        )
    axes[0].set(xlabel="max_length (vocab 32k)", ylabel="ms per token", xscale="log", title="time per token")
    axes[1].set(
        xlabel="vocabulary (max_length 512)", ylabel="ms per token", xscale="log", title="time per token"
    )
    axes[2].plot(
        [r["max_length"] for r in lengths], [r["memory_ratio"] for r in lengths], "o-", label="vs max_length"
    )
    axes[2].plot(
        [r["vocab"] / 64 for r in vocabs], [r["memory_ratio"] for r in vocabs], "s--", label="vs vocab / 64"
    )
    axes[2].set(xlabel="max_length, or vocabulary / 64", ylabel="rlhf_lab / TRL peak memory", xscale="log")
    axes[2].set_title("memory ratio")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def sweep_cost(common: list[str]) -> dict[str, float]:
    """Wall time of 4 runs (betas 0.05-0.5), live reference copy against one precomputed, cached table."""
    betas = (0.05, 0.1, 0.2, 0.5)
    costs = {}
    for reference in ("copy", "precomputed"):
        costs[reference] = sum(run_child(f"sweep_{reference}_{beta}", common)["wall_s"] for beta in betas)
    ratio = costs["precomputed"] / costs["copy"]
    print(
        f"beta sweep of {len(betas)} runs: live reference {costs['copy']:.1f} s, precomputed (cached once) "
        f"{costs['precomputed']:.1f} s: {ratio:.2f}x"
    )
    return {**costs, "ratio": ratio}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
