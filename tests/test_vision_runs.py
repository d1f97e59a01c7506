"""Vision-language runs end to end: LoRA leaves the vision tower alone, export reloads, every objective runs,
the precomputed reference is the initial policy, evaluation generates from images, and DPO, SimPO and
ORPO learn a task only the image can solve (while the same run on blank images stays at chance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf_lab.train import run
from tests.conftest import compose_config
from tests.subprocesses import python_module

VLM = ("model=tiny_vlm", "data=synthetic_vision")


def _inputs(datamodule, model, count: int = 4) -> dict[str, torch.Tensor]:
    """A held-out batch as the model's own forward takes it (the processor's tensors)."""
    items = list(enumerate(datamodule.datasets["val"].examples[:count]))
    sequences = datamodule.collator_for("pairs")(items).sequences
    images = sequences.images
    order = images.shown
    inputs = {"input_ids": sequences.input_ids, "attention_mask": sequences.attention_mask}
    starts = images.pixel_rows.cumsum(0) - images.pixel_rows
    rows = torch.cat(
        [torch.arange(int(starts[i]), int(starts[i] + images.pixel_rows[i])) for i in order.tolist()]
    )
    inputs["pixel_values"] = images.pixel_values[rows]
    for key, value in images.per_image.items():
        inputs[key] = value[order]
    if "image_grid_thw" in inputs:
        inputs["mm_token_type_ids"] = (sequences.input_ids == model.config.image_token_id).int()
    return inputs


@pytest.mark.parametrize("architecture", ["qwen2_vl", "llava"])
def test_lora_trains_only_language_model_adapters_and_the_export_reloads(
    tmp_path: Path, architecture: str
) -> None:
    from transformers import AutoModelForImageTextToText

    from rlhf_lab.models.vision import load_processor, vision_parts

    frozen = ("model.freeze_vision_tower=true", "model.freeze_projector=true")  # the tiny VLM trains them
    cfg = compose_config(
        [*VLM, *frozen, f"model.architecture={architecture}", "adapter=lora", "optim.lr=5e-3"],
        run_dir=tmp_path,
    )
    result = run(cfg)
    peft_model = result.objective.policy.model
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    initial = result.objective.model_spec.load_model()
    initial_state = initial.state_dict()
    parts = vision_parts(initial)
    vision = parts["vision_tower"] + parts["projector"]
    changed = [
        name
        for name, value in base.state_dict().items()
        if name in initial_state and not torch.equal(value, initial_state[name])
    ]
    # The export merged the adapter in place: the changed weights are the language model's LoRA targets.
    assert changed and all("language_model" in name for name in changed), changed[:5]
    assert not any(name.startswith(tuple(vision)) for name in changed)
    assert all(name.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj") for name in changed), changed[:5]

    export = tmp_path / "export"
    reloaded = AutoModelForImageTextToText.from_pretrained(export).eval()
    assert type(reloaded) is type(base)
    processor = load_processor(str(export))
    assert processor.image_token == result.datamodule.images.image_token
    inputs = _inputs(result.datamodule, reloaded)
    with torch.no_grad():
        expected = base.eval()(**inputs).logits
        logits = reloaded(**inputs).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # The reloaded processor tokenises exactly as the run did.
    assert processor.tokenizer.get_vocab() == result.tokenizer.get_vocab()
    assert processor.tokenizer.chat_template == result.tokenizer.chat_template


def test_lora_with_an_unfrozen_projector_trains_it_in_full(make_config) -> None:
    from rlhf_lab.objectives.base import AlignmentObjective  # noqa: F401 - the objective's type
    from rlhf_lab.train import build

    objective, _, _ = build(make_config(*VLM, "adapter=lora", "model.freeze_vision_tower=true"))
    objective.configure_model()
    trainable = [name for name, _ in objective.trainable_parameters()]
    assert any("merger" in name and "lora_" not in name for name in trainable)
    assert not any("visual.blocks" in name for name in trainable)  # the tower itself stays frozen
    assert any("language_model" in name and "lora_" in name for name in trainable)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["dpo", "ipo", "cpo", "simpo", "cpo_simpo", "orpo", "kto", "sft"])
def test_every_offline_objective_runs_on_images(tmp_path: Path, algo: str) -> None:
    """No objective has image-specific code: each trains on the image task and reports finite metrics."""
    result = run(compose_config([*VLM, f"algo={algo}", "trainer.max_steps=2"], run_dir=tmp_path))
    summary = result.summary
    assert summary["trainer/global_step"] == 2
    assert torch.isfinite(torch.tensor(summary["val/loss"]))
    if algo != "sft":
        assert 0.0 <= summary["val/rewards/accuracies"] <= 1.0
    assert summary["data/train/examples"] > 0


@pytest.mark.slow
def test_grpo_samples_from_images(tmp_path: Path) -> None:
    """Online RL on images: rollouts are generated from each prompt's image and scored by exact match."""
    overrides = [*VLM, "algo=grpo", "data.source.rows=prompts", "data.batch_size=2", "algo.num_generations=4"]
    overrides += [
        "algo.max_new_tokens=6",
        "trainer.max_steps=2",
        "data.source.num_eval=8",
        "algo.log_samples_every=1",
    ]
    summary = run(compose_config(overrides, run_dir=tmp_path)).summary
    assert summary["trainer/global_step"] == 2
    assert 0.0 <= summary["val/reward"] <= 1.0
    samples = (tmp_path / "samples" / "step_000001.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in samples]
    assert len(rows) == 8  # 2 prompts x 4 samples, each prompt with its image's place kept
    assert all(row["prompt"][0]["content"].count("<image>") == 1 for row in rows)


@pytest.mark.slow
def test_the_precomputed_reference_is_the_initial_policy_with_images(tmp_path: Path) -> None:
    copy = run(compose_config([*VLM, "algo.reference=copy"], run_dir=tmp_path / "copy")).summary
    precomputed = run(compose_config([*VLM, "algo.reference=precomputed"], run_dir=tmp_path / "pre")).summary
    for key in ("val/rewards/chosen", "val/rewards/margins", "val/loss", "val/rewards/accuracies"):
        assert precomputed[key] == pytest.approx(copy[key], abs=1e-5), key


def test_the_reference_cache_key_changes_with_the_pixels(make_config) -> None:
    from rlhf_lab.train import build

    _, seen, _ = build(make_config(*VLM))
    _, blank, _ = build(make_config(*VLM, "data.blank_images=true"))
    assert seen.fingerprint() != blank.fingerprint()
    first, second = seen.datasets["train"].examples[0], blank.datasets["train"].examples[0]
    assert first.prompt_ids == second.prompt_ids  # same tokens: only the pixels differ


@pytest.mark.slow
def test_evaluate_generates_from_the_images(tmp_path: Path) -> None:
    run(compose_config([*VLM], run_dir=tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    result = python_module("rlhf_lab.evaluate", f"run_dir={tmp_path}", "samples=3", "max_new_tokens=6")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("val/rewards/accuracies", "val/loss"):
        assert metrics[key] == pytest.approx(summary[key], abs=1e-5), key
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3
    for sample in samples:
        assert sample["prompt"].count("<image>") == 1 and "image_pad" not in sample["prompt"]
        assert len(sample["images"]) == 1 and 0 < sample["new_tokens"] <= 6


# ------------------------------------------------------------------------------------------ learning
# The colour task's documented numbers (README) were measured with patch 4 and a frozen tower and projector,
# the tiny VLM's former defaults (its defaults now, patch 16 and trained, give DPO 0.79 at seed 42).
LEARN = (
    *VLM,
    "model.patch_size=4",
    "model.freeze_vision_tower=true",
    "model.freeze_projector=true",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "logger=csv",
)


def _held_out(tmp_path: Path, name: str, *overrides: str) -> dict[str, float]:
    run_dir = tmp_path / name
    result = python_module("rlhf_lab", *LEARN, *overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_dpo_learns_what_only_the_image_shows_and_blank_images_stay_at_chance(tmp_path: Path) -> None:
    seen = _held_out(tmp_path, "images")
    blank = _held_out(tmp_path, "blank", "data.blank_images=true")
    assert seen["val/rewards/accuracies"] >= 0.85, seen
    assert abs(blank["val/rewards/accuracies"] - 0.5) <= 0.05, blank
    assert seen["data/val/examples"] == blank["data/val/examples"] == 256


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "extra"), [("simpo", ()), ("orpo", ("trainer.max_epochs=4",))])
def test_simpo_and_orpo_learn_it_with_no_image_code(
    tmp_path: Path, algo: str, extra: tuple[str, ...]
) -> None:
    summary = _held_out(tmp_path, algo, f"algo={algo}", *extra)
    assert summary["val/rewards/accuracies"] >= 0.85, summary


@pytest.mark.slow
def test_dpo_learns_where_the_dot_is_at_the_tiny_vlms_defaults_and_blank_images_stay_at_chance(
    tmp_path: Path,
) -> None:
    """The spatial task at model=tiny_vlm's defaults and the default budget (one epoch, 63 steps): measured
    1.00 held out for seeds 42, 1 and 2 (0.57 with the former defaults: patch 4, frozen tower and projector),
    and 0.50 on blank images."""
    spatial = ("data.source.task=spatial", "trainer.enable_progress_bar=false", "logger=csv")
    runs = {}
    for name, extra in (("images", ()), ("blank", ("data.blank_images=true",))):
        run_dir = tmp_path / name
        result = python_module("rlhf_lab", *VLM, *spatial, *extra, f"hydra.run.dir={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = json.loads((run_dir / "summary.json").read_text())
    assert runs["images"]["val/rewards/accuracies"] >= 0.9, runs["images"]
    assert abs(runs["blank"]["val/rewards/accuracies"] - 0.5) <= 0.05, runs["blank"]
    assert runs["images"]["trainer/global_step"] == 63
