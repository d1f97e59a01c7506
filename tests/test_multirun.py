"""Hydra --multirun: sequential jobs share precomputed reference log-probs; launcher and Optuna configs compose."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.source.num_train=64",
    "data.source.num_eval=32",
    "trainer.max_steps=4",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "export.enabled=false",
]


def has_plugin(name: str) -> bool:
    return importlib.util.find_spec(f"hydra_plugins.{name}") is not None


def multirun(*overrides: str, sweep_dir: Path, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RLHF_LAB_CACHE": str(cache_dir)}
    return subprocess.run(
        [sys.executable, "-m", "rlhf_lab", "--multirun", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_multirun_jobs_compute_precomputed_reference_logps_once(tmp_path: Path) -> None:
    """3 jobs over algo.beta: the first computes the reference log-probs, the other two load them."""
    sweep_dir = tmp_path / "multirun"
    # A cache of its own: the session cache may already hold these log-probs.
    result = multirun(
        "algo=dpo",
        "algo.beta=0.05,0.1,0.5",
        "algo.reference=precomputed",
        sweep_dir=sweep_dir,
        cache_dir=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    computed, loaded = [], []
    for job, beta in enumerate((0.05, 0.1, 0.5)):
        job_dir = sweep_dir / str(job)
        assert OmegaConf.load(job_dir / "config.yaml").algo.beta == beta
        assert json.loads((job_dir / "summary.json").read_text())["trainer/global_step"] == 4.0
        log = (job_dir / "__main__.log").read_text()
        computed += [line.rsplit(" ", 1)[1] for line in log.splitlines() if "log-probs cached at" in line]
        loaded += [
            line.rsplit(" ", 1)[1] for line in log.splitlines() if "log-probs loaded from cache" in line
        ]
        if job == 0:
            assert len(computed) == 1 and not loaded
    assert len(computed) == 1 and len(loaded) == 2
    assert set(loaded) == set(computed)  # the same file
    assert list((tmp_path / "cache" / "reference").glob("*.pt")) == [Path(computed[0])]


# --- launchers -----------------------------------------------------------------------------------------------


def compose_hydra(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"), reason="needs .[launchers]")
def test_parallel_launcher_config_is_joblib_with_two_jobs() -> None:
    cfg = compose_hydra("hydra/launcher=parallel", "hydra.launcher.n_jobs=3")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert (launcher.n_jobs, launcher.prefer) == (3, "processes")
    assert compose_hydra("hydra/launcher=parallel").hydra.launcher.n_jobs == 2


@pytest.mark.skipif(not has_plugin("hydra_submitit_launcher"), reason="needs .[launchers]")
def test_slurm_launcher_config_is_submitit_with_placeholders() -> None:
    cfg = compose_hydra(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 4, 240)
    assert launcher.account is None and launcher.additional_parameters == {}


@pytest.mark.slow
@pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"), reason="needs .[launchers]")
def test_parallel_launcher_runs_two_jobs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multirun"
    result = multirun(
        "hydra/launcher=parallel",
        "algo.beta=0.05,0.5",
        sweep_dir=sweep_dir,
        cache_dir=Path(os.environ["RLHF_LAB_CACHE"]),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for job, beta in enumerate((0.05, 0.5)):
        assert OmegaConf.load(sweep_dir / str(job) / "config.yaml").algo.beta == beta
        assert "val/rewards/accuracies" in json.loads((sweep_dir / str(job) / "summary.json").read_text())


# --- Optuna (the hpo extra; not installed by .[dev]) -----------------------------------------------------------

OPTUNA = Path(CONF_DIR) / "hparams_search" / "dpo_optuna.yaml"


def test_optuna_search_space_names_real_config_keys() -> None:
    """The searched keys are overrides of the real config (checked without the plugin: low end of each)."""
    search = yaml.safe_load(OPTUNA.read_text())
    assert search["optimized_metric"] == "val/rewards/accuracies"
    sweeper = search["hydra"]["sweeper"]
    assert (sweeper["direction"], sweeper["sampler"]["seed"]) == ("maximize", 1234)
    assert sweeper["params"] == {
        "algo.beta": "interval(0.01, 0.5)",
        "optim.lr": "tag(log, interval(1e-4, 2e-3))",
        "algo.sft_beta": "choice(0.0, 0.1, 0.5, 1.0)",
    }
    cfg = compose_hydra("algo.beta=0.01", "optim.lr=1e-4", "algo.sft_beta=0.0")
    assert (cfg.algo.beta, cfg.optim.lr, cfg.algo.sft_beta) == (0.01, 1e-4, 0.0)


@pytest.mark.skipif(not has_plugin("hydra_optuna_sweeper"), reason="needs .[hpo]")
def test_optuna_search_composes_with_the_plugin() -> None:
    cfg = compose_hydra("+hparams_search=dpo_optuna", "hydra.sweeper.n_trials=3")
    assert cfg.optimized_metric == "val/rewards/accuracies"
    assert cfg.hydra.sweeper.n_trials == 3 and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.hydra.runtime.choices.algo == "dpo"
