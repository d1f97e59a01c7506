"""experiment=leaderboard: the job plan, the table arithmetic, and (slow) a real two-objective board."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from rlhf_lab import analysis
from rlhf_lab.errors import ConfigError
from rlhf_lab.leaderboard import Job, collect, forwardable, markdown, plan, table
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
        for column in (
            "accuracy",
            "generation_accuracy",
            "answer_length",
            "margin",
            "completion_tokens",
            "tokens_per_sec",
            "wall_time_s",
        )
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
    assert md[0] == "Start: random init (every run from the command line's model)."
    assert md[2].startswith("| objective | seeds | setting | val accuracy")
    assert [line.split(" | ")[0] for line in md[4:6]] == ["| dpo", "| simpo"]
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
                summary = {"val/rewards/accuracies": value, "run/complete": True}
                (job.run_dir / "summary.json").write_text(json.dumps(summary))
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
    assert md.startswith("Start: random init") and "### noise" in md
    assert "\ntest accuracy (rank within the task):" in md
    assert "\ntest generation accuracy (greedy completions giving the right answer):" in md
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
            f"(d / 'summary.json').write_text('{{\"run/complete\": true}}') if {code} == 0 else None; "
            f"sys.exit({code})"
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
    (finished.run_dir / "summary.json").write_text('{"run/complete": true}')
    codes = train_all([fresh, interrupted, finished, broken], max_parallel=2)
    assert codes == {fresh.name: 0, interrupted.name: 0, finished.name: 0, broken.name: 3}
    assert json.loads((fresh.run_dir / "argv.json").read_text()) == []
    assert json.loads((interrupted.run_dir / "argv.json").read_text()) == ["resume=true"]
    assert not (finished.run_dir / "argv.json").exists()  # kept, not retrained
    assert json.loads((fresh.run_dir / TIMING_FILE).read_text())["wall_time_s"] > 0
    assert not (broken.run_dir / TIMING_FILE).exists()


# --- a kill of the parent at any point; one leaderboard per directory ---------------------------------------

#: A stand-in training run: records how it was started, writes a finished summary.json; in the job named by
#: HANG_IN it checkpoints, half-writes summary.json and hangs (the parent is killed there).
CHILD = """
import json, os, pathlib, sys, time
d, objective, seed = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
d.mkdir(parents=True, exist_ok=True)
with (d / "starts.txt").open("a") as f:
    f.write(" ".join(sys.argv[4:]) + "\\n")
if d.name == os.environ.get("HANG_IN") and not (d / "checkpoints").exists():
    (d / "checkpoints").mkdir()
    (d / "summary.json").write_text('{"val/rewards/accuracies": 0.99, "run/comp')
    (d / "hanging").write_text(str(os.getpid()))
    time.sleep(600)
