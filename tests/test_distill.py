"""Distillation (KD, SeqKD, GKD): the teacher's configuration and checks, and learning from the CLI.

The teacher is a tiny model twice the student's width and depth, first trained by SFT on the bundled task;
the student is the default tiny model, built from the same corpus (so the same tokenizer). Learning is the
held-out per-token ``KL(teacher || student)`` on the dataset's completions falling by half or more.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf_lab.data.batches import Sequences
from rlhf_lab.errors import ConfigError
from rlhf_lab.train import build, run
from tests.conftest import compose_config
from tests.subprocesses import built_once
from tests.test_e2e import cli

TEACHER = (
    "algo=sft",
    "model.hidden_size=128",
    "model.num_layers=4",
    "model.intermediate_size=256",
    "checkpoint.save_top_k=0",
)
QUIET = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")


@pytest.fixture(scope="session")
def teacher() -> Path:
    return built_once("sft_teacher", *TEACHER)


def summary(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())


def using(teacher: Path) -> tuple[str, ...]:
    return ("teacher=hub", f"teacher.name_or_path={teacher}", "teacher.dtype=float32", *QUIET)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [("algo=kd",), ("algo=seqkd",), ("algo=gkd",), ("algo=gkd", "algo.seq_kd=true", "algo.lmbda=0.3")],
)
def test_distillation_halves_the_held_out_kl_to_the_teacher(
    teacher: Path, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    initial = cli(*using(teacher), *overrides, "trainer.max_steps=0", run_dir=tmp_path / "initial")
    assert initial.returncode == 0, initial.stderr[-3000:]
    trained = cli(*using(teacher), *overrides, run_dir=tmp_path / "trained")
    assert trained.returncode == 0, trained.stderr[-3000:]
    before = summary(tmp_path / "initial")["val/teacher_student_kl/forward"]
    after = summary(tmp_path / "trained")
    assert before > 1.0  # an untrained student is far from the teacher
    assert after["val/teacher_student_kl/forward"] <= 0.5 * before, (before, after)
    assert (
        after["val/teacher_student_kl/reverse"]
        < summary(tmp_path / "initial")["val/teacher_student_kl/reverse"]
    )
    if overrides[0] == "algo=gkd":
        assert 0.0 <= after["train/on_policy_fraction"] <= 1.0


@pytest.mark.slow
def test_seqkd_generates_the_teacher_completions_once_per_teacher_and_prompts(
    teacher: Path, tmp_path: Path
) -> None:
    """A second SeqKD run with other student settings reuses the cached completions; another generation
    length generates anew."""
    common = (*using(teacher), "algo=seqkd", "trainer.max_steps=2", "trainer.limit_val_batches=1")
    logs = []
    for name, extra in (("a", ()), ("b", ("optim.lr=1e-3",)), ("c", ("algo.max_new_tokens=12",))):
        result = cli(*common, *extra, run_dir=tmp_path / name)
        assert result.returncode == 0, result.stderr[-3000:]
        logs.append((tmp_path / name / "__main__.log").read_text())
    assert "teacher completions (generated" in logs[0] or "teacher completions (cache" in logs[0]
    assert "teacher completions (cache" in logs[1]
    assert "teacher completions (generated" in logs[2]


# ---------------------------------------------------------------------------------- configuration
def test_a_teacher_with_another_vocabulary_fails_before_training_naming_both() -> None:
    objective, _, _ = build(compose_config(["algo=kd", "teacher=tiny", "teacher.vocab_size=400"]))
    with pytest.raises(
        ConfigError, match=r"the teacher and the policy must share a vocabulary.* has \d+ tokens"
    ):
        objective.configure_model()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("algo=kd",), r"distils from a teacher: set teacher=hub"),
        (("algo=kd", "teacher=adapter_off"), r"teacher=adapter_off needs adapter=lora"),
        (("algo=dpo", "teacher=tiny"), r"a teacher is set .* does not distil"),
        (("algo=kd", "teacher=tiny", "algo.beta=1.5"), r"algo.beta"),
        (("algo=gkd", "teacher=tiny", "algo.lmbda=2"), r"algo.lmbda"),
        (("algo=gkd", "teacher=tiny", "algo.min_new_tokens=32"), r"algo.min_new_tokens"),
    ],
)
def test_bad_distillation_config_fails_before_any_model_loads(
    overrides: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build(compose_config(list(overrides)))


def test_self_distillation_starts_at_zero_kl_and_trains_only_the_adapters(tmp_path: Path) -> None:
    """teacher=adapter_off: the student's base with its adapters off is the teacher, so the KL is 0 before
    the first step (LoRA's B starts at zero), and only the adapters move."""
    common = ["algo=kd", "teacher=adapter_off", "adapter=lora", "trainer.limit_val_batches=1"]
    start = run(compose_config([*common, "trainer.max_steps=0"], run_dir=tmp_path / "start"))
    assert start.summary["val/teacher_student_kl/forward"] == pytest.approx(0.0, abs=1e-6)
    trained = run(
        compose_config([*common, "trainer.max_steps=3", "optim.lr=1e-2"], run_dir=tmp_path / "trained")
    )
    assert trained.summary["val/teacher_student_kl/forward"] > 1e-6
    assert not trained.objective.companions  # no second model was loaded
    assert all("lora_" in name for name, p in trained.objective.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("algo", ["seqkd", "gkd", "kd"])
def test_prompt_only_data_is_completed_by_the_teacher(tmp_path: Path, algo: str) -> None:
    """Prompt-only rows (online RL's data) serve distillation: the teacher completes them once, in both splits."""
    common = [
        f"algo={algo}",
        "teacher=adapter_off",
        "adapter=lora",
        "data=synthetic_rl",
        "trainer.max_steps=2",
    ]
    finished = run(compose_config([*common, "trainer.limit_val_batches=1"], run_dir=tmp_path))
    for split in ("train", "val"):
        assert all(example.chosen_ids for example in finished.datamodule.datasets[split].examples)
    assert torch.isfinite(torch.tensor(finished.summary["val/teacher_student_kl/forward"]))


@pytest.mark.parametrize(("lmbda", "fraction"), [(1.0, 1.0), (0.0, 0.0)])
def test_gkd_on_policy_batches_are_generated_by_the_student(
    tmp_path: Path, lmbda: float, fraction: float
) -> None:
    result = run(
        compose_config(
            [
                "algo=gkd",
                "teacher=tiny",
                "teacher.seed=1",
                f"algo.lmbda={lmbda}",
                "algo.max_new_tokens=6",
                "trainer.max_steps=2",
                "trainer.limit_val_batches=1",
            ],
            run_dir=tmp_path,
        )
    )
    assert result.summary["train/on_policy_fraction"] == fraction
    # Generated completions have their lengths logged; the dataset's do not.
    assert ("train/completions/mean_length" in result.summary) == (fraction == 1.0)
    if fraction:
        assert 1 <= result.summary["train/completions/mean_length"] <= 6


def test_gkd_min_new_tokens_bans_eos_until_then() -> None:
    """``algo.min_new_tokens``: no on-policy completion ends before that many tokens (as transformers'
    ``min_new_tokens``, which TRL's trainers take through ``generation_kwargs``)."""
    objective, _, _ = build(compose_config(["algo=gkd", "teacher=tiny", "algo.min_new_tokens=5"]))
    assert objective.sampling.min_new_tokens == 5
    objective.configure_model()
    model, eos = objective.policy.model, objective.tokenizer.eos_token_id
    ids = torch.tensor([[5, 6, 7]] * 8)
    prompts = Sequences(ids, torch.ones_like(ids), torch.zeros_like(ids, dtype=torch.bool))

    # Every final hidden state is all ones and EOS's head row is large: EOS is the likeliest token
    # everywhere, so only the ban keeps a row going.
    decoder = model.get_decoder()
    decoder.norm.register_forward_hook(lambda module, inputs, hidden: torch.ones_like(hidden))
    with torch.no_grad():
        model.get_output_embeddings().weight[eos] = 100.0
    generation = objective.generate_with(model, prompts, objective.sampling, seeds=list(range(8)))
    assert generation.lengths.tolist() == [6] * 8  # 5 banned steps, then EOS


def test_gkd_coin_is_seeded_by_step() -> None:
    objective, _, _ = build(compose_config(["algo=gkd", "teacher=tiny"]))
    draws = [objective._coin(step) for step in range(200)]
    assert draws == [objective._coin(step) for step in range(200)]
    assert 0.35 < sum(d < 0.5 for d in draws) / 200 < 0.65
    assert torch.tensor(draws).std() > 0.2
