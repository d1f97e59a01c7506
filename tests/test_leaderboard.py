"""experiment=leaderboard: the job plan, the table arithmetic, and (slow) a real two-objective board."""

from __future__ import annotations

import json
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
from tests.test_notebook import execute

CSV_COLUMNS = [
    "task",
    "objective",
    "setting",
    "seeds",
    "failed",
    *(
        f"{column}_{stat}"
        for column in ("accuracy", "margin", "completion_tokens", "tokens_per_sec", "wall_time_s")
        for stat in ("mean", "low", "high")
    ),
    "val_accuracy_mean",
    "p_vs_dpo",
    "rank",
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
            "wall_time_s": [10.0, 11.0, 12.0, 20.0, 22.0],
        }
    ).assign(task="", setting="defaults")
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
    # Two seeds paired with DPO's (0, 1): differences -0.1, -0.2 -> t = -0.15 / (0.0707 / sqrt 2) = -3, 1 dof.
    assert board.iloc[1]["p_vs_dpo"] == pytest.approx(0.204833, abs=1e-5)
    assert math.isnan(dpo["p_vs_dpo"])
    # reward's interval (0.7 ± 0) lies below DPO's (0.652, 1.148)? No: they overlap, so both rank 1.
    assert board["rank"].tolist() == [1, 1]
    text = markdown(board, 0.95, samples=16)
    lines = text.splitlines()
    assert lines[0] == (
        "| objective | seeds | setting | val accuracy | reward margin | completion length (tokens) | tokens/s "
        "| wall time (s) | p vs DPO | rank |"
    )
    assert (
        lines[2]
        == "| dpo | 3 | defaults | 0.900 ± 0.248 | 2.000 ± 2.484 | 12.0 ± 5.0 | 110 ± 25 | 11 ± 2 | – | 1 |"
    )
    assert (
        lines[3].startswith("| reward | 2 (1 failed) | defaults | 0.700 ± 0.000 |") and "| n/a |" in lines[3]
    )
    assert lines[3].endswith("| 0.205 | 1 |")
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
    for column in ("accuracy", "margin", "completion_tokens", "tokens_per_sec", "wall_time_s"):
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
    assert md[0].startswith("| objective | seeds | setting | val accuracy")
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
         "generation/mean_new_tokens": [math.nan], "tokens_per_sec": [1.0], "wall_time_s": [1.0]}
    ).assign(task="", setting="defaults")  # fmt: skip
    board = table(runs, jobs, codes, 0.95)
    assert board["seeds"].tolist() == [1] and board["failed"].tolist() == [1]
    assert collect(jobs[1:], codes).empty


def test_plan_tunes_grid_points_on_the_tuning_seeds_then_runs_the_chosen_one_on_every_seed(
    tmp_path: Path,
) -> None:
    cfg = compose_config(
        [
            "experiment=leaderboard",
            "leaderboard.objectives=[dpo,simpo]",
            "leaderboard.seeds=[0,1,2]",
            "leaderboard.grid={dpo: {algo.beta: [0.1, 0.5]}}",
            "leaderboard.tasks={control: ['data=suite', 'data.source.task=control'], in_context: ['data=suite']}",
        ],
        tiny=False,
    )
    tuning = plan(cfg, tmp_path, ["trainer.max_epochs=1"])
    assert [job.name for job in tuning] == [
        "control/dpo_beta-0.1_s0",
        "control/dpo_beta-0.5_s0",
        "control/simpo_s0",  # no grid: every seed at once
        "control/simpo_s1",
        "control/simpo_s2",
        "in_context/dpo_beta-0.1_s0",
        "in_context/dpo_beta-0.5_s0",
        "in_context/simpo_s0",
        "in_context/simpo_s1",
        "in_context/simpo_s2",
    ]
    job = tuning[1]
    assert job.run_dir == tmp_path / "runs" / "control" / "dpo_beta-0.5_s0"
    # The objective, the seed, the command line's, the task's, the grid point's, the run directory.
    assert job.command[3:] == [
        "algo=dpo",
        "seed=0",
        "trainer.max_epochs=1",
        "data=suite",
        "data.source.task=control",
        "algo.beta=0.5",
        f"hydra.run.dir={job.run_dir}",
    ]
    chosen = {
        (t, o): ({"algo.beta": 0.5} if o == "dpo" else {})
        for t in ("control", "in_context")
        for o in ("dpo", "simpo")
    }
    final = plan(cfg, tmp_path, [], chosen)
    assert [job.name for job in final][:3] == [
        "control/dpo_beta-0.5_s0",
        "control/dpo_beta-0.5_s1",
        "control/dpo_beta-0.5_s2",
    ]
    assert len(final) == 12

    cfg.leaderboard.grid = {"dpo": {"algo.beta": []}}
    with pytest.raises(ConfigError, match=r"leaderboard.grid.dpo.algo.beta"):
        plan(cfg, tmp_path, [])


