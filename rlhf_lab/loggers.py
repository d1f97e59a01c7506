"""Logger factories that need more than a `_target_`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlhf_lab.errors import check_choice


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
    """A Lightning `WandbLogger` writing inside the run directory (never ``./wandb`` in the caller's cwd).

    Args:
        save_dir: Run directory.
        project: W&B project.
        entity: W&B entity (team or user).
        group: Run group (e.g. a sweep name).
        tags: Run tags.
        name: Run name.
        mode: ``auto`` (online when logged in, else offline), ``online``, ``offline`` or ``disabled``.
    """
    from lightning.pytorch.loggers import WandbLogger

    check_choice("logger.wandb.mode", mode, ("auto", "online", "offline", "disabled"))
    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_DIR", save_dir)
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        entity=entity,
        group=group,
        tags=list(tags or []),
        name=name,
        mode=mode,
        offline=mode == "offline",
    )
