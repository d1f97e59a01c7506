"""rlhf_lab is an installable package: its Hydra configs ship inside it (rlhf_lab/conf), a built wheel runs
from any directory in a fresh environment, and a user adds config options from a directory of their own."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import rlhf_lab
from rlhf_lab.config import CONF_DIR, user_config_dirs
from tests.conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[1]

# A user's option built on one of ours: DPO with other hyperparameters, from their own config directory.
MY_DPO = "defaults:\n  - dpo\n  - _self_\nbeta: 0.37\nlabel_smoothing: 0.05\n"
# A user's option with a schema of its own (their own loss function), which the CLI registers.
MY_LOSS = (
    "defaults:\n  - /schema/algo/my_margin@_here_\n  - _self_\n"
    "_target_: rlhf_lab.objectives.PairwiseObjective\n"
    "loss: tests.custom_losses.squared_margin_loss\ntau: 2.0\nreference: auto\n"
)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment (the test cache, offline W&B) without a PYTHONPATH that could reach the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, **extra}


def run(command: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_configs_live_in_the_package() -> None:
    assert Path(rlhf_lab.__file__).resolve().parent / "conf" == CONF_DIR
    assert (CONF_DIR / "config.yaml").is_file()
    assert (CONF_DIR / "hydra" / "help" / "rlhf_lab.yaml").is_file()
    assert not (REPO / "conf").exists(), "a second copy of the configs beside the package"


def test_user_config_dirs_reads_the_command_line(tmp_path: Path) -> None:
    a, b, c = (tmp_path / name for name in "abc")
    for path in (a, b, c):
        path.mkdir()
    argv = [
        "--config-dir",
        str(a),
        f"--config-dir={b}",
        f"hydra.searchpath=[file://{c},pkg://other.conf,file://{tmp_path / 'missing'}]",
        "algo=dpo",
    ]
    assert user_config_dirs(argv) == [a, b, c]
    assert user_config_dirs(["-cd", str(a), "algo.beta=0.2"]) == [a]
    assert user_config_dirs(["algo=dpo"]) == []


def test_a_user_config_dir_adds_options_without_copying_ours(tmp_path: Path) -> None:
    """``--config-dir`` and ``hydra.searchpath`` add a user's own ``algo`` options beside the package's."""
    mine, own_loss = tmp_path / "my_conf", tmp_path / "my_loss_conf"
    (mine / "algo").mkdir(parents=True)
    (mine / "algo" / "my_dpo.yaml").write_text(MY_DPO)
    (own_loss / "algo").mkdir(parents=True)
    (own_loss / "algo" / "my_margin.yaml").write_text(MY_LOSS)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()

    # From a directory that is not the checkout; an option that builds on ours.
    result = run(
        [sys.executable, "-m", "rlhf_lab", "--config-dir", str(mine), "algo=my_dpo", "--cfg", "job"],
        elsewhere,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    algo = yaml.safe_load(result.stdout)["algo"]
    assert algo["beta"] == 0.37 and algo["label_smoothing"] == 0.05
    assert algo["loss"] == "rlhf_lab.losses.dpo_loss" and algo["loss_type"] == "sigmoid"

    # hydra.searchpath, and an option with a schema of its own (typed: algo.tau is a float it knows).
    result = run(
        [
            sys.executable,
            "-m",
            "rlhf_lab",
            f"hydra.searchpath=[file://{own_loss}]",
            "algo=my_margin",
            "algo.tau=0.5",
            "--cfg",
            "job",
        ],
        elsewhere,
        PYTHONPATH=str(REPO),  # tests.custom_losses, the user's loss function
    )
    assert result.returncode == 0, result.stderr[-3000:]
    algo = yaml.safe_load(result.stdout)["algo"]
    assert algo["loss"] == "tests.custom_losses.squared_margin_loss" and algo["tau"] == 0.5


def build_wheel(out: Path) -> Path:
    """A wheel built from a copy of the sources (the build writes build/ and *.egg-info beside them)."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "rlhf_lab", src / "rlhf_lab", ignore=shutil.ignore_patterns("__pycache__"))
    dist = out / "dist"
    result = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            ".",
        ],
        src,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = dist.glob("rlhf_lab-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_runs_from_any_directory_in_a_fresh_environment(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "build")
    # Every config file is in it (Hydra's help template included).
    shipped = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"rlhf_lab/{p.relative_to(CONF_DIR.parent).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert configs and configs <= shipped, sorted(configs - shipped)

    # A fresh venv. The wheel goes in first, by this pip pointed at that interpreter (so it sees only the fresh
    # venv, never touching this one's editable install); then a .pth lends it this venv's dependencies. A
    # .pth path entry does not run the .pth files in that directory, so the editable finder stays out.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    result = run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh_site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
    )
    (Path(fresh_site.stdout.strip()) / "_rlhf_lab_test_deps.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    where = run([str(python), "-c", "import rlhf_lab, torch; print(rlhf_lab.__file__)"], cwd)
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).resolve().is_relative_to(venv.resolve()), where.stdout
    assert not Path(where.stdout.strip()).resolve().is_relative_to(REPO)

    help_ = run([str(python), "-m", "rlhf_lab", "--help"], cwd)
    assert help_.returncode == 0, help_.stderr[-3000:]
    assert "== Config groups (group=option) ==" in help_.stdout
    assert "algo: " in help_.stdout and "dpo" in help_.stdout

    # The console script trains a few steps, with an option from a user's own config directory.
    mine = tmp_path / "my_conf"
    (mine / "algo").mkdir(parents=True)
    (mine / "algo" / "my_dpo.yaml").write_text(MY_DPO)
    run_dir = tmp_path / "run"
    result = run(
        [
            str(venv / "bin" / "rlhf-lab"),
            "--config-dir",
            str(mine),
            "algo=my_dpo",
            *TINY_OVERRIDES,
            "trainer.max_steps=5",
            "trainer.limit_val_batches=1",
            "export.enabled=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "val/loss" in summary
    assert (run_dir / "metrics.csv").is_file()
    composed = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "beta: 0.37" in composed
    assert not (cwd / "outputs").exists() and not (REPO / "rlhf_lab" / "conf" / "outputs").exists()
