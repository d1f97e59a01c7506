"""The reference is the initial policy, always: in a precomputed table after training, after a resume with
the cache gone, in evaluation on new data, and in a cache keyed by everything that changes its values."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from torch.testing import assert_close

from rlhf_lab.evaluate import EvalOptions, evaluate
from rlhf_lab.train import build, run
from tests.conftest import compose_config

SHORT = ["trainer.limit_val_batches=1", "trainer.log_every_n_steps=1"]


def with_cache(cfg, cache: Path):
    """The config with its own cache directory (tiny models are rebuilt there: fractions of a second)."""
    with open_dict(cfg):
        cfg.paths.cache_dir = str(cache)
    return cfg


def reference_files(cache: Path) -> list[Path]:
    return sorted((cache / "reference").glob("*.pt"))


@pytest.mark.slow
def test_precomputed_reference_on_new_data_is_the_initial_policy(tmp_path: Path) -> None:
    """A full fine-tuning run with a precomputed reference, evaluated on held-out rows it never saw: the
    table is computed from the base model (not the trained weights), so it gives what a frozen copy gives,
    and the rewards are not the zeros a reference equal to the trained policy would give."""
    run_dir = tmp_path / "run"
    run(
        compose_config(
            ["algo.reference=precomputed", "trainer.max_steps=6", "optim.lr=2e-3", *SHORT], run_dir=run_dir
        )
    )
    new_data = ["data.source.seed=4321", "data.source.num_train=8", "data.source.num_eval=48"]
    precomputed = evaluate(
        EvalOptions(run_dir=run_dir, samples=0, overrides=new_data, out_dir=tmp_path / "precomputed")
    )
    copy = evaluate(
        EvalOptions(
            run_dir=run_dir,
            samples=0,
            overrides=[*new_data, "algo.reference=copy"],
            out_dir=tmp_path / "copy",
        )
    )
    assert abs(copy["val/rewards/margins"]) > 0.01  # training moved the policy away from its reference
    for key in ("val/rewards/chosen", "val/rewards/rejected", "val/rewards/margins", "val/loss"):
        assert precomputed[key] == pytest.approx(copy[key], abs=1e-5), key
    assert precomputed["val/rewards/accuracies"] == copy["val/rewards/accuracies"]


def test_evaluate_keeps_overrides_with_a_tiny_model_on_new_data(tmp_path: Path) -> None:
    """`python -m rlhf_lab.evaluate` rebuilds a tiny model from the run's own training data, and still
    applies every override (here algo.reference=copy on a precomputed run)."""
    from rlhf_lab.evaluate import build_for_eval, load_config

    run_dir = tmp_path / "run"
    run(compose_config(["algo.reference=precomputed", "trainer.max_steps=1", *SHORT], run_dir=run_dir))
    overrides = ["data.source.seed=99", "data.source.num_train=8", "algo.reference=copy", "algo.beta=0.3"]
    objective, datamodule, _ = build_for_eval(load_config(run_dir, overrides), load_config(run_dir))
    assert objective.reference_mode == "copy" and objective.loss_kwargs["beta"] == 0.3
    assert datamodule.source.seed == 99
    # The tokenizer (and so the initial weights) still comes from the run's training corpus.
    trained, _, _ = build(load_config(run_dir))
    assert objective.model_spec.name_or_path == trained.model_spec.name_or_path


def _resume_run(run_dir: Path, cache: Path, max_steps: int, resume: bool):
    common = [
        "algo.reference=precomputed",
        "trainer.val_check_interval=2",
        "optim.scheduler=constant",
        "optim.warmup_ratio=0",
        "optim.lr=2e-3",
        *SHORT,
    ]
    extra = ["resume=true"] if resume else []
    return run(
        with_cache(
            compose_config([*common, f"trainer.max_steps={max_steps}", *extra], run_dir=run_dir), cache
        )
    )


@pytest.mark.parametrize("tables_in_checkpoint", [True, False], ids=["from-checkpoint", "from-fresh-base"])
def test_resume_with_an_emptied_cache_ends_like_an_uninterrupted_run(
    tmp_path: Path, tables_in_checkpoint: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Interrupted at step 4, the reference cache deleted, resumed to step 8: the same weights and the same
    reference table as 8 steps straight through. The table comes from the checkpoint; a checkpoint without
    one (an older run) recomputes it from a freshly loaded base model, never from the restored weights."""
    straight = _resume_run(tmp_path / "straight", tmp_path / "cache_a", 8, resume=False)

    cache = tmp_path / "cache_b"
    _resume_run(tmp_path / "resumed", cache, 4, resume=False)
    assert reference_files(cache)
    shutil.rmtree(cache / "reference")
    if not tables_in_checkpoint:
        last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
        checkpoint = torch.load(last, map_location="cpu", weights_only=False)
        del checkpoint["rlhf_lab"]
        torch.save(checkpoint, last)
    with caplog.at_level(logging.INFO, logger="rlhf_lab.reference"):
        resumed = _resume_run(tmp_path / "resumed", cache, 8, resume=True)
    assert resumed.trainer.global_step == 8
    assert ("freshly loaded base model" in caplog.text) is not tables_in_checkpoint

    for split in ("train", "val"):
        assert_close(resumed.objective.reference.tables[split], straight.objective.reference.tables[split])
    straight_state = dict(straight.objective.policy.model.named_parameters())
    for name, parameter in resumed.objective.policy.model.named_parameters():
        assert_close(parameter, straight_state[name], atol=1e-6, rtol=1e-5, msg=name)
    # A table recomputed after the resume is cached again, under the same key, with the base's values.
    if not tables_in_checkpoint:
        (cached,) = reference_files(cache)
        tables = torch.load(cached, weights_only=True)
        assert_close(tables["train"], straight.objective.reference.tables["train"])


