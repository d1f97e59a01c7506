"""The run's own top-level keys (``seed``, ``resume``, ``ckpt_path``): untyped in ``conf/config.yaml`` (the root
config has no schema, so experiments may add keys), so their types are checked here, before anything reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rlhf_lab.errors import ConfigError


def check_run_keys(cfg: DictConfig) -> None:
    """A `ConfigError` for a ``seed`` that is not an integer, a ``resume`` that is not true/false, or a
    ``ckpt_path`` that does not exist: named before Lightning reads them (its own errors are tracebacks)."""
    seed: Any = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"seed={seed!r} must be an integer (e.g. seed=42)")
    resume: Any = cfg.get("resume", False)
    if not isinstance(resume, bool):
        raise ConfigError(f"resume={resume!r} must be true or false")
    ckpt_path: Any = cfg.get("ckpt_path")
    if ckpt_path:
        path = Path(str(ckpt_path)).expanduser()
        if not path.exists():
            raise ConfigError(
                f"ckpt_path={ckpt_path} does not exist: give a checkpoint file (or a DeepSpeed checkpoint "
                "directory), or resume=true to resume from the run directory's newest checkpoint"
            )
