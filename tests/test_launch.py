"""rlhf_lab.launch: the one place child runs start (summary, log, tail, environment, timeout) and the small
Hydra apps' plumbing; python -m rlhf_lab.leaderboard."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from rlhf_lab.launch import ChildError, child_command, run_child, run_dir_of
from tests.subprocesses import REPO, python_module

TRIVIAL = [
    "data.source.num_train=16",
    "data.source.num_eval=8",
    "trainer.max_steps=1",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "export.enabled=false",
]


def stand_in(script: str) -> list[str]:
    """A child that runs ``script`` (``sys.argv[1:]`` are the overrides run_child appends)."""
    return [sys.executable, "-c", "import json, os, pathlib, sys, time\n" + script]


def test_child_command_is_this_python_running_the_package() -> None:
    assert child_command(["algo=dpo", "seed=1"]) == [sys.executable, "-m", "rlhf_lab", "algo=dpo", "seed=1"]
    assert run_dir_of(["x", "hydra.run.dir=a", "hydra.run.dir=b/c"]) == Path("b/c")
    assert run_dir_of(["algo=dpo"]) is None


@pytest.mark.slow
def test_run_child_trains_a_trivial_run_and_reads_its_summary(tmp_path: Path) -> None:
    result = run_child([*TRIVIAL, f"hydra.run.dir={tmp_path / 'run'}"], log_file=tmp_path / "run.log")
    assert result.ok and result.returncode == 0, result.error("trivial run")
    assert result.run_dir == tmp_path / "run"  # from the hydra.run.dir= override
    assert result.summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result.summary["trainer/global_step"] == 1
    assert result.command[:3] == [sys.executable, "-m", "rlhf_lab"]
    assert "val/rewards/accuracies" in (tmp_path / "run.log").read_text()
    assert result.seconds > 0


def test_a_failing_run_gives_an_error_with_its_stderr_tail(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A config error: the child exits 2; its stderr reaches this process's and ends the error message."""
    result = run_child(["algo.beta=-1", f"hydra.run.dir={tmp_path / 'run'}"])
    assert (result.returncode, result.ok, result.summary) == (2, False, None)
    assert "algo.beta=-1.0 is out of range" in result.stderr_tail
    assert "algo.beta=-1.0 is out of range" in capfd.readouterr().err  # passed through as it came
    with pytest.raises(ChildError) as caught:
        result.check("dpo run", hint="fix the config")
    message = str(caught.value)
    first, *rest = message.splitlines()
    assert first == f"dpo run failed (exit 2) in {tmp_path / 'run'}; fix the config"
    assert rest[0] == "--- last output:" and "algo.beta=-1.0 is out of range" in rest[-1]


def test_a_logged_child_appends_and_its_tail_is_this_runs_output(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "job.log"
    log.parent.mkdir()
    log.write_text("an earlier attempt\n")
    script = "print('out', flush=True); print('boom', sys.argv[1:], file=sys.stderr); sys.exit(3)"
    result = run_child(["resume=true"], command=stand_in(script), log_file=log, append=True)
    assert result.returncode == 3 and result.summary is None and result.log_file == log
    assert log.read_text().startswith("an earlier attempt\nout\n")
    assert "boom ['resume=true']" in result.stderr_tail and "earlier" not in result.stderr_tail
    assert f"its output is in {log}" in result.error("job")
    # Without append the log starts over.
    run_child(command=stand_in("print('second')"), log_file=log)
    assert log.read_text() == "second\n"


def test_summary_env_threads_cwd_and_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    script = (
        "d = pathlib.Path(sys.argv[1].split('=', 1)[1]); d.mkdir(parents=True)\n"
        "(d / 'summary.json').write_text(json.dumps({'omp': os.environ.get('OMP_NUM_THREADS'),"
        " 'extra': os.environ.get('EXTRA'), 'cwd': os.getcwd()}))"
    )
    run_dir = tmp_path / "r"
    result = run_child(
        [f"hydra.run.dir={run_dir}"],
        command=stand_in(script),
        env={"EXTRA": "1"},
        threads=3,
        cwd=tmp_path,
        log_file=tmp_path / "r.log",
    )
    assert result.ok and result.run_dir == run_dir
    assert result.summary == {"omp": "3", "extra": "1", "cwd": str(tmp_path)}
    # A thread count the environment sets wins; an explicit run_dir wins over the command line's.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    again = run_child(
        [f"hydra.run.dir={tmp_path / 's'}"],
        command=stand_in(script),
        run_dir=tmp_path / "elsewhere",
        threads=3,
        log_file=tmp_path / "s.log",
    )
    assert again.ok and again.run_dir == tmp_path / "elsewhere" and again.summary is None
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["omp"] == "1"


def test_a_child_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    result = run_child(command=stand_in("time.sleep(60)"), timeout=0.5, log_file=tmp_path / "slow.log")
    assert result.timed_out and not result.ok and result.seconds < 30
    assert result.error("slow run").startswith("slow run timed out")


def test_only_launch_builds_a_child_command_line() -> None:
    """No module but rlhf_lab/launch.py spells ``-m rlhf_lab`` or starts a process itself."""
    spelled = re.compile(r"""["']-m["']\s*,\s*["']rlhf_lab["']""")
    offenders = []
    for path in sorted((REPO / "rlhf_lab").rglob("*.py")):
        if path.name == "launch.py":
            continue
        text = path.read_text()
        launcher = path.stem in ("stages", "sweep") or "leaderboard" in path.parts
        starts = re.search(r"subprocess\.(Popen|run|call)", text)
        if spelled.search(text) or (launcher and starts):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_leaderboard_module_runs_the_leaderboard_experiment() -> None:
    """``python -m rlhf_lab.leaderboard`` is ``python -m rlhf_lab experiment=leaderboard``."""
    result = python_module("rlhf_lab.leaderboard", "leaderboard.seeds=[5]", "--cfg", "job", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "leaderboard:" in result.stdout and "- 5" in result.stdout


def test_child_runs_search_the_users_config_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A parent started with ``--config-dir`` (or ``hydra.searchpath``) passes its directories on, so a
    user's own option used inside stages or a leaderboard is found by the children too."""
    from rlhf_lab.config import USER_CONFIG_DIRS_ENV
    from rlhf_lab.launch import child_command

    monkeypatch.delenv(USER_CONFIG_DIRS_ENV, raising=False)
    assert child_command(["algo=dpo"])[-1] == "algo=dpo"
    monkeypatch.setenv(USER_CONFIG_DIRS_ENV, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    command = child_command(["algo=my_dpo"])
    assert command[-2:] == [
        "algo=my_dpo",
        f"hydra.searchpath=[file://{tmp_path / 'a'},file://{tmp_path / 'b'}]",
    ]
    # A child given its own search path keeps it.
    assert child_command(["hydra.searchpath=[file:///x]"])[-1] == "hydra.searchpath=[file:///x]"
