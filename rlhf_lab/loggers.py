"""Logger factories that need more than a `_target_`."""

from __future__ import annotations

import csv
import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.logger import _convert_params
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

from rlhf_lab.errors import check_choice

# A config key whose name contains one of these (case-insensitive) never leaves the machine.
SECRET_MARKERS = ("key", "token", "secret", "password")


def is_secret(name: str) -> bool:
    """True if a config key's name looks like a credential (``api_key``, ``hf_token``, ``PASSWORD``)."""
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def flatten_config(cfg: Mapping[str, Any] | DictConfig, sep: str = ".") -> dict[str, Any]:
    """The config as flat ``{"algo.beta": 0.1}`` keys (resolved), without credential-like keys.

    Flat keys are what W&B sweeps and Hydra overrides call parameters, so a run's config and a sweep's
    parameters line up. A key is dropped with everything under it when its own name or any parent's is a
    secret (``is_secret``). Lists stay values.

    Args:
        cfg: A (nested) config: ``DictConfig`` or plain mapping.
        sep: Separator between the levels of a key.
    """
    tree: Any = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        for name, value in node.items():
            if is_secret(str(name)):
                continue
            key = f"{prefix}{name}"
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
            if isinstance(value, Mapping) and value:
                visit(value, f"{key}{sep}")
            else:
                flat[key] = value

    visit(tree, "")
    return flat


class FlatConfigWandbLogger(WandbLogger):
    """Lightning's `WandbLogger`, logging hyperparameters as a flat, secret-free config (`flatten_config`)."""

    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        super().log_hyperparams(flatten_config(_convert_params(params)))


def wandb_logged_in() -> bool:
    """True when an API key is configured (environment or netrc); never touches the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        rc = netrc.netrc()
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any(host for host in rc.hosts if "wandb" in host)


def wandb_logger(
    save_dir: str,
    project: str = "rlhf_lab",
    entity: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    name: str | None = None,
    mode: str = "auto",
) -> Any:
    """A W&B logger writing inside the run directory (never ``./wandb`` in the caller's cwd).

    The run's config (what `train` passes to ``log_hyperparams``: the composed Hydra config) is logged flat,
    ``algo.beta``-style, with credential-like keys dropped (`flatten_config`).

    Args:
        save_dir: Run directory.
        project: W&B project.
        entity: W&B entity (team or user).
        group: Run group (e.g. a sweep name).
        tags: Run tags.
        name: Run name.
        mode: ``auto`` (online when logged in, else offline), ``online``, ``offline`` or ``disabled``.
    """
    check_choice("logger.wandb.mode", mode, ("auto", "online", "offline", "disabled"))
    import wandb

    if wandb.run is not None:
        # Left open by the previous job of a --multirun (same process): Lightning would log into it.
        wandb.finish()
    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return FlatConfigWandbLogger(
        save_dir=save_dir,
        project=project,
        entity=entity,
        group=group,
        tags=list(tags or []),
        name=name,
        mode=mode,
        offline=mode == "offline",
    )


def _appending_writer() -> type:
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        """Keeps an existing metrics.csv (a resumed run appends to it) instead of deleting it."""

        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                    header = next(csv.reader(file), [])
                self.metrics_keys = sorted(header)

    return AppendingWriter


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger writing ``<save_dir>/metrics.csv``; a resumed run appends to the file."""

    @property
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _appending_writer()(log_dir=self.log_dir)
        return self._experiment


def truncate_metrics(metrics_file: Path, from_step: int) -> int:
    """Drop rows logged at ``step >= from_step`` (a resumed run logs them again); returns rows dropped."""
    if not metrics_file.exists():
        return 0
    with metrics_file.open(newline="") as file:
        reader = csv.DictReader(file)
        fieldnames = reader.fieldnames or []
        rows = list(reader)
    kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < from_step]
    with metrics_file.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(kept)
    return len(rows) - len(kept)
