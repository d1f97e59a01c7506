"""Checks of the composed run config that no single class can make, before any model loads.

Each failure is a `ConfigError` naming the key, the value and what is allowed, never a traceback from deep
inside Lightning at the first validation.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from rlhf_lab.errors import ConfigError, check_choice

PRECISIONS = (
    "32-true",
    "32",
    32,
    "16-mixed",
    "16",
    16,
    "bf16-mixed",
    "bf16",
    "bf16-true",
    "16-true",
    "64-true",
    64,
)
#: Training metrics logged outside an objective's compute (the shared base logs them for every objective).
BASE_TRAIN_METRICS = ("train/lr", "train/grad_norm", "train/tokens_per_sec", "train/nan_skipped")


def _integer(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an integer >= {low}")
    if value < low:
        raise ConfigError(f"{key}={value} must be >= {low}")
    return value


def batches_per_epoch(trainer_cfg: Any, datamodule: Any) -> int:
    """Training batches each process sees per epoch (after ``limit_train_batches``)."""
    devices = trainer_cfg.get("devices", 1)
    world = (devices if isinstance(devices, int) and devices > 0 else 1) * int(
        trainer_cfg.get("num_nodes", 1) or 1
    )
    examples = len(datamodule.datasets["train"]) // world
    batches = math.ceil(examples / datamodule.batch_size)
    limit = trainer_cfg.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    return batches


def check_run_config(cfg: Any, datamodule: Any) -> None:
    """The trainer, checkpoint and chunking settings, checked against each other and the data.

    Raises:
        ConfigError: Names the key, its value and what is allowed.
    """
    trainer = cfg.trainer
    _integer("trainer.max_steps", trainer.get("max_steps", -1), -1)
    if trainer.get("max_epochs") is not None:
        _integer("trainer.max_epochs", trainer.max_epochs, -1)
    _integer("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1)
    _integer("trainer.log_every_n_steps", trainer.get("log_every_n_steps", 50), 0)
    check_choice("trainer.precision", trainer.get("precision", "32-true"), PRECISIONS)
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or isinstance(clip, bool) or clip < 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} must be a number >= 0 (or null: no clipping)")
    _integer("logps_chunk_size", cfg.logps_chunk_size, 1)

    interval = trainer.get("val_check_interval", 1.0)
    per_epoch = batches_per_epoch(trainer, datamodule)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise ConfigError(
            f"trainer.val_check_interval={interval!r} must be a number of batches or a fraction"
        )
    if isinstance(interval, float) and not 0.0 < interval <= 1.0:
        raise ConfigError(
            f"trainer.val_check_interval={interval} as a fraction of an epoch must be in (0, 1]; give an integer "
            "for a number of training batches"
        )
    if (
        isinstance(interval, int)
        and trainer.get("check_val_every_n_epoch", 1) is not None
        and not 1 <= interval <= per_epoch
    ):
        raise ConfigError(
            f"trainer.val_check_interval={interval} batches: an epoch has {per_epoch} training batches per process "
            f"({len(datamodule.datasets['train'])} examples, data.batch_size={datamodule.batch_size}); give at most "
            f"{per_epoch}, a fraction such as 0.5, or trainer.check_val_every_n_epoch=null to count across epochs"
        )

    checkpoint = cfg.checkpoint
    top_k = (
        _integer("checkpoint.save_top_k", checkpoint.save_top_k, -1) if checkpoint.save_top_k != -1 else -1
    )
    if checkpoint.monitor is None and top_k not in (0, 1):
        raise ConfigError(
            f"checkpoint.save_top_k={top_k} needs a checkpoint.monitor to rank by (it is null); set "
            "checkpoint.monitor=val/loss, or checkpoint.save_top_k=0 (last.ckpt only)"
        )
    check_choice("checkpoint.mode", checkpoint.mode, ("auto", "min", "max"))
    if checkpoint.get("every_n_train_steps") is not None:
        _integer("checkpoint.every_n_train_steps", checkpoint.every_n_train_steps, 0)
    minutes = checkpoint.get("every_n_minutes")
    if minutes is not None and (
        not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or minutes <= 0
    ):
        raise ConfigError(
            f"checkpoint.every_n_minutes={minutes!r} must be a positive number of minutes (or null)"
        )


class MonitorCheck(Callback):
    """Fails before the first training step when ``checkpoint.monitor`` names no metric the objective logs
    (a typo such as ``val/los`` would otherwise surface at the first validation, after training).

    The metric names come from one training and one held-out batch run through the objective (no gradients,
    the random state untouched), so they are exactly what this objective logs, on this data.
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def on_train_start(self, trainer: Any, objective: Any) -> None:
        names = set(BASE_TRAIN_METRICS)
        known = {split: objective.metric_names(split) for split in ("train", "val")}
        if all(value is not None for value in known.values()):
            # The objective knows its metrics without a batch (online RL: a probe would be a rollout).
            names |= {f"{split}/{name}" for split, values in known.items() for name in values or ()}
            self._check(names)
            return
        datamodule = trainer.datamodule
        loaders = {"train": datamodule.train_dataloader}
        if len(datamodule.datasets.get("val", [])):
            loaders["val"] = datamodule.val_dataloader
        was_training = objective.training
        # The probe must leave no trace: the objective's own state (KTO's z0, the skip count) is put back.
        own_state = {
            name: buffer.clone() for name, buffer in objective._buffers.items() if buffer is not None
        }
        objective.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                for split, make in loaders.items():
                    batch = trainer.strategy.batch_to_device(next(iter(make())))
                    _, metrics = objective.compute(batch, split)
                    names |= {f"{split}/loss", *(f"{split}/{name}" for name in metrics)}
        finally:
            objective.train(was_training)
            for name, value in own_state.items():
                objective._buffers[name].copy_(value)
        self._check(names)

    def _check(self, names: set[str]) -> None:
        if self.monitor not in names:
            close = difflib.get_close_matches(self.monitor, sorted(names), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"checkpoint.monitor={self.monitor!r} is not a metric this objective logs{hint} It logs: "
                f"{', '.join(sorted(names))}"
            )
