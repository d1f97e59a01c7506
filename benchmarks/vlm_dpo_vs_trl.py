"""Vision-language DPO learning parity: rlhf_lab against TRL's DPOTrainer on the tiny VLM and a bundled image task.

Both systems train the same tiny vision-language model (``model=tiny_vlm`` at its defaults, built once and
saved with ``save_pretrained``; each system loads that directory) on the same training rows (the bundled
image task, `rlhf_lab.data.synthetic_vision`, written once as a JSONL file of TRL-style content-part prompts
with PNG files), with the same DPO loss and beta, batch, optimiser (AdamW, weight decay 0), learning-rate
schedule (linear warm-up, then cosine to 0), gradient clipping, number of optimiser steps, frozen parts
(the same ``freeze_vision_tower`` / ``freeze_projector`` in both) and reference (a frozen copy of the initial
weights). Each training run is its own process.

One evaluator, this script's own, scores every export: the held-out pairwise accuracy of the implicit
rewards, ``beta * (log pi(y|x) - log pi_ref(y|x))`` of the chosen against the rejected completion, with the
initial model as the reference, each completion's log-prob summed over its tokens after the processor's
encoding of the chat-templated prompt with its image. A pair counts as right only when the chosen reward is
strictly higher. rlhf_lab's own ``val/rewards/accuracies`` is printed beside it as a cross-check. With
``--blank`` every run is repeated on blank images (each image a uniform grey one of its size, in training
and in evaluation): both systems must stay at chance there.

The data order differs between the systems (each has its own sampler), and rlhf_lab's warm-up is
``(step + 1) / (warmup + 1)`` where TRL's is ``step / warmup``; everything else is the same.

    python benchmarks/vlm_dpo_vs_trl.py [--task spatial] [--seeds 42 1 2] [--blank] [--architecture qwen2_vl]

Prints one JSON line per run, then a table: held-out accuracy per system (and with blank images), per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's rlhf_lab, as the subprocesses get it (PYTHONPATH)
#: rlhf_lab's defaults for algo=dpo with data=synthetic_vision (batch, learning rate, warm-up share, beta).
BATCH = 16
LEARNING_RATE = 5e-4
WARMUP_RATIO = 0.1
BETA = 0.1
MAX_LENGTH = 96
MAX_PROMPT_LENGTH = 80


# ----------------------------------------------------------------------------------------------- data
def content_parts(question: str) -> list[dict[str, Any]]:
    """``"Look. <image>Is it ...?"`` as TRL content parts: text, the image where its placeholder stood, text."""
    before, _, after = question.partition("<image>")
    parts: list[dict[str, Any]] = [{"type": "text", "text": before}] if before else []
    parts.append({"type": "image"})
    return parts + ([{"type": "text", "text": after}] if after else [])


def write_split(rows: list[dict[str, Any]], directory: Path, split: str, blank: bool) -> Path:
    """The rows as JSONL (content-part prompts, absolute image paths) with each image as a PNG file."""
    import io

    from PIL import Image

    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, row in enumerate(rows):
        image = Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")
        if blank:  # as data.blank_images does: a uniform grey image of the same size
            image = Image.new("RGB", image.size, (128, 128, 128))
        path = directory / "images" / f"{split}_{index}.png"
        image.save(path)
        (question,) = [message["content"] for message in row["prompt"]]
        lines.append(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": content_parts(question)}],
                    "chosen": row["chosen"],
                    "rejected": row["rejected"],
                    "images": [str(path)],
                }
            )
        )
    out = directory / f"{split}.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The data files (seen and blank images) and the initial model directory (the tiny VLM's defaults)."""
    import shutil

    from omegaconf import OmegaConf

    from rlhf_lab.config import CONF_DIR
    from rlhf_lab.data.synthetic_vision import SyntheticImagePreferences
    from rlhf_lab.models.tiny_vlm import TinyVisionLanguageModel

    source = SyntheticImagePreferences(task=args.task, num_train=args.num_train, num_eval=args.num_eval)
    splits = {name: [row for block in blocks for row in block.rows] for name, blocks in source.load().items()}
    files = {}
    for blank in (False, True) if args.blank else (False,):
        for split, rows in splits.items():
            files[(blank, split)] = write_split(rows, workdir / ("blank" if blank else "seen"), split, blank)
    # The tiny VLM as model=tiny_vlm builds it (its YAML defaults), with its tokenizer trained on the rows' texts.
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "tiny_vlm.yaml"))
    assert isinstance(defaults, dict)
    fields = {k: v for k, v in defaults.items() if k not in ("defaults", "_target_", "cache_dir")}
    fields["architecture"] = args.architecture
    spec = TinyVisionLanguageModel(**fields, cache_dir=str(workdir / "cache"))
    texts = [
        m["content"]
        for rows in splits.values()
        for r in rows
        for k in ("prompt", "chosen", "rejected")
        for m in r[k]
    ]
    spec.prepare(lambda: texts)
    model_dir = workdir / "model"
    if not model_dir.exists():
        shutil.copytree(spec.name_or_path, model_dir)
    return {
        "files": files,
        "model": model_dir,
        "freeze": (bool(fields["freeze_vision_tower"]), bool(fields["freeze_projector"])),
        "steps": args.steps or math.ceil(args.num_train / BATCH),
    }


