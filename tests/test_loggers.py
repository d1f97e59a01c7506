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


def test_truncate_metrics_drops_rows_from_the_resumed_step(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss\n0,0,0.7\n0,1,0.6\n0,2,0.5\n0,3,0.4\n")
    assert truncate_metrics(metrics, from_step=2) == 2
    assert pd.read_csv(metrics)["step"].tolist() == [0, 1]
    assert truncate_metrics(tmp_path / "absent.csv", from_step=0) == 0
