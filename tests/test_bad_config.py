"""Bad config is named (key, value, what is allowed) before any model loads: never a deep traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_lab.errors import ConfigError
from rlhf_lab.models.hub import HubModel
from rlhf_lab.train import run
from tests.conftest import compose_config
from tests.subprocesses import python_module

REPO = Path(__file__).resolve().parents[1]

CASES = [
    (["model.hidden_size=7"], r"model.hidden_size=7 must be divisible by model.num_heads=4"),
    (["model.num_kv_heads=3"], r"model.num_heads=4 must be divisible by model.num_kv_heads=3"),
    (["model.num_layers=0"], r"model.num_layers=0 is out of range"),
    (["trainer.accumulate_grad_batches=0"], r"trainer.accumulate_grad_batches=0 must be >= 1"),
    (["logps_chunk_size=0"], r"logps_chunk_size=0 is out of range"),
    (["logps_chunk_size=-1"], r"logps_chunk_size=-1 is out of range"),
    (
        ["trainer.val_check_interval=1000"],
        r"trainer.val_check_interval=1000 batches: an epoch has 8 training",
    ),
    (
        ["trainer.val_check_interval=1.5"],
        r"val_check_interval=1.5 as a fraction of an epoch must be in \(0, 1\]",
    ),
    (
        ["checkpoint.monitor=null", "checkpoint.save_top_k=2"],
        r"checkpoint.save_top_k=2 needs a checkpoint.monitor",
    ),
    (["trainer.max_steps=abc"], r"trainer.max_steps='abc' must be an integer"),
    (["trainer.precision=17"], r"trainer.precision=17 is not supported; choose one of"),
    (["data.eval_batch_size=0"], r"data.eval_batch_size=0 must be at least 1"),
    (["optim.eps=0"], r"optim.eps=0.* is out of range"),
    (["algo.beta=1e38"], r"algo.beta=1e\+38 is out of range"),
    (["algo=simpo", "algo.gamma=inf"], r"algo.gamma=inf must be a finite number"),
    (["checkpoint.every_n_minutes=-5"], r"checkpoint.every_n_minutes=-5 must be a positive number"),
    (["trainer.max_steps=-5"], r"trainer.max_steps=-5 must be >= -1"),
    # The root config's own keys (no schema): checked by the preflight before Lightning reads them.
    (["seed=abc"], r"^seed='abc' must be an integer \(e.g. seed=42\)$"),
    (["resume=maybe"], r"^resume='maybe' must be true or false$"),
    (
        ["ckpt_path=/nonexistent/last.ckpt"],
        r"^ckpt_path=/nonexistent/last.ckpt does not exist: give a checkpoint",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_config_is_named_before_any_model_loads(
    overrides: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(HubModel, "load_model", no_model)
    with pytest.raises(ConfigError, match=message):
        run(compose_config(overrides, run_dir=tmp_path))


def test_a_monitor_typo_fails_before_the_first_training_step(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"checkpoint.monitor='val/los' is not a metric .* did you mean val/loss"
    ):
        run(compose_config(["checkpoint.monitor=val/los", "trainer.max_steps=2"], run_dir=tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # no step ran, nothing was saved


def test_monitors_the_objective_logs_are_accepted(tmp_path: Path) -> None:
    """A training metric, an objective-specific one (KTO's held-out accuracy comes from paired batches)."""
    common = ["trainer.max_steps=1", "trainer.limit_val_batches=1", "export.enabled=false"]
    run(compose_config([*common, "checkpoint.monitor=train/loss"], run_dir=tmp_path / "a"))
    run(
        compose_config(
            [*common, "algo=kto", "checkpoint.monitor=val/rewards/accuracies", "checkpoint.mode=max"],
            run_dir=tmp_path / "b",
        )
    )


def test_the_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    result = python_module("rlhf_lab", "trainer.accumulate_grad_batches=0", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "error: trainer.accumulate_grad_batches=0 must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_data_file_that_does_not_exist_is_named(tmp_path: Path) -> None:
    from rlhf_lab.data.formats import DataError

    with pytest.raises(DataError, match=r"^/nonexistent/train.jsonl: file not found$"):
        run(
            compose_config(
                ["data=jsonl", "data.source.train_path=/nonexistent/train.jsonl", "trainer.accelerator=cpu"],
                run_dir=tmp_path,
                tiny=False,
            )
        )


def test_evaluate_names_a_run_directory_that_does_not_exist(tmp_path: Path) -> None:
    result = python_module("rlhf_lab.evaluate", f"run_dir={tmp_path / 'nowhere'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: run_dir={tmp_path / 'nowhere'}: no such directory (give a finished run's directory: its "
        "config.yaml, export/)"
    )
