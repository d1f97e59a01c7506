"""Shared fixtures: the real Hydra config, composed with tiny/CPU overrides."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from rlhf_lab.config import CONF_DIR as _CONF_DIR
from rlhf_lab.config import register_schemas

# The package's own configs (rlhf_lab/conf), as a string for Hydra's initialize_config_dir.
CONF_DIR = str(_CONF_DIR)

# Small enough for a CPU test, big enough that DPO has something to learn.
TINY_OVERRIDES = (
    "data.source.num_train=64",
    "data.source.num_eval=32",
    "data.batch_size=8",
    "data.eval_batch_size=32",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
)


@pytest.fixture(scope="session", autouse=True)
def _shared_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache of tiny models and reference log-probs for the whole session (built once per corpus)."""
    cache = os.environ.get("RLHF_LAB_TEST_CACHE") or str(tmp_path_factory.mktemp("rlhf_lab_cache"))
    os.environ["RLHF_LAB_CACHE"] = cache
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One thread per worker (and per CLI subprocess it starts): 2 workers x 2 threads thrash 2 cores.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    register_schemas()
    return cache


def compose_config(
    overrides: Sequence[str] = (), run_dir: Path | None = None, tiny: bool = True
) -> DictConfig:
    """Compose ``rlhf_lab/conf/config.yaml`` as the CLI would, with the tiny/CPU test overrides first."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=[*(TINY_OVERRIDES if tiny else ()), *overrides])
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir) if run_dir is not None else "unused-run-dir"
        cfg.paths.cache_dir = os.environ["RLHF_LAB_CACHE"]
    return cfg


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_config("algo=sft", ...)``: the composed config with its run directory under ``tmp_path``."""

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_config(overrides, run_dir=tmp_path / "run", tiny=tiny)

    return make


@pytest.fixture
def no_wandb_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No W&B API key anywhere (environment, netrc, home): `logger=wandb` must go offline by itself."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