# ------------------------------------------------------------------------------------------- training
def train_lab(
    setup: dict[str, Any], blank: bool, seed: int, out: Path, env: dict[str, str]
) -> dict[str, Any]:
    tower, projector = setup["freeze"]
    steps = setup["steps"]
    overrides = [
        "algo=dpo",
        f"algo.beta={BETA}",
        "algo.reference=copy",
        "model=qwen2_vl_2b",  # any VisionLanguageModel spec: it loads model.name_or_path
        f"model.name_or_path={setup['model']}",
        "model.dtype=float32",
        f"model.freeze_vision_tower={str(tower).lower()}",
        f"model.freeze_projector={str(projector).lower()}",
        "data=jsonl",
        f"data.source.train_path={setup['files'][(blank, 'train')]}",
        f"data.source.eval_path={setup['files'][(blank, 'val')]}",
        f"data.max_length={MAX_LENGTH}",
        f"data.max_prompt_length={MAX_PROMPT_LENGTH}",
        f"data.batch_size={BATCH}",
        f"optim.lr={LEARNING_RATE}",
        "optim.weight_decay=0.0",
        "optim.scheduler=cosine",
        f"optim.warmup_steps={math.ceil(WARMUP_RATIO * steps)}",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "trainer.gradient_clip_val=1.0",
        "trainer.val_check_interval=1.0",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
        "logger=csv",
        "checkpoint.save_top_k=0",
        "export.require_learning=false",
        f"seed={seed}",
        f"hydra.run.dir={out}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_lab", *overrides], cwd=REPO, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"rlhf_lab run failed:\n{result.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def train_trl(model_dir: str, train_file: str, seed: int, steps: int, freeze: str, out: str) -> None:
    """TRL's DPOTrainer on the same work (its own process: ``--trl-run``)."""
    import datasets
    from transformers import AutoModelForImageTextToText
    from trl import DPOConfig, DPOTrainer

    from rlhf_lab.models.vision import freeze_vision_parts, load_processor

    tower, projector = (flag == "1" for flag in freeze)
    processor = load_processor(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="float32")
    freeze_vision_parts(model, tower, projector)
    rows = [json.loads(line) for line in Path(train_file).read_text().splitlines()]
    dataset = datasets.Dataset.from_list(rows).cast_column("images", datasets.Sequence(datasets.Image()))
    config = DPOConfig(
        output_dir=out,
        per_device_train_batch_size=BATCH,
        max_length=None,  # nothing is truncated in rlhf_lab either (data/train/truncated: 0)
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(WARMUP_RATIO * steps),
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=steps,
        beta=BETA,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    trainer.train()
    # The weights only: trainer.save_model also saves the processor, whose absent video processor (no
    # torchvision) transformers cannot save; the evaluator reads the initial model's processor for every export.
    trainer.model.save_pretrained(str(Path(out) / "export"))


# ------------------------------------------------------------------------------------------ evaluator
def completion_logps(model: Any, processor: Any, row: dict[str, Any]) -> tuple[float, float]:
    """Summed log-probs of the chosen and rejected completions of ``row`` (prompt with its image)."""
    import torch
    from PIL import Image

    image = Image.open(row["images"][0]).convert("RGB")
    prompt = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    prompt_ids = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0]
    totals = []
    for key in ("chosen", "rejected"):
        full = processor.apply_chat_template(row["prompt"] + row[key], tokenize=False)
        assert full.startswith(prompt), (prompt, full)
        inputs = processor(text=[full], images=[image], return_tensors="pt")
        ids = inputs["input_ids"][0]
        assert torch.equal(ids[: len(prompt_ids)], prompt_ids)
        with torch.no_grad():
            logits = model(**inputs).logits[0].float()
        logps = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:, None])[:, 0]
        totals.append(float(logps[len(prompt_ids) - 1 :].sum()))
    return totals[0], totals[1]


