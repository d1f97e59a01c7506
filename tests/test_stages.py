"""Stage chaining (experiment=sft_then_<objective>): which overrides reach which stage, and (slow) a real
SFT -> DPO chain whose DPO stage starts from, and is referenced to, the SFT export, reused by a sweep."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from rlhf_lab.errors import ConfigError
from rlhf_lab.stages import _specs, forwardable, stage_forwarded
from tests.test_e2e import cli


def test_overrides_reach_the_stages_they_belong_to() -> None:
    given = ["experiment=sft_then_dpo", "hydra.run.dir=x", "model=tiny", "model.hidden_size=32", "algo.beta=0.2",
             "trainer.max_steps=4", "data=suite"]  # fmt: skip
    forwarded = forwardable(given)
    assert forwarded == given[2:]
    # algo.* only to the last stage; model=/model.* only to the first (later ones load the previous export).
    assert stage_forwarded(forwarded, first=True, last=False) == ["model=tiny", "model.hidden_size=32",
                                                             "trainer.max_steps=4", "data=suite"]  # fmt: skip
    assert stage_forwarded(forwarded, first=False, last=True) == [
        "algo.beta=0.2",
        "trainer.max_steps=4",
        "data=suite",
    ]


def test_stage_specs_fail_early_naming_the_stage() -> None:
    with pytest.raises(ConfigError, match="at least two stages"):
        _specs(OmegaConf.create({"stages": [{"name": "sft", "overrides": ["algo=sft"]}]}))
    with pytest.raises(ConfigError, match=r"stages\[1\]: needs a name and an algo="):
        _specs(OmegaConf.create({"stages": [{"name": "sft", "overrides": ["algo=sft"]}, {"name": "dpo"}]}))


@pytest.mark.slow
def test_sft_then_dpo_starts_from_and_is_referenced_to_the_sft_export(tmp_path: Path) -> None:
    budget = [
        "data.source.num_train=64",
        "data.source.num_eval=32",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
    ]
    first = cli("experiment=sft_then_dpo", "algo.beta=0.2", *budget, run_dir=tmp_path / "a")
    assert first.returncode == 0, first.stderr[-3000:]
    stages = json.loads((tmp_path / "a" / "stages.json").read_text())
    assert [stage["name"] for stage in stages] == ["sft", "dpo"]
    sft_dir = Path(stages[0]["run_dir"])
    assert sft_dir.parent.name == "stages" and sft_dir.name.startswith("sft-")
    assert Path(stages[1]["run_dir"]) == tmp_path / "a"
    sft_config = OmegaConf.load(sft_dir / "config.yaml")
    assert sft_config.algo._target_.endswith("SFT") and "beta" not in sft_config.algo
    # The last stage is the run directory's own run: DPO from the SFT export, with the sweep's beta.
    dpo_config = OmegaConf.load(tmp_path / "a" / "config.yaml")
    assert dpo_config.model.name_or_path == str(sft_dir / "export")
    assert dpo_config.model.dtype == "float32" and dpo_config.algo.beta == 0.2
    assert (tmp_path / "a" / "summary.json").is_file() and (
        tmp_path / "a" / "export" / "config.json"
    ).is_file()
    # Its reference is its initial policy, the SFT model: before the first update, every reward is 0.
    metrics = pd.read_csv(tmp_path / "a" / "metrics.csv")
    first_step = metrics.dropna(subset=["train/rewards/chosen"]).iloc[0]
    assert first_step["train/rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert first_step["train/rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
    # The SFT stage trained: the policy DPO starts from is not the tiny model's initial one.
    sft_metrics = pd.read_csv(sft_dir / "metrics.csv")
    assert sft_metrics["train/loss"].dropna().iloc[-1] < sft_metrics["train/loss"].dropna().iloc[0]

    # A sweep over the DPO stage's hyperparameters trains the SFT stage once.
    stamp = (sft_dir / "summary.json").stat().st_mtime
    second = cli("experiment=sft_then_dpo", "algo.beta=0.5", *budget, run_dir=tmp_path / "b")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"stages: sft already trained in {sft_dir}, reused" in second.stdout
    assert json.loads((tmp_path / "b" / "stages.json").read_text())[0]["run_dir"] == str(sft_dir)
    assert (sft_dir / "summary.json").stat().st_mtime == stamp
    assert OmegaConf.load(tmp_path / "b" / "config.yaml").algo.beta == 0.5
    # A different SFT budget is a different SFT stage.
    third = cli("experiment=sft_then_dpo", *budget, "trainer.max_steps=3", run_dir=tmp_path / "c")
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads((tmp_path / "c" / "stages.json").read_text())[0]["run_dir"] != str(sft_dir)


def test_run_stages_reuses_finished_stages_resumes_interrupted_ones_and_chains_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_stages with the training processes faked: what each stage is started with."""
    import rlhf_lab.stages as stages

    started: list[tuple[str, list[str], bool]] = []

    def fake_run(stage: stages.Stage, resume: bool, *_: object) -> None:
        started.append((stage.name, stage.command, resume))
        stage.run_dir.mkdir(parents=True, exist_ok=True)
        (stage.run_dir / "export").mkdir(exist_ok=True)
        (stage.run_dir / "export" / "config.json").write_text("{}")
        (stage.run_dir / "config.yaml").write_text(
            "model:\n  _target_: rlhf_lab.models.TinyModel\n  dtype: float32\n"
        )
        (stage.run_dir / "summary.json").write_text(json.dumps({"val/loss": 0.5, "run/complete": True}))

    monkeypatch.setattr(stages, "_run", fake_run)
    cfg = OmegaConf.create(
        {
            "paths": {"run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")},
            "stages": [
                {"name": "sft", "overrides": ["algo=sft"]},
                {"name": "dpo", "overrides": ["algo=dpo"]},
            ],
        }
    )
    forwarded = ["algo.beta=0.2", "trainer.max_steps=4"]
    assert stages.run_stages(cfg, forwarded) == {"val/loss": 0.5, "run/complete": True}
    (sft_name, sft_command, sft_resume), (dpo_name, dpo_command, _) = started
    sft_dir = Path(json.loads((tmp_path / "run" / "stages.json").read_text())[0]["run_dir"])
    assert sft_dir.parent == tmp_path / "cache" / "stages"
    assert (sft_name, dpo_name, sft_resume) == ("sft", "dpo", False)
    assert sft_command[3:] == ["trainer.max_steps=4", "algo=sft", f"hydra.run.dir={sft_dir}"]
    assert dpo_command[3:] == [
        "algo.beta=0.2",
        "trainer.max_steps=4",
        "algo=dpo",
        "model=hub",
        f"model.name_or_path={sft_dir / 'export'}",
        "model.dtype=float32",
        "model.attn_implementation=sdpa",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    # Again: the finished SFT stage is reused, only the last stage trains.
    started.clear()
    stages.run_stages(cfg, forwarded)
    assert [name for name, _, _ in started] == ["dpo"]
    # An interrupted SFT stage (checkpoints, no summary) resumes.
    started.clear()
    (sft_dir / "summary.json").unlink()
    (sft_dir / "checkpoints").mkdir()
    stages.run_stages(cfg, forwarded)
    assert [(name, resume) for name, _, resume in started] == [("sft", True), ("dpo", False)]
    # Killed with the SFT summary half-written, or written before its export and not yet marked complete:
    # not finished, resumed.
    for unfinished in ('{"val/loss": 0.5, "run/comp', json.dumps({"val/loss": 0.5})):
        started.clear()
        (sft_dir / "summary.json").write_text(unfinished)
        stages.run_stages(cfg, forwarded)
        assert [(name, resume) for name, _, resume in started] == [("sft", True), ("dpo", False)]
    # A killed last stage resumes too; the lock was released each time.
    started.clear()
    (tmp_path / "run" / "summary.json").unlink()
    (tmp_path / "run" / "checkpoints").mkdir()
    stages.run_stages(cfg, forwarded)
    assert [(name, resume) for name, _, resume in started] == [("dpo", True)]
    assert not (tmp_path / "run" / ".stages.lock").exists()
    # Stages chain text models only.
    (sft_dir / "config.yaml").write_text("model:\n  _target_: rlhf_lab.models.TinyVisionLanguageModel\n")
    with pytest.raises(ConfigError, match="vision-language"):
        stages.run_stages(cfg, forwarded)


@pytest.mark.slow
def test_stages_find_the_users_own_options(tmp_path: Path) -> None:
    """A chain whose last stage is a user's own option (from ``--config-dir``): the child runs search the
    user's directory too, so the stage runs it (its beta reaches the saved config)."""
    mine = tmp_path / "mine"
    (mine / "algo").mkdir(parents=True)
    (mine / "experiment").mkdir()
    (mine / "algo" / "my_dpo.yaml").write_text("defaults:\n  - dpo\n  - _self_\nbeta: 0.37\n")
    (mine / "experiment" / "sft_then_my_dpo.yaml").write_text(
        "# @package _global_\nstages:\n  - name: sft\n    overrides: [algo=sft]\n"
        "  - name: my_dpo\n    overrides: [algo=my_dpo]\n"
    )
    budget = ["data.source.num_train=32", "data.source.num_eval=16", "trainer.max_steps=2",
              "trainer.enable_progress_bar=false", "export.enabled=true"]  # fmt: skip
    result = cli("--config-dir", str(mine), "experiment=sft_then_my_dpo", *budget, run_dir=tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").algo.beta == 0.37


def test_a_failed_stage_is_named_in_one_line_with_its_status_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage's process exits 1: a ChildFailed (a RunStopped: `error:`, exit 2) naming the stage, its
    overrides, its exit status, its log and what to do; its child was told who its parent is."""
    import rlhf_lab.stages as stages
    from rlhf_lab.errors import RunStopped
    from rlhf_lab.launch import ChildResult
    from rlhf_lab.leaderboard.resumable import PARENT_PID_ENV

    seen: list[dict[str, str]] = []

    def failing_child(overrides: list[str], run_dir: Path, env: dict[str, str], **_: object) -> ChildResult:
        seen.append(env)
        (run_dir / "__main__.log").write_text("Traceback ...\n")
        return ChildResult(returncode=1, run_dir=run_dir, summary=None, stderr_tail="Traceback ...")

    monkeypatch.setattr(stages, "run_child", failing_child)
    cfg = OmegaConf.create(
        {
            "paths": {"run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")},
            "stages": [
                {"name": "sft", "overrides": ["algo=sft"]},
                {"name": "dpo", "overrides": ["algo=dpo"]},
            ],
        }
    )
    with pytest.raises(stages.ChildFailed) as failed:
        stages.run_stages(cfg, ["trainer.max_steps=4"])
    (sft_dir,) = (tmp_path / "cache" / "stages").iterdir()
    assert isinstance(failed.value, RunStopped)
    assert str(failed.value) == (
        f"stages: sft (trainer.max_steps=4 algo=sft) failed (exit 1) in {sft_dir}; its log: "
        f"{sft_dir / '__main__.log'} (its output is above); run the same command again to resume it from its "
        "last checkpoint"
    )
    assert seen == [{PARENT_PID_ENV: str(os.getpid())}]
    assert not (tmp_path / "run" / ".stages.lock").exists()
