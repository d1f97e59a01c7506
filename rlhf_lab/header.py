"""The run's header: one line saying what is trained on what, with what, for how long, and where."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_summary import get_human_readable_count as count
from omegaconf import DictConfig

log = logging.getLogger("rlhf_lab")


def selected_options(cfg: DictConfig) -> dict[str, str]:
    """``group -> option`` as the command line chose them (``algo -> dpo``); empty outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def header_line(cfg: DictConfig, trainer: L.Trainer, module: Any) -> str:
    """``rlhf_lab: algo=dpo on model=tiny (139 K trainable of 278 K parameters) | data=synthetic | ...``."""
    chosen = selected_options(cfg)
    algo = chosen.get("algo") or str(cfg.algo.get("_target_", "?")).rpartition(".")[2]
    model = chosen.get("model") or str(cfg.model.get("name_or_path") or cfg.model.get("_target_", "?"))
    parameters = list(module.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    total = sum(p.numel() for p in parameters)
    # Adapter and quantisation only when they are not the defaults (full fine-tuning, no quantisation).
    extras = "".join(
        f" {group}={chosen[group]}"
        for group, default in (("adapter", "full"), ("quant", "none"))
        if chosen.get(group, default) != default
    )
    steps = trainer.estimated_stepping_batches
    return (
        f"rlhf_lab: algo={algo} on model={model}{extras} ({count(trainable)} trainable of {count(total)} "
        f"parameters) | data={chosen.get('data', '?')} | strategy={chosen.get('strategy', 'auto')} on "
        f"{trainer.accelerator.__class__.__name__.removesuffix('Accelerator').lower()} x{trainer.world_size}, "
        f"{trainer.precision} | {steps:g} optimiser steps"
    )


class RunHeader(Callback):
    """Logs `header_line` once the models are built (their parameter counts are known), before training."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero:
            try:
                log.info("%s", header_line(self.cfg, trainer, pl_module))
            except Exception as error:  # a header is never worth a failed run
                log.debug("no run header: %s", error)
