"""experiment=leaderboard: the job plan, the table arithmetic, and (slow) a real two-objective board."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from rlhf_lab import analysis
from rlhf_lab.errors import ConfigError
from rlhf_lab.leaderboard import Job, forwardable, markdown, plan, table
from tests.conftest import compose_config
from tests.test_analysis import assert_png
from tests.test_e2e import cli

CSV_COLUMNS = ["objective", "seeds", "failed"] + [
    f"{column}_{stat}"
    for column in ("accuracy", "margin", "completion_tokens", "tokens_per_sec")
    for stat in ("mean", "low", "high")
]


def test_plan_one_job_per_objective_and_seed(tmp_path: Path) -> None:
    cfg = compose_config(
        ["experiment=leaderboard", "leaderboard.objectives=[dpo,orpo]", "leaderboard.seeds=[3,4]"], tiny=False
    )
    jobs = plan(cfg, tmp_path, ["trainer.max_steps=4"])
    assert [job.name for job in jobs] == ["dpo_s3", "dpo_s4", "orpo_s3", "orpo_s4"]
    orpo = jobs[2]
    assert orpo.run_dir == tmp_path / "runs" / "orpo_s3"
    assert orpo.command[:3] == [sys.executable, "-m", "rlhf_lab"]
    # Shared overrides first, the objective's recipe after, the run directory last.
    assert orpo.command[3:] == [
        "algo=orpo",
        "seed=3",
        "trainer.max_steps=4",
        "optim.lr=2e-3",
        f"hydra.run.dir={orpo.run_dir}",
    ]
    assert "optim.lr=2e-3" not in jobs[0].command

    cfg.leaderboard.objectives = ["dpo", "trpo"]
    with pytest.raises(ConfigError, match="unknown"):
        plan(cfg, tmp_path, [])


def test_forwarded_overrides_leave_out_what_the_leaderboard_sets() -> None:
    given = [
        "experiment=leaderboard",
        "leaderboard.seeds=[0]",
        "algo=simpo",
        "seed=3",
        "hydra.run.dir=x",
        "data.batch_size=4",
        "+trainer.max_time=1",
    ]
    assert forwardable(given) == ["data.batch_size=4", "+trainer.max_time=1"]


def test_table_and_markdown_arithmetic(tmp_path: Path) -> None:
    jobs = [Job(o, s, tmp_path / f"{o}_s{s}", []) for o in ("dpo", "reward") for s in (0, 1, 2)]
    runs = pd.DataFrame(
        {
            "objective": ["dpo", "dpo", "dpo", "reward", "reward"],
            "seed": [0, 1, 2, 0, 1],
            "val/rewards/accuracies": [0.8, 0.9, 1.0, 0.7, 0.7],
            "val/rewards/margins": [1.0, 2.0, 3.0, 0.5, 0.7],
            "generation/mean_new_tokens": [10.0, 12.0, 14.0, math.nan, math.nan],
            "tokens_per_sec": [100.0, 110.0, 120.0, 200.0, 220.0],
        }
    )
    codes = {"dpo_s0": 0, "dpo_s1": 0, "dpo_s2": 0, "reward_s0": 0, "reward_s1": 0, "reward_s2": 1}
    board = table(runs, jobs, codes, 0.95)
    assert list(board.columns) == CSV_COLUMNS
    assert board["objective"].tolist() == ["dpo", "reward"]
    assert board["seeds"].tolist() == [3, 2] and board["failed"].tolist() == [0, 1]
    # dpo accuracy: mean 0.9, sd 0.1, se 0.057735, t(0.975, 2) = 4.302653 -> half 0.248414
    dpo = board.iloc[0]
    assert (dpo["accuracy_mean"], dpo["accuracy_low"], dpo["accuracy_high"]) == pytest.approx(
        (0.9, 0.9 - 0.248414, 0.9 + 0.248414), abs=1e-6
    )
    assert math.isnan(board.iloc[1]["completion_tokens_mean"])
    text = markdown(board, 0.95, samples=16)
    lines = text.splitlines()
    assert (
        lines[0]
        == "| objective | seeds | held-out accuracy | reward margin | completion length (tokens) | tokens/s |"
    )
    assert lines[2] == "| dpo | 3 | 0.900 ± 0.248 | 2.000 ± 2.484 | 12.0 ± 5.0 | 110 ± 25 |"
    assert lines[3].startswith("| reward | 2 (1 failed) | 0.700 ± 0.000 |") and "| n/a |" in lines[3]
    assert analysis.ci_method() in text


@pytest.mark.slow
def test_leaderboard_two_objectives_two_seeds(tmp_path: Path) -> None:
    result = cli(
        "experiment=leaderboard",
        "leaderboard.objectives=[dpo,simpo]",
        "leaderboard.seeds=[0,1]",
        "leaderboard.samples=2",
        "leaderboard.max_new_tokens=8",
        "leaderboard.max_parallel=2",  # two training processes at a time (and a faster test)
        "data.source.num_train=64",
        "data.source.num_eval=32",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        run_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(board.columns) == CSV_COLUMNS
    assert board["objective"].tolist() == ["dpo", "simpo"]
    assert board["seeds"].tolist() == [2, 2] and board["failed"].tolist() == [0, 0]
    for column in ("accuracy", "margin", "completion_tokens", "tokens_per_sec"):
        for stat in ("mean", "low", "high"):
            assert board[f"{column}_{stat}"].map(math.isfinite).all(), (column, stat)
        assert (board[f"{column}_low"] <= board[f"{column}_high"]).all()
    assert board["accuracy_mean"].between(0, 1).all()
    assert (board["completion_tokens_mean"] <= 8).all()

    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(zip(runs["objective"], runs["seed"], strict=True)) == [
        ("dpo", 0),
        ("dpo", 1),
        ("simpo", 0),
        ("simpo", 1),
    ]
    # Every run trained on the forwarded budget, with its own seed.
    trained = analysis.load_runs(tmp_path / "runs")
    assert trained["trainer.max_steps"].tolist() == [4, 4, 4, 4]
    assert sorted(trained["seed"]) == [0, 0, 1, 1]
    assert set(trained["objective"]) == {"dpo", "simpo"}

    md = (tmp_path / "leaderboard.md").read_text().splitlines()
    assert md[0].startswith("| objective | seeds | held-out accuracy")
    assert [line.split(" | ")[0] for line in md[2:4]] == ["| dpo", "| simpo"]
    assert_png(tmp_path / "leaderboard.png")
    assert "| dpo | 2 |" in result.stdout


def test_a_diverged_run_is_failed_and_never_ranked(tmp_path: Path) -> None:
    import json

    from rlhf_lab.leaderboard import collect, diverged

    jobs = [Job("dpo", s, tmp_path / f"dpo_s{s}", []) for s in (0, 1)]
    for job, flag in zip(jobs, (0.0, 1.0), strict=True):
        job.run_dir.mkdir()
        (job.run_dir / "summary.json").write_text(json.dumps({"val/loss": None, "run/diverged": flag}))
    assert [diverged(job) for job in jobs] == [False, True]
    codes = {"dpo_s0": 0, "dpo_s1": 0}
    runs = pd.DataFrame(
        {"objective": ["dpo"], "seed": [0], "val/rewards/accuracies": [0.8], "val/rewards/margins": [1.0],
         "generation/mean_new_tokens": [math.nan], "tokens_per_sec": [1.0]}
    )  # fmt: skip
    board = table(runs, jobs, codes, 0.95)
    assert board["seeds"].tolist() == [1] and board["failed"].tolist() == [1]
    assert collect(jobs[1:], codes).empty
