"""Preflight: before any download or model load, is every model available, and does the run fit its device?

`preflight` runs at the start of every training run (`rlhf_lab.train.run`), from the composed config alone:

1. Availability (`rlhf_lab.preflight.availability`): each model the run loads is a local directory, in the
   Hugging Face cache, or served by the hub (asked once, with a short timeout; never with ``HF_HUB_OFFLINE=1``).
   One that is none of these stops the run with a `ConfigError` naming it and the key to point at a local copy.
2. Memory (`rlhf_lab.preflight.memory`, its docstring has the formula): an estimate of what the run needs
   per device, against a GPU's memory or, without one, the RAM available. A run that cannot fit stops with
   the estimate broken down and the changes that would fit; one above `CLOSE` of the memory is warned about.

Config: ``preflight.enabled`` (false: skip both), ``preflight.memory_check`` (false: skip the estimate),
``preflight.device_memory_gib`` (compare with this many GiB per device instead of what is detected).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.errors import ConfigError
from rlhf_lab.models.hub import FirstRetryOnly, quiet_hub_retries
from rlhf_lab.preflight.availability import Located, locate_models
from rlhf_lab.preflight.memory import GIB, Estimate, Plan, estimate, fitting_options, gib
from rlhf_lab.preflight.plan import describe, plan_of

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


def check_memory(
    cfg: DictConfig, located: list[Located], override_gib: float | None = None
) -> Estimate | None:
    """Stop a run that cannot fit its device (a `ConfigError` with the estimate); warn when it is close."""
    plan = plan_of(cfg, located)
    if plan is None:
        return None
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


#: The configs (as YAML) that passed in this process: the CLI checks before its heavy imports, then
#: `rlhf_lab.train.run` would check again (and ask the hub again).
_PASSED: set[str] = set()


def preflight(cfg: DictConfig) -> None:
    """Check the run ``cfg`` before any download or model load (this package's docstring); once per config
    and process."""
    settings: Any = cfg.get("preflight") or {}
    if not settings.get("enabled", True):
        return
    key = OmegaConf.to_yaml(cfg)
    if key in _PASSED:
        return
    quiet_hub_retries()
    located = locate_models(cfg)
    if settings.get("memory_check", True):
        try:
            check_memory(cfg, located, settings.get("device_memory_gib"))
        except ConfigError:
            raise
        except Exception as error:  # an estimate that fails must not stop a run the build would report better
            log.warning("preflight: no memory estimate (%s: %s)", type(error).__name__, error)
    _PASSED.add(key)
