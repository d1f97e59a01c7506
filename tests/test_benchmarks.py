"""The benchmarks' own correctness checks, on small configurations (their timings are never tested)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dpo_vs_trl_computes_the_same_objective_as_trl(tmp_path: Path) -> None:
    """Same token ids row by row, the same per-sequence log-probs and the same DPO loss as TRL's DPOTrainer on
    one batch, with the policy moved off the reference (so the loss is not log 2 for both)."""
    pytest.importorskip("trl")
    benchmark = _load("dpo_vs_trl")
    small = ["--vocab=512", "--hidden=64", "--layers=2", "--max-length=192", "--max-prompt-words=60"]
    result = benchmark.main([*small, "--examples=16", "--check-only", "--workdir", str(tmp_path)])
    check = result["check"]
    assert check["logps_relative_error"] < 1e-5
    assert check["rlhf_lab_loss"] == pytest.approx(check["trl_loss"], abs=1e-4)
    assert abs(check["trl_loss"] - 0.6931472) > 1e-4  # an informative loss, not the policy == reference value


@pytest.mark.slow
def test_gpu_check_dry_run_composes_every_run_and_trains_those_a_cpu_can(tmp_path: Path) -> None:
    """`benchmarks/gpu_check.py --dry-run`: every run's config composes (the GPU-only strategies and QLoRA
    too), DPO with Mistral-7B's real tokenizer and KD with a teacher train 2 steps on CPU and report their
    tokens/s, so the script is ready when a GPU is lent."""
    pytest.importorskip("mistral_common")
    check = _load("gpu_check")
    runs = "dpo_full,dpo_lora,dpo_zero2,dpo_zero3,dpo_fsdp2,dpo_qlora_nf4,grpo,kd"
    results = check.main(["--dry-run", "--skip-trl", "--runs", runs, "--workdir", str(tmp_path)])
    assert [r["run"] for r in results] == runs.split(",")
    assert all(r["exit"] == 0 for r in results), [r.get("error") for r in results]
    trained = {r["run"]: r for r in results if "tokens_per_s" in r}
    assert set(trained) == {"dpo_full", "dpo_lora", "grpo", "kd"}
    assert all(r["tokens_per_s"] > 0 for r in trained.values())
    assert check.parameters(check.BODY["full"], 32000) == pytest.approx(0.42e9, rel=0.1)  # Qwen2.5-0.5B's


@pytest.mark.slow
def test_vlm_dpo_vs_trl_trains_both_and_scores_them_with_one_evaluator(tmp_path: Path) -> None:
    """Both systems train the same saved tiny VLM for 2 steps; the script's evaluator agrees with rlhf_lab's
    own held-out accuracy on rlhf_lab's export, and blank images are scored too."""
    pytest.importorskip("trl")
    benchmark = _load("vlm_dpo_vs_trl")
    small = ["--num-train=32", "--num-eval=8", "--steps=2", "--blank", "--workdir", str(tmp_path)]
    rows = benchmark.main(small)
    assert {(r["images"], r["system"]) for r in rows} == {
        (images, system) for images in ("seen", "blank") for system in ("rlhf_lab", "trl")
    }
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0
        if row["system"] == "rlhf_lab":
            assert row["accuracy"] == pytest.approx(row["rlhf_lab_val_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_online_vs_trl_gives_every_system_the_same_work(tmp_path: Path) -> None:
    """`benchmarks/online_vs_trl.py --check-only`: rlhf_lab's GRPO and GKD and TRL's GRPOTrainer,
    DistillationTrainer and GKDTrainer read the same prompt ids and generate the same number of tokens at every
    step (the script raises otherwise), and each step's time splits into shares that add up to one."""
    pytest.importorskip("trl")
    benchmark = _load("online_vs_trl")
    small = ["--hidden=32", "--layers=1", "--tokens=4", "--steps=1", "--check-only"]
    report = benchmark.main([*small, "--workdir", str(tmp_path)])
    assert set(report) == {"grpo", "gkd"}
    for work, systems in report.items():
        assert set(systems) == set(benchmark.SYSTEMS[work])
        for (result,) in systems.values():
            prompts, generations = benchmark.SHAPE[work]
            assert result["work"][0][1] == prompts * generations * 4  # every row 4 tokens, EOS banned before
            shares = [result[phase] for phase in ("generation", "reference", "training")]
            assert all(0 < share < 1 for share in shares) and sum(shares) == pytest.approx(1)
