"""The optimiser and its learning-rate schedule (the ``optim`` group), and the factory the objectives call.

``optim.name`` picks a preset optimiser (`OPTIMIZERS`: AdamW from torch, 8-bit AdamW from bitsandbytes) and
``optim.scheduler`` a preset schedule (`SCHEDULERS`, after a linear warm-up). Any other optimiser or schedule
is named by target, as Hydra builds it from a ``_target_`` node with ``_partial_: true``, and replaces the
preset::

    optim.optimizer='{_target_: torch.optim.SGD, _partial_: true, momentum: 0.9}'
    optim.lr_scheduler='{_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 100}'

The optimiser is called with the parameter groups and ``lr=optim.lr`` (weight decay goes in the groups), the
schedule with the optimiser (and ``total_steps=``, the run's optimiser steps, when it takes that argument
and the node does not set it); schedules step once per optimiser step.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf_lab.errors import ConfigError, check_choice, check_range

#: Preset optimisers by ``optim.name``: the class each names (given ``optim.betas`` and ``optim.eps``).
OPTIMIZERS = {
    "adamw": "torch.optim.AdamW",
    "adamw_8bit": "bitsandbytes.optim.AdamW8bit",
    "paged_adamw_8bit": "bitsandbytes.optim.PagedAdamW8bit",
}
#: Preset schedules by ``optim.scheduler`` (`OptimConfig.lr_lambda`).
SCHEDULERS = ("constant", "linear", "cosine")


@dataclass
class OptimConfig:
    """The optimiser and its learning-rate schedule.

    Attributes:
        name: Preset optimiser: ``adamw`` (torch), ``adamw_8bit`` or ``paged_adamw_8bit`` (bitsandbytes; paged
            falls back to unpaged on CPU). Ignored when ``optimizer`` is set.
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay (not on biases and norms).
        betas: Adam betas of the preset optimisers.
        eps: Adam epsilon of the preset optimisers.
        scheduler: ``constant``, ``linear`` (decay to 0) or ``cosine`` (decay to ``min_lr_ratio * lr``).
            Ignored when ``lr_scheduler`` is set.
        warmup_ratio: Linear warm-up over this share of the optimiser steps (ignored if ``warmup_steps``).
        warmup_steps: Linear warm-up steps (takes precedence over ``warmup_ratio`` when > 0).
        min_lr_ratio: Final learning rate of the cosine schedule, as a share of ``lr``.
        optimizer: Any optimiser: a ``_target_`` node with ``_partial_: true`` (built by Hydra into a callable
            taking the parameter groups and ``lr``), or a class's dotted name; replaces ``name``.
        lr_scheduler: Any schedule, likewise (a callable taking the optimiser); replaces ``scheduler`` and its
            warm-up.
    """

    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    optimizer: Any = None
    lr_scheduler: Any = None

    def __post_init__(self) -> None:
        check_choice("optim.name", self.name, OPTIMIZERS)
        check_choice("optim.scheduler", self.scheduler, SCHEDULERS)
        check_range("optim.lr", self.lr, 0.0, None, low_inclusive=False)
        check_range("optim.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        # eps = 0 divides by sqrt(v) = 0 wherever a gradient has been 0 so far: NaN weights.
        check_range("optim.eps", self.eps, 0.0, None, low_inclusive=False)
        check_range("optim.weight_decay", self.weight_decay, 0.0, None)
        check_range("optim.warmup_steps", self.warmup_steps, 0)
        check_range("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.optimizer = _target("optim.optimizer", self.optimizer)
        self.lr_scheduler = _target("optim.lr_scheduler", self.lr_scheduler)
        module = OPTIMIZERS[self.name].partition(".")[0]
        if self.optimizer is None and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"optim.name={self.name!r} needs {module}, which is not installed (pip install {module}); "
                "or use optim.name=adamw"
            )

    def make_optimizer(self) -> Callable[..., torch.optim.Optimizer]:
        """What builds the optimiser from parameter groups and ``lr``: ``optimizer``, or the ``name`` preset."""
        if self.optimizer is not None:
            return self.optimizer  # type: ignore[no-any-return]
        from hydra.utils import get_object

        return functools.partial(get_object(OPTIMIZERS[self.name]), betas=self.betas, eps=self.eps)

    def lr_lambda(self, total_steps: int) -> Callable[[int], float]:
        """The preset schedule's factor of ``lr`` at each optimiser step (warm-up, then ``scheduler``)."""
        warmup = self.warmup_steps if self.warmup_steps > 0 else math.ceil(self.warmup_ratio * total_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if self.scheduler == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            if self.scheduler == "linear":
                return 1.0 - progress
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor

    def make_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        """The schedule of ``optimizer`` over ``total_steps`` optimiser steps."""
        if self.lr_scheduler is None:
            return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_lambda(total_steps))
        extra = {"total_steps": total_steps} if _takes(self.lr_scheduler, "total_steps") else {}
        return self.lr_scheduler(optimizer, **extra)


def _target(key: str, value: Any) -> Any:
    """``value`` as a callable: a built ``_target_`` node, or a dotted name; fails naming ``key`` otherwise."""
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        from hydra.utils import get_object

        try:
            found = get_object(value)
        except Exception as error:
            raise ConfigError(f"{key}={value!r} names no class or function: {error}") from None
        if callable(found):
            return found
    raise ConfigError(
        f"{key}={value!r} is not supported; choose a target: {{_target_: <class or function>, _partial_: true, "
        "<its arguments>}, a dotted name, or null"
    )


def _takes(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` takes a ``name`` argument its node did not set already."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters and name not in (getattr(factory, "keywords", None) or {})


def parameter_groups(parameters: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Decay on matrices only (not on biases and norms). One group unless decay needs two: DeepSpeed ZeRO-3
    regroups parameters, and a schedule built for two groups would then no longer match its optimiser."""
    if not weight_decay:
        return [{"params": parameters, "weight_decay": 0.0}]
    return [
        {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]


def configure_optimizers(
    config: OptimConfig, parameters: list[nn.Parameter], total_steps: int
) -> dict[str, Any]:
    """The optimiser of ``parameters`` and its per-step schedule, as `LightningModule.configure_optimizers`
    returns them."""
    if not parameters:
        raise ConfigError("the policy has no trainable parameters (check adapter.*)")
    optimizer = config.make_optimizer()(parameter_groups(parameters, config.weight_decay), lr=config.lr)
    scheduler = config.make_scheduler(optimizer, total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