accuracy = {"dpo": 0.7, "simpo": 0.6}[objective] + 0.1 * seed
summary = {"val/rewards/accuracies": accuracy, "val/rewards/margins": seed + 1.0, "run/diverged": 0.0}
(d / "summary.json").write_text(json.dumps({**summary, "run/complete": True}))
"""

#: A stand-in leaderboard: trains the stand-in jobs (`train_all`), then writes the table.
PARENT = """
import pathlib, sys
from rlhf_lab.leaderboard import Job, collect, table, train_all
out = pathlib.Path(sys.argv[1])
jobs = [
    Job(o, s, out / "runs" / f"{o}_s{s}", [sys.executable, "-c", sys.argv[2], str(out / "runs" / f"{o}_s{s}"), o, str(s)])
    for o in ("dpo", "simpo") for s in (0, 1)
]
codes = train_all(jobs)
table(collect(jobs, codes), jobs, codes, 0.95).to_csv(out / "board.csv", index=False)
"""


def _leaderboard(out: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", PARENT, str(out), CHILD],
        env={**os.environ, **env},
        start_new_session=True,  # its own process group: killed with its running child, as by a preemption
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_leaderboard_killed_during_a_run_redoes_only_unfinished_runs_and_ends_with_the_same_table(
    tmp_path: Path,
) -> None:
    """SIGKILL of the parent (and its running child) while dpo_s1 trains, its summary.json half-written: the
    re-run keeps dpo_s0, resumes dpo_s1, trains the simpo runs, and the table equals an uninterrupted one."""
    whole = _leaderboard(tmp_path / "whole")
    assert whole.wait(timeout=300) == 0
    cut = tmp_path / "cut"
    killed = _leaderboard(cut, HANG_IN="dpo_s1")
    deadline = time.monotonic() + 120
    while not (cut / "runs" / "dpo_s1" / "hanging").exists():
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert not (cut / "board.csv").exists()
    again = _leaderboard(cut)
    assert again.wait(timeout=300) == 0
    starts = {
        d.name: (d / "starts.txt").read_text().splitlines() for d in (cut / "runs").iterdir() if d.is_dir()
    }
    assert starts == {"dpo_s0": [""], "dpo_s1": ["", "resume=true"], "simpo_s0": [""], "simpo_s1": [""]}
    timing = [column for column in CSV_COLUMNS if column.startswith(("wall_time", "tokens_per_sec"))]
    board = pd.read_csv(cut / "board.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(board, pd.read_csv(tmp_path / "whole" / "board.csv").drop(columns=timing))
    assert board["accuracy_mean"].tolist() == pytest.approx([0.75, 0.65])


@pytest.mark.multiprocess
def test_a_child_run_dies_with_its_parent(tmp_path: Path) -> None:
    """A child started with `child_env` (as the leaderboard, stages and sweeps start theirs) that called
    `die_with_parent` is gone once its parent is SIGKILLed alone: no orphan trains on."""
    child = (
        "import os, pathlib, sys, time; from rlhf_lab.leaderboard.resumable import die_with_parent; "
        "die_with_parent(); pathlib.Path(sys.argv[1]).write_text(str(os.getpid())); time.sleep(600)"
    )
    parent = (
        "import subprocess, sys; from rlhf_lab.leaderboard.resumable import child_env; import os; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}, sys.argv[1]], env={{**os.environ, **child_env()}})"
        "; import time; time.sleep(600)"
    )
    ready = tmp_path / "child.pid"
    started = subprocess.Popen([sys.executable, "-c", parent, str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(ready.read_text())
    started.kill()
    started.wait()
    while _running(pid):
        assert time.monotonic() < deadline, f"child {pid} outlived its parent"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a killed orphan waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_second_leaderboard_on_the_same_directory_is_refused_and_a_stale_lock_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from rlhf_lab.errors import RunStopped
    from rlhf_lab.leaderboard import DirectoryInUse, directory_lock, run_leaderboard

    with directory_lock(tmp_path, "leaderboard") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(DirectoryInUse) as refused, directory_lock(tmp_path, "leaderboard"):
            pass
    assert isinstance(refused.value, RunStopped)
    assert str(refused.value) == (
        f"leaderboard: {tmp_path} is in use by process {os.getpid()} (its lock: {lock}); wait for it to finish, "
        "or give this leaderboard another directory (hydra.run.dir=...)"
    )
    assert not lock.exists()  # released
    # The whole leaderboard is refused before it writes anything, while another process holds the lock.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        cfg = compose_config(["experiment=leaderboard"], run_dir=tmp_path, tiny=False)
        with pytest.raises(DirectoryInUse, match=f"in use by process {other.pid}"):
            run_leaderboard(cfg)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".leaderboard.lock"]
    finally:
        other.kill()
        other.wait()
    # Its owner gone (killed), the lock is taken over with a warning.
    with caplog.at_level("WARNING"), directory_lock(tmp_path, "leaderboard"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the lock {lock} of process {other.pid}, which is gone" in caplog.text
    assert not lock.exists()


def test_a_half_written_summary_is_never_counted(tmp_path: Path) -> None:
    from rlhf_lab.leaderboard import run_finished, succeeded

    job = Job("dpo", 0, tmp_path / "dpo_s0", [])
    job.run_dir.mkdir()
    for text in ('{"val/rewards/accuracies": 0.9, "run/comp', '{"val/rewards/accuracies": 0.9}', "[]"):
        (job.run_dir / "summary.json").write_text(text)
        assert not run_finished(job.run_dir) and not succeeded(job, {job.name: 0})
        assert collect([job], {job.name: 0}).empty
    (job.run_dir / "summary.json").write_text('{"val/rewards/accuracies": 0.9, "run/complete": true}')
    assert run_finished(job.run_dir) and succeeded(job, {job.name: 0})


def test_a_failed_run_is_named_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rlhf_lab.leaderboard import failures, train_all

    job = Job("dpo", 3, tmp_path / "runs" / "dpo_s3", [sys.executable, "-c", "import sys; sys.exit(7)"])
    with caplog.at_level("ERROR"):
        codes = train_all([job])
    log_file = tmp_path / "runs" / "dpo_s3.log"
    line = f"dpo seed 3 (dpo_s3) failed (exit 7); its output is in {log_file}"
    assert failures([job], codes) == [line]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"leaderboard: [1/1] {line}"
    ]


def test_a_leaderboard_with_a_failed_run_writes_its_table_then_names_the_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training faked: dpo_s0 fails (exit 1), dpo_s1 never finishes cleanly either (killed by SIGKILL)."""
    import rlhf_lab.leaderboard as leaderboard
    from rlhf_lab.leaderboard import ChildFailed, run_leaderboard

    codes = {"dpo_s0": 1, "dpo_s1": -9}
    monkeypatch.setattr(
        leaderboard, "train_all", lambda jobs, *args: {job.name: codes[job.name] for job in jobs}
    )
    monkeypatch.setattr(leaderboard, "evaluate_all", lambda *args: None)
    cfg = compose_config(
        ["experiment=leaderboard", "leaderboard.objectives=[dpo]", "leaderboard.seeds=[0,1]"],
        run_dir=tmp_path,
        tiny=False,
    )
    with pytest.raises(ChildFailed) as failed:
        run_leaderboard(cfg)
    assert str(failed.value) == (
        f"leaderboard: 2 run(s) failed, counted as failed in {tmp_path / 'leaderboard.md'}: dpo seed 0 (dpo_s0) "
        f"failed (exit 1); its output is in {tmp_path / 'runs' / 'dpo_s0.log'} (and 1 more, above); run the same "
        "command again to retry them"
    )
    assert pd.read_csv(tmp_path / "leaderboard.csv")["failed"].tolist() == [2]
    assert not (tmp_path / ".leaderboard.lock").exists()