def test_variants_name_objectives_with_their_overrides(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "experiment=leaderboard",
            "leaderboard.objectives=[dpo,rdpo]",
            "leaderboard.seeds=[0]",
            "leaderboard.variants={rdpo: ['algo=dpo', 'algo.loss_type=robust', 'algo.label_smoothing=0.2']}",
        ],
        tiny=False,
    )
    jobs = plan(cfg, tmp_path, [])
    assert jobs[1].name == "rdpo_s0"
    assert jobs[1].command[3:7] == ["algo=dpo", "algo.loss_type=robust", "algo.label_smoothing=0.2", "seed=0"]
    cfg.leaderboard.variants = {"rdpo": ["algo.loss_type=robust"]}
    with pytest.raises(ConfigError, match=r"leaderboard.variants.rdpo.*exactly one algo="):
        plan(cfg, tmp_path, [])


def test_choose_settings_takes_the_best_mean_validation_accuracy(tmp_path: Path) -> None:
    import json

    from rlhf_lab.leaderboard import choose_settings

    jobs, codes = [], {}
    scores = {0.1: [0.6, 0.9], 0.5: [0.8, 0.8], 1.0: [math.nan, math.nan]}  # 0.75, 0.8, nothing finished
    for beta, values in scores.items():
        for seed, value in enumerate(values):
            job = Job("dpo", seed, tmp_path / f"b{beta}_s{seed}", [], "t", {"algo.beta": beta})
            job.run_dir.mkdir()
            if not math.isnan(value):
                (job.run_dir / "summary.json").write_text(json.dumps({"val/rewards/accuracies": value}))
                (job.run_dir / "config.yaml").write_text("algo:\n  _target_: x\n")
            codes[job.name] = 0 if not math.isnan(value) else 1
            jobs.append(job)
    assert choose_settings(jobs, codes) == {("t", "dpo"): {"algo.beta": 0.5}}
    assert choose_settings(jobs, codes, mode="min") == {("t", "dpo"): {"algo.beta": 0.1}}
    with pytest.raises(ConfigError, match="leaderboard.mode"):
        choose_settings(jobs, codes, mode="best")


def test_ranks_tie_where_intervals_overlap() -> None:
    from rlhf_lab.leaderboard import ranks

    means = [0.9, 0.85, 0.6, 0.5, math.nan]
    lows = [0.85, 0.7, 0.55, math.nan, math.nan]
    highs = [0.95, 1.0, 0.65, math.nan, math.nan]
    # 0.85 overlaps 0.9; 0.6's interval is below both; the one-seed 0.5 is below all three intervals.
    assert ranks(means, lows, highs) == [1, 1, 3, 4, 0]