def _key(tmp_path: Path, *overrides: str) -> tuple[str, dict[str, torch.Tensor]]:
    """The reference cache key and table of a one-step precomputed run."""
    result = run(
        with_cache(
            compose_config(
                [
                    "algo.reference=precomputed",
                    "trainer.max_steps=1",
                    "export.enabled=false",
                    *SHORT,
                    *overrides,
                ],
                run_dir=tmp_path / f"run{len(list(tmp_path.glob('run*')))}",
            ),
            tmp_path / "cache",
        )
    )
    return result.objective.reference.tables_key, result.objective.reference.tables


@pytest.mark.parametrize(
    ("name", "other", "base"),
    [
        # QLoRA: the reference is the 4-bit base (adapters off); its table is never reused at full precision.
        (
            "nf4",
            ["adapter=lora", "quant=nf4", "quant.compute_dtype=float32"],
            ["adapter=lora"],
        ),
        ("bf16-autocast", ["trainer.precision=bf16-mixed"], []),
        ("bf16-weights", ["model.dtype=bfloat16"], []),
    ],
)
def test_a_cached_table_is_never_reused_at_another_precision(
    tmp_path: Path, name: str, other: list[str], base: list[str]
) -> None:
    fp32_key, fp32_tables = _key(tmp_path, *base)
    other_key, other_tables = _key(tmp_path, *base, *other)
    assert other_key != fp32_key
    assert len(reference_files(tmp_path / "cache")) == 2  # computed, not loaded from the fp32 file
    # And the values do differ: reusing the table would have been wrong.
    assert not torch.allclose(other_tables["val"], fp32_tables["val"], atol=1e-6)
    # The same settings again hit the cache (same key, no third file).
    again_key, _ = _key(tmp_path, *base, *other)
    assert again_key == other_key and len(reference_files(tmp_path / "cache")) == 2


def test_cache_key_covers_chat_template_and_scoring_settings(make_config) -> None:
    def key(*overrides: str) -> str:
        objective, datamodule, _ = build(make_config("algo.reference=precomputed", *overrides))
        return objective.reference_cache_key(datamodule)

    base = key()
    assert key() == base
    assert key("algo.beta=0.7") == base  # beta changes the loss, not the reference log-probs
    assert key("algo=ipo", "algo.reference=precomputed") == base  # DPO and IPO share a table
    assert key("algo.nll_on_prompt=true") != base
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}"
    assert key(f"model.chat_template='{template}'") != base


