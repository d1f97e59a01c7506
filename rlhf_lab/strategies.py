"""Strategy configs -> Lightning strategies."""

from __future__ import annotations

from typing import Any

from rlhf_lab.errors import check_choice


def auto() -> str:
    """Let Lightning choose (single device, or DDP when ``trainer.devices > 1``)."""
    return "auto"


def ddp(find_unused_parameters: bool = False, start_method: str = "popen") -> Any:
    """Distributed data parallel; gloo on CPU, nccl on GPU (Lightning picks the backend)."""
    from lightning.pytorch.strategies import DDPStrategy

    check_choice("strategy.start_method", start_method, ("popen", "spawn"))
    return DDPStrategy(find_unused_parameters=find_unused_parameters, start_method=start_method)