@pytest.mark.slow
def test_suite_leaderboard_tunes_on_val_reports_test_and_restarts(tmp_path: Path) -> None:
    overrides = [
        "experiment=leaderboard",
        "leaderboard.objectives=[dpo,simpo]",
        "leaderboard.seeds=[0,1]",
        "leaderboard.tasks={control: ['data=suite', 'data.source.task=control'], "
        "noise: ['data=suite', 'data.source.task=label_noise', 'data.source.flip_rate=0.1']}",
        "leaderboard.grid={dpo: {algo.beta: [0.1, 0.5]}}",
        "leaderboard.samples=2",
        "leaderboard.max_new_tokens=8",
        "leaderboard.max_parallel=2",
        "data.source.num_train=64",
        "data.source.num_eval=32",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
    ]
    result = cli(*overrides, run_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    board, runs = analysis.load_leaderboard(tmp_path)
    assert list(board.columns) == CSV_COLUMNS
    assert list(zip(board["task"], board["objective"], strict=True)) == [
        ("control", "dpo"), ("control", "simpo"), ("noise", "dpo"), ("noise", "simpo")
    ]  # fmt: skip
    assert board["seeds"].tolist() == [2, 2, 2, 2]
    # DPO's setting is the grid point with the better validation accuracy on the tuning seed (0).
    for task in ("control", "noise"):
        tuning = runs[(runs["task"] == task) & (runs["objective"] == "dpo") & (runs["seed"] == 0)]
        assert sorted(tuning["setting"]) == ["algo.beta=0.1", "algo.beta=0.5"]
        best = tuning.sort_values("val/rewards/accuracies", ascending=False, kind="stable")
        picked = board[(board["task"] == task) & (board["objective"] == "dpo")]["setting"].item()
        assert (
            tuning[tuning["setting"] == picked]["val/rewards/accuracies"].item()
            == best.iloc[0]["val/rewards/accuracies"]
        )
        # Only the chosen point trained on seed 1, and only chosen runs are in the table.
        seed1 = runs[(runs["task"] == task) & (runs["objective"] == "dpo") & (runs["seed"] == 1)]
        assert seed1["setting"].tolist() == [picked]
        assert runs[(runs["task"] == task) & (runs["objective"] == "dpo")]["chosen"].sum() == 2
    # Reported on each task's test split, evaluated once per chosen run.
    chosen = runs[runs["chosen"]]
    for run_dir in chosen["run_dir"]:
        evaluated = json.loads((Path(run_dir) / "eval" / "metrics.json").read_text())
        assert 0.0 <= evaluated["test/rewards/accuracies"] <= 1.0
        assert evaluated["generation/samples"] == 2
    mean = chosen.groupby(["task", "objective"], sort=False)["test/rewards/accuracies"].mean()
    assert board["accuracy_mean"].tolist() == pytest.approx(mean.tolist())
    assert (board["rank"] >= 1).all() and board["wall_time_s_mean"].gt(0).all()
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.startswith("test accuracy (rank within the task):") and "### noise" in md
    assert "| objective | control | noise |" in md
    assert_png(tmp_path / "heatmap.png")

    # The notebook reads it.
    nb = execute({"runs_dir": str(tmp_path), "out_dir": str(tmp_path / "figures")}, cwd=tmp_path)
    printed = "".join(
        output.get("text", "") for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "leaderboard: 2 task(s) x 2 objectives, 8 reported runs" in printed
    assert_png(tmp_path / "figures" / "heatmap.png")

    # Run again in the same directory: every run is kept, the table is the same.
    again = cli(*overrides, run_dir=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "leaderboard: training" not in again.stdout
    pd.testing.assert_frame_equal(analysis.load_leaderboard(tmp_path)[0], board)


def test_train_all_resumes_interrupted_runs_and_records_wall_time(tmp_path: Path) -> None:
    """Jobs whose processes are stand-ins: a finished run is kept, an interrupted one gets resume=true."""
    from rlhf_lab.leaderboard import TIMING_FILE, train_all

    def job(name: str, code: int) -> Job:
        run_dir = tmp_path / name
        script = (
            "import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(exist_ok=True); "
            "(d / 'argv.json').write_text(json.dumps(sys.argv[2:])); "
            f"(d / 'summary.json').write_text('{{}}') if {code} == 0 else None; sys.exit({code})"
        )
        return Job("dpo", 0, run_dir, [sys.executable, "-c", script, str(run_dir)], name)

    fresh, interrupted, finished, broken = (
        job("fresh", 0),
        job("interrupted", 0),
        job("finished", 0),
        job("broken", 3),
    )
    (interrupted.run_dir / "checkpoints").mkdir(parents=True)
    finished.run_dir.mkdir()
    (finished.run_dir / "summary.json").write_text("{}")
    codes = train_all([fresh, interrupted, finished, broken], max_parallel=2)
    assert codes == {fresh.name: 0, interrupted.name: 0, finished.name: 0, broken.name: 3}
    assert json.loads((fresh.run_dir / "argv.json").read_text()) == []
    assert json.loads((interrupted.run_dir / "argv.json").read_text()) == ["resume=true"]
    assert not (finished.run_dir / "argv.json").exists()  # kept, not retrained
    assert json.loads((fresh.run_dir / TIMING_FILE).read_text())["wall_time_s"] > 0
    assert not (broken.run_dir / TIMING_FILE).exists()