def test_precomputed_kto_reference_equals_the_copy(make_config) -> None:
    """KTO's mismatched rows belong to the examples, so its reference (completions and KL rows) can be
    precomputed; it equals the frozen copy's."""
    values = {}
    for mode in ("copy", "precomputed"):
        objective, datamodule, _ = build(make_config("algo=kto", f"algo.reference={mode}"))
        objective.configure_model()
        if mode == "precomputed":
            objective.precompute_reference(datamodule)
        batch = next(iter(datamodule.train_dataloader()))
        values[mode] = objective.reference_logps(batch, "train")
        assert values[mode].shape == (2 * batch.size,)
    assert_close(values["precomputed"], values["copy"], atol=1e-5, rtol=1e-5)


def test_trained_weights_never_feed_the_reference(make_config, tmp_path: Path) -> None:
    """Once the policy has trained, a precomputed table comes from a fresh load of the base weights."""
    objective, datamodule, _ = build(
        with_cache(make_config("algo.reference=precomputed"), tmp_path / "cache")
    )
    objective.configure_model()
    objective.precompute_reference(datamodule)
    initial = {split: table.clone() for split, table in objective.reference.tables.items()}
    with torch.no_grad():
        for parameter in objective.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    objective.policy.at_initial_weights = False  # what training_step / loading a checkpoint sets
    objective.reference.tables, objective.reference.tables_key = {}, None
    shutil.rmtree(tmp_path / "cache" / "reference")
    assert objective.precompute_reference(datamodule) == "computed"
    for split, table in initial.items():
        assert_close(objective.reference.tables[split], table)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_runs_sharing_a_cache_compute_the_table_once(tmp_path: Path) -> None:
    """Two processes started together on an empty cache: one computes and writes the table under the lock,
    the other waits and loads it; the file is whole and both runs train."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    cache = tmp_path / "cache"
    overrides = ["algo.reference=precomputed", "trainer.max_steps=1", *SHORT, "export.enabled=false"]
    overrides += ["trainer.enable_progress_bar=false", f"paths.cache_dir={cache}"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "rlhf_lab", *overrides, f"hydra.run.dir={tmp_path / f'run{i}'}"],
            cwd=repo,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    logs = [(tmp_path / f"run{i}" / "__main__.log").read_text() for i in range(2)]
    assert sum("reference log-probs cached at" in log for log in logs) == 1
    assert sum("reference log-probs loaded from cache" in log for log in logs) == 1
    (table,) = reference_files(cache)
    assert not torch.isnan(torch.load(table, weights_only=True)["train"]).any()
    assert not list((cache / "reference").glob(".*tmp-*"))


# --- one small class per mode, one factory, one adapter-off view ---------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "cls"),
    [
        (("algo.reference=copy",), "CopyReference"),
        (("adapter=lora", "algo.reference=adapter_off"), "AdapterOffReference"),
        (("algo.reference=precomputed",), "PrecomputedReference"),
        (("algo=sft",), "NoReference"),
    ],
    ids=["copy", "adapter_off", "precomputed", "none"],
)
def test_one_factory_builds_a_class_per_mode(make_config, overrides: tuple[str, ...], cls: str) -> None:
    from rlhf_lab import reference as reference_module
    from rlhf_lab.errors import ConfigError

    objective, datamodule, _ = build(make_config(*overrides))
    objective.configure_model()
    reference = objective.reference
    assert type(reference) is getattr(reference_module, cls) and reference.mode == objective.reference_mode
    assert isinstance(reference, reference_module.Reference)
    batch = next(iter(datamodule.train_dataloader()))
    if reference.mode == "precomputed":
        objective.precompute_reference(datamodule)
    values = objective.reference_logps(batch, "train")
    if reference.mode == "none":
        assert values is None and reference.model is None
    else:
        assert values is not None and values.shape == (batch.sequences.num_rows,)
    if reference.mode in ("copy", "adapter_off"):
        assert_close(reference.run(batch.sequences).logps, values)
    else:
        with pytest.raises(
            ConfigError, match=rf"algo.reference={reference.mode} has no reference model to run"
        ):
            reference.run(batch.sequences)
    assert (reference.state_for_checkpoint() is not None) is (reference.mode == "precomputed")


def test_the_factory_builds_each_modes_class(make_config) -> None:
    """`make_reference` gives the class of each mode (one class per mode, one factory)."""
    from rlhf_lab.policy import FrozenModel
    from rlhf_lab.reference import CopyReference, NoReference, make_reference

    objective, _, _ = build(make_config())
    objective.configure_model()
    frozen = objective.reference.model
    assert isinstance(frozen, FrozenModel)
    assert type(make_reference("copy", objective.policy, frozen)) is CopyReference
    assert type(make_reference("none", objective.policy)) is NoReference


def test_the_adapter_off_view_is_one_context_shared_by_reference_and_teacher(make_config) -> None:
    """The adapter-off reference and the adapter-off teacher read the same view: the base, adapters disabled."""
    from rlhf_lab.policy import adapters_disabled

    objective, datamodule, _ = build(make_config("algo=kd", "teacher=adapter_off", "adapter=lora"))
    objective.configure_model()
    with torch.no_grad():
        for name, parameter in objective.policy.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)  # the adapter now changes the outputs
    sequences = next(iter(datamodule.train_dataloader())).sequences
    teacher, context = objective.teacher_model()
    with torch.no_grad():
        with context():
            teacher_logps = objective.policy(sequences).logps
        with adapters_disabled(objective.policy.model):
            base_logps = objective.policy(sequences).logps
        adapted = objective.policy(sequences).logps
    assert teacher is objective.policy.model
    assert_close(teacher_logps, base_logps)
    assert not torch.allclose(adapted, base_logps)
    lora, _, _ = build(make_config("adapter=lora", "algo.reference=adapter_off"))
    lora.configure_model()
    lora.policy.load_state_dict(objective.policy.state_dict())
    assert_close(lora.reference.compute(sequences), base_logps)


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (("algo.reference=adapter_off", "adapter=full"), "algo.reference"),
        (("algo=kd", "teacher=adapter_off", "adapter=full"), "teacher"),
    ],
    ids=["reference", "teacher"],
)
def test_adapter_off_needs_an_adapter_checked_in_one_place(
    make_config, monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...], setting: str
) -> None:
    """Both adapter-off settings fail through `require_adapters`, naming the key, before any model loads."""
    import rlhf_lab.reference as reference_module

    calls: list[str] = []
    original = reference_module.require_adapters

    def spy(setting: str, adapter, instead: str) -> None:
        calls.append(setting)
        original(setting, adapter, instead)

    monkeypatch.setattr(reference_module, "require_adapters", spy)
    monkeypatch.setattr("rlhf_lab.objectives.distill.require_adapters", spy)
    with pytest.raises(Exception, match=rf"{setting}=adapter_off needs adapter=lora or adapter=dora"):
        build(make_config(*overrides))
    assert calls == [setting]


def test_the_policy_and_reference_are_typed_and_fail_clearly_before_they_are_built(make_config) -> None:
    from rlhf_lab.objectives.base import ModelNotBuiltError
    from rlhf_lab.policy import Policy

    objective, _, _ = build(make_config())
    assert not objective.is_built and not hasattr(objective, "policy")
    for name in ("policy", "reference"):
        with pytest.raises(
            ModelNotBuiltError, match=rf"\.{name} does not exist yet: configure_model\(\) builds it"
        ):
            getattr(objective, name)
    with pytest.raises(AttributeError, match="no attribute 'polciy'"):
        objective.polciy  # noqa: B018 - any other missing attribute fails as usual
    objective.configure_model()
    assert objective.is_built and isinstance(objective.policy, Policy)
    # Registered as submodules, as before: the same state-dict keys (checkpoints written before still load).
    assert any(key.startswith("policy.model.") for key in objective.state_dict())
    assert any(key.startswith("reference.model.") for key in objective.state_dict())
    policy = objective.policy
    objective.configure_model()  # built once
    assert objective.policy is policy
