"""Loggers write inside the run directory: CSV always, TensorBoard and offline W&B on request."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rlhf_lab.loggers import truncate_metrics
from rlhf_lab.train import run
from tests.conftest import compose_config

SHORT = ["trainer.max_steps=2", "trainer.limit_val_batches=1"]


def test_tensorboard_writes_event_files_beside_the_csv(tmp_path: Path) -> None:
    run(compose_config(["logger=tensorboard", *SHORT], run_dir=tmp_path))
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "train/loss" in pd.read_csv(tmp_path / "metrics.csv").columns


def test_wandb_without_a_key_runs_offline_inside_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_wandb_login: None
) -> None:
    caller_cwd = tmp_path / "cwd"
    caller_cwd.mkdir()
    monkeypatch.chdir(caller_cwd)
    run_dir = tmp_path / "run"
    result = run(compose_config(["logger=wandb", "logger.wandb.project=tests", *SHORT], run_dir=run_dir))
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("run-*.wandb"))
    assert not (caller_cwd / "wandb").exists()
    assert result.summary["val/loss"] > 0


def test_truncate_metrics_keeps_the_rows_a_checkpoint_saw_then_its_pending_row(tmp_path: Path) -> None:
    """Rows after the checkpoint are logged again by the resumed run; the checkpoint's own step, which
    Lightning logged only after saving it, is restored from the checkpoint; a half-written line is dropped."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss\n0,0,0.7\n0,1,0.6\n0,2,0.5\n0,3,0.4\n0,4,0.")
    pending = {"epoch": 0, "step": 2, "train/loss": 0.5, "train/lr": 0.01}
    assert truncate_metrics(metrics, rows=2, pending=pending) == 2
    frame = pd.read_csv(metrics)
    assert frame["step"].tolist() == [0, 1, 2]
    assert frame["train/lr"].isna().tolist() == [True, True, False]  # a new column: the header grows
    assert truncate_metrics(tmp_path / "absent.csv", rows=0) == 0
    assert not list(tmp_path.glob(".*tmp*"))  # rewritten through a temporary file, which is gone


def test_starting_over_moves_an_old_metrics_file_aside(tmp_path: Path) -> None:
    from rlhf_lab.loggers import archive_metrics

    metrics = tmp_path / "metrics.csv"
    for expected in ("metrics.1.csv", "metrics.2.csv"):
        metrics.write_text("epoch,step\n0,0\n")
        assert archive_metrics(metrics) == tmp_path / expected
        assert not metrics.exists()
    assert archive_metrics(metrics) is None


def test_wandb_mode_from_the_environment_wins_over_a_key(
    tmp_path: Path, no_wandb_login: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WANDB_MODE=offline with an API key set (a wrong one here): offline, no network, no AuthenticationError."""
    import wandb

    from rlhf_lab.loggers import resolve_wandb_mode, wandb_logger

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto") == "offline"
    logger = wandb_logger(str(tmp_path), project="tests")
    logger.experiment.log({"a": 1.0})
    wandb.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("online") == "online"  # an explicit choice stays


def test_wandb_with_a_key_but_no_reachable_server_goes_offline_with_one_warning(
    no_wandb_login: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    from rlhf_lab.loggers import resolve_wandb_mode

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        assert resolve_wandb_mode("auto") == "offline"
    assert time.monotonic() - started < 5
    assert caplog.text.count("is not reachable: logging offline") == 1
