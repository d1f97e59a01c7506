"""Preflight: before any download or model load, is every model available, and does the run fit its device?

`preflight` runs at the start of every training run (`rlhf_lab.train.run`), from the composed config alone:

1. Availability (`rlhf_lab.preflight.availability`): each model the run loads is a local directory, in the
   Hugging Face cache, or served by the hub (asked once, with a short timeout; never with ``HF_HUB_OFFLINE=1``).
   One that is none of these stops the run with a `ConfigError` naming it and the key to point at a local copy.
2. Memory (`rlhf_lab.preflight.memory`, its docstring has the formula): an estimate of what the run needs
   per device, against a GPU's memory or, without one, the RAM available. A run that cannot fit stops with
   the estimate broken down and the changes that would fit; one above `CLOSE` of the memory is warned about.

3. The environment (`rlhf_lab.preflight.environment`, its docstring has the rules): the run directory and the
   cache take a file, the run directory's filesystem has room for the checkpoints and the export, and a
   DeepSpeed run finds no stale extension-build lock (a live build is waited on, with a message).

The run's own top-level keys (``seed``, ``resume``, ``ckpt_path``: `rlhf_lab.preflight.keys`) are checked
first, whatever the settings.

Config: ``preflight.enabled`` (false: skip 1-3), ``preflight.memory_check`` (false: skip the estimate),
``preflight.device_memory_gib`` (compare with this many GiB per device instead of what is detected),
``preflight.disk_check`` (false: skip the writable and free-space checks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.errors import ConfigError
from rlhf_lab.models.hub import FirstRetryOnly, quiet_hub_retries
from rlhf_lab.preflight.availability import Located, locate_models
from rlhf_lab.preflight.environment import (
    check_free_space,
    check_writable,
    extensions_root,
    wait_for_build_locks,
)
from rlhf_lab.preflight.keys import check_run_keys
from rlhf_lab.preflight.memory import GIB, Estimate, Plan, estimate, fitting_options, gib
from rlhf_lab.preflight.plan import describe, plan_of, strategy_of

__all__ = [
    "Estimate",
    "FirstRetryOnly",
    "Located",
    "Plan",
    "estimate",
    "locate_models",
    "plan_of",
    "preflight",
]

log = logging.getLogger(__name__)

#: Above this share of the device's memory the run is warned about (allocator fragmentation, longer rows).
CLOSE = 0.85


def available_ram() -> float:
    """Bytes of RAM available to a new allocation now (``MemAvailable``)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return float(psutil.virtual_memory().available)


def device_budget(plan: Plan, override_gib: float | None) -> tuple[float, str]:
    """The bytes one device (a GPU, or this machine's RAM per process) has, and how to say it."""
    if override_gib is not None:
        return float(
            override_gib
        ) * GIB, f"the device has {float(override_gib):.2f} GiB (preflight.device_memory_gib)"
    if plan.device == "cuda":
        import torch

        memory = min(
            torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())
        )
        name = torch.cuda.get_device_name(0)
        return float(memory), f"the GPU ({name}) has {gib(memory)}"
    ram = available_ram() / max(plan.devices, 1)
    per = f" ({plan.devices} processes)" if plan.devices > 1 else ""
    return (
        ram,
        f"no GPU (CUDA) is available, so it would train on the CPU, and this machine has {gib(ram)} of RAM available{per}",
    )


def run_plan(cfg: DictConfig, located: list[Located]) -> Plan | None:
    """`plan_of`, or None (with a warning) when it fails for any reason but a `ConfigError`: an estimate that
    fails must not stop a run the build would report better."""
    try:
        return plan_of(cfg, located)
    except ConfigError:
        raise
    except Exception as error:
        log.warning("preflight: no memory or disk estimate (%s: %s)", type(error).__name__, error)
        return None


def check_memory(cfg: DictConfig, plan: Plan, override_gib: float | None = None) -> Estimate:
    """Stop a run that cannot fit its device (a `ConfigError` with the estimate); warn when it is close."""
    needed = estimate(plan)
    budget, has = device_budget(plan, override_gib)
    what = describe(cfg, plan)
    per = " per device" if plan.devices > 1 else ""
    if needed.total > budget:
        raise ConfigError(
            f"{what} does not fit: the run needs about {gib(needed.total)}{per}, but {has}. "
            f"Estimate: {needed.breakdown()}. What would fit: {'; '.join(fitting_options(plan, budget))}. "
            "(preflight.memory_check=false skips this check)"
        )
    if needed.total > CLOSE * budget:
        log.warning(
            "%s needs about %s of %s (%.0f%%): close to the limit (%s)",
            what,
            gib(needed.total),
            gib(budget),
            100 * needed.total / budget,
            needed.breakdown(),
        )
    else:
        log.debug("preflight: %s needs about %s of %s", what, gib(needed.total), gib(budget))
    return needed


def check_directories(cfg: DictConfig) -> None:
    """The run directory and the cache take a file (`rlhf_lab.preflight.environment.check_writable`)."""
    paths: Any = cfg.get("paths") or {}
    if paths.get("run_dir"):
        check_writable("paths.run_dir", Path(paths.run_dir), "point hydra.run.dir at a writable directory")
    if paths.get("cache_dir"):
        check_writable(
            "paths.cache_dir",
            Path(paths.cache_dir),
            "set paths.cache_dir (or RLHF_LAB_CACHE) to a writable directory",
        )


#: The configs (as YAML) that passed in this process: the CLI checks before its heavy imports, then
#: `rlhf_lab.train.run` would check again (and ask the hub again).
_PASSED: set[str] = set()


def preflight(cfg: DictConfig) -> None:
    """Check the run ``cfg`` before any download or model load (this package's docstring); once per config
    and process."""
    check_run_keys(cfg)
    settings: Any = cfg.get("preflight") or {}
    if not settings.get("enabled", True):
        return
    key = OmegaConf.to_yaml(cfg)
    if key in _PASSED:
        return
    disk_check = bool(settings.get("disk_check", True))
    if disk_check:
        check_directories(cfg)
    if "strategy" in cfg and strategy_of(cfg.strategy)["deepspeed"]:
        wait_for_build_locks(extensions_root())  # before DeepSpeed would wait on a stale one, silently
    quiet_hub_retries()
    located = locate_models(cfg)
    memory_check = bool(settings.get("memory_check", True))
    plan = run_plan(cfg, located) if memory_check or disk_check else None
    if plan is not None:  # None: the policy's config is not on disk (plan_of says so)
        if memory_check:
            check_memory(cfg, plan, settings.get("device_memory_gib"))
        if disk_check:
            cache = cfg.paths.get("cache_dir")
            try:
                check_free_space(cfg, plan, Path(cfg.paths.run_dir), Path(cache) if cache else None)
            except ConfigError:
                raise
            except OSError as error:  # a filesystem that will not say its free space: no estimate
                log.warning("preflight: no free-space check (%s)", error)
    _PASSED.add(key)