@pytest.mark.multiprocess
def test_a_waiting_lock_waits_for_its_owner_then_takes_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What two stage chains sharing an SFT stage do (a parallel --multirun): the second waits, one line."""
    import threading

    from rlhf_lab.leaderboard import directory_lock

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    threading.Thread(target=owner.wait, daemon=True).start()  # reaped when it exits, as its parent would
    (tmp_path / ".stage.lock").write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname()}))
    started = time.monotonic()
    with directory_lock(tmp_path, "stage", wait=True, poll=0.1) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert owner.poll() is not None and time.monotonic() - started > 0.5
    assert (
        capsys.readouterr().out
        == f"stage: {tmp_path} is in use by process {owner.pid}: waiting for it to finish\n"
    )


@pytest.mark.slow
def test_suite_trains_one_sft_start_per_task_and_every_run_starts_from_and_is_referenced_to_it(
    tmp_path: Path,
) -> None:
    """experiment=suite's supervised start (leaderboard.start=sft) on one task, 2 objectives (DPO and a named
    variant) x 2 seeds: one SFT stage, every run from its export with it as the reference, greedy answers
    scored on the test split, and the same board again reuses everything. (experiment=leaderboard: a tasks
    override would merge into the suite's six.)"""
    overrides = [
        "experiment=leaderboard",
        "leaderboard.start=sft",
        "leaderboard.objectives=[dpo,cdpo]",
        "leaderboard.variants={cdpo: ['algo=dpo', 'algo.label_smoothing=0.2']}",
        "leaderboard.seeds=[0,1]",
        "leaderboard.tasks={control: ['data=suite', 'data.source.task=control']}",
        "leaderboard.grid=null",
        "leaderboard.sft_overrides=['trainer.max_steps=6']",
        "leaderboard.samples=4",
        "leaderboard.max_new_tokens=8",
        "leaderboard.max_parallel=2",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.source.num_train=64",
        "data.source.num_eval=16",
        "data=suite",
        "data.source.num_test=16",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
    ]
    board_dir = tmp_path / "board"
    result = cli(*overrides, run_dir=board_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    # One SFT stage for the task, trained once, in the stage cache.
    (sft_dir,) = (tmp_path / "cache" / "stages").iterdir()
    assert sft_dir.name.startswith("sft-") and (sft_dir / "summary.json").is_file()
    assert result.stdout.count("stages: training sft") == 1
    sft_config = OmegaConf.load(sft_dir / "config.yaml")
    assert sft_config.algo._target_.endswith("SFT") and sft_config.trainer.max_steps == 6
    # Every objective run (both objectives, both seeds) names its export and started from it: at the first
    # step its policy is its reference, so every implicit reward is exactly 0.
    runs = sorted((board_dir / "runs" / "control").glob("*_s?"))
    assert [run.name for run in runs] == ["cdpo_s0", "cdpo_s1", "dpo_s0", "dpo_s1"]
    for run in runs:
        config = OmegaConf.load(run / "config.yaml")
        assert config.model.name_or_path == str(sft_dir / "export"), run
        first = pd.read_csv(run / "metrics.csv").dropna(subset=["train/rewards/margins"]).iloc[0]
        for key in ("train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins"):
            assert abs(first[key]) < 1e-6, (run.name, key, first[key])
        # Its greedy test answers are scored (`rlhf_lab.evaluate.evaluate`, what python -m rlhf_lab.evaluate
        # runs): the accuracy is the share of samples marked correct.
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 4
        assert metrics["test/generation_accuracy"] == sum(s["correct"] for s in samples) / 4
    assert OmegaConf.load(runs[0] / "config.yaml").algo.label_smoothing == 0.2
    board = pd.read_csv(board_dir / "leaderboard.csv")
    assert board["generation_accuracy_mean"].between(0, 1).all() and board["seeds"].tolist() == [2, 2]
    md = (board_dir / "leaderboard.md").read_text()
    assert md.startswith("Start: supervised") and f"- control: `{sft_dir / 'export'}`; test generation" in md
    assert "| generation accuracy |" in md

    # The same board again: the SFT stage and every run are reused, nothing trains.
    stamp = (sft_dir / "summary.json").stat().st_mtime
    again = cli(*overrides, run_dir=board_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "leaderboard: training" not in again.stdout and "stages: training" not in again.stdout
    assert f"stages: sft already trained in {sft_dir}, reused" in again.stdout
    assert (sft_dir / "summary.json").stat().st_mtime == stamp


def test_a_wrong_start_is_named_before_anything_runs(tmp_path: Path) -> None:
    from rlhf_lab.leaderboard import run_leaderboard

    cfg = compose_config(["experiment=suite", "leaderboard.start=pretrained"], run_dir=tmp_path, tiny=False)
    with pytest.raises(
        ConfigError, match=r"leaderboard.start='pretrained' is not supported; choose one of: sft, scratch"
    ):
        run_leaderboard(cfg)
    cfg = compose_config(["experiment=suite", "leaderboard.sft_overrides=3"], run_dir=tmp_path, tiny=False)
    with pytest.raises(ConfigError, match=r"leaderboard.sft_overrides=3: give a list of overrides"):
        run_leaderboard(cfg)
    assert not list(tmp_path.iterdir())


def test_runs_of_a_supervised_start_take_its_model_not_the_command_lines() -> None:
    cfg = compose_config(
        ["experiment=leaderboard", "leaderboard.objectives=[dpo]", "leaderboard.seeds=[0]"], tiny=False
    )
    start = ["model=hub", "model.name_or_path=/cache/stages/sft-abc/export"]
    forwarded = ["model.hidden_size=32", "trainer.max_steps=4"]
    (job,) = plan(cfg, Path("out"), forwarded, starts={"": start})
    assert "model.hidden_size=32" not in job.command and "trainer.max_steps=4" in job.command
    assert all(o in job.command for o in start)
    (scratch,) = plan(cfg, Path("out"), forwarded)
    assert "model.hidden_size=32" in scratch.command and "model=hub" not in scratch.command


def test_separated_pairs_are_the_non_overlapping_intervals() -> None:
    from rlhf_lab.leaderboard.stats import separated_pairs

    board = pd.DataFrame(
        {
            "task": ["a", "a", "a", "b", "b"],
            "objective": ["dpo", "ipo", "cpo", "dpo", "ipo"],
            # a: dpo [0.8, 0.9] lies above cpo [0.5, 0.7], ipo [0.6, 0.85] overlaps both; b: one seed (no CI).
            "accuracy_low": [0.8, 0.6, 0.5, math.nan, 0.2],
            "accuracy_high": [0.9, 0.85, 0.7, math.nan, 0.3],
        }
    )
    assert separated_pairs(board) == [("a", "dpo", "cpo")]