def evaluate(models: dict[str, Path], reference: Path, val_file: Path) -> dict[str, float]:
    """Held-out pairwise accuracy of each model's implicit rewards against ``reference`` (same code for all)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from rlhf_lab.models.vision import load_processor

    processor = load_processor(str(reference))  # every export has the same tokenizer and image processor
    rows = [json.loads(line) for line in val_file.read_text().splitlines()]

    def scores(directory: Path) -> list[tuple[float, float]]:
        model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()
        return [completion_logps(model, processor, row) for row in rows]

    base = scores(reference)
    accuracy = {}
    for name, directory in models.items():
        margins = [
            BETA * ((c - rc) - (r - rr)) for (c, r), (rc, rr) in zip(scores(directory), base, strict=True)
        ]
        accuracy[name] = sum(margin > 0 for margin in margins) / len(margins)
    return accuracy


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--task", default="spatial", choices=["spatial", "colour"])
    parser.add_argument("--architecture", default="qwen2_vl", choices=["qwen2_vl", "llava", "llava_next"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--systems", nargs="+", default=["rlhf_lab", "trl"], choices=["rlhf_lab", "trl"])
    parser.add_argument("--blank", action="store_true", help="also train and evaluate on blank images")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-eval", type=int, default=256)
    parser.add_argument("--steps", type=int, default=0, help="0: one epoch (rlhf_lab's default budget)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--trl-run", nargs=6, metavar=("MODEL", "TRAIN", "SEED", "STEPS", "FREEZE", "OUT"))
    args = parser.parse_args(argv)
    if args.trl_run:
        model_dir, train, seed, steps, freeze, out = args.trl_run
        train_trl(model_dir, train, int(seed), int(steps), freeze, out)
        return []
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vlm_dpo_vs_trl_"))
    env = {
        **os.environ,
        "RLHF_LAB_CACHE": str(workdir / "cache"),
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO),
    }
    setup = prepare(args, workdir)
    print(
        f"model: {setup['model']} (freeze tower, projector: {setup['freeze']}); {setup['steps']} steps",
        flush=True,
    )
    results = []
    for blank in (False, True) if args.blank else (False,):
        for seed in args.seeds:
            exports, seconds, lab_own = {}, {}, None
            for system in args.systems:
                out = workdir / ("blank" if blank else "seen") / system / str(seed)
                started = time.perf_counter()
                if system == "rlhf_lab":
                    lab_own = train_lab(setup, blank, seed, out, env)["val/rewards/accuracies"]
                else:
                    freeze = "".join("1" if flag else "0" for flag in setup["freeze"])
                    command = [sys.executable, __file__, "--trl-run", str(setup["model"])]
                    command += [
                        str(setup["files"][(blank, "train")]),
                        str(seed),
                        str(setup["steps"]),
                        freeze,
                        str(out),
                    ]
                    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
                    if result.returncode != 0:
                        raise RuntimeError(f"TRL run failed:\n{result.stderr[-3000:]}")
                seconds[system] = round(time.perf_counter() - started, 1)
                exports[system] = out / "export"
            accuracy = evaluate(exports, setup["model"], setup["files"][(blank, "val")])
            for system in args.systems:
                row = {
                    "task": args.task,
                    "images": "blank" if blank else "seen",
                    "system": system,
                    "seed": seed,
                    "steps": setup["steps"],
                    "accuracy": round(accuracy[system], 4),
                    "rlhf_lab_val_accuracy": round(lab_own, 4)
                    if system == "rlhf_lab" and lab_own is not None
                    else None,
                    "seconds": seconds[system],
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'images':6} {'system':9} {'held-out accuracy (mean)':>24}  per seed   s/run")
    for images in ("seen", "blank"):
        for system in args.systems:
            runs = [r for r in results if r["images"] == images and r["system"] == system]
            if runs:
                values = [r["accuracy"] for r in runs]
                per_seed = ", ".join(f"{v:.3f}" for v in values)
                mean_seconds = statistics.mean(r["seconds"] for r in runs)
                print(
                    f"{images:6} {system:9} {statistics.mean(values):24.3f}  {per_seed}  {mean_seconds:.0f}"
                )
    return results


if __name__ == "__main__":
    main()
