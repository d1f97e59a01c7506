"""Logger factories that need more than a `_target_`."""

from __future__ import annotations

import csv
import logging
import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

from rlhf_lab.errors import ConfigError, check_choice
from rlhf_lab.lightning_compat import (
    ExperimentWriterHooks,
    cached_experiment,
    switch_wandb_offline,
    wandb_offline,
    wandb_run_started,
)

log = logging.getLogger(__name__)

#: Config key names that are credentials, compared whole (lower case, ``-`` read as ``_``).
SECRET_NAMES = frozenset(
    {
        "token",
        "password",
        "passwd",
        "secret",
        "secrets",
        "credentials",
        "api_key",
        "apikey",
        "hf_token",
        "wandb_api_key",
        "access_token",
        "accesstoken",
        "auth_token",
        "authtoken",
        "refresh_token",
        "private_key",
        "secret_key",
        "client_secret",
        "aws_access_key_id",
    }
)
#: Endings that make a name a credential (``github_token``, ``openai_api_key``, ``db_password``).
SECRET_SUFFIXES = (
    "_token",
    "_api_key",
    "_access_key",
    "_secret_key",
    "_private_key",
    "_secret",
    "_password",
    "_passwd",
    "_credentials",
)
#: Names ending in ``_token`` that are a tokenizer's special tokens (text such as ``</s>``), not credentials.
SPECIAL_TOKEN_NAMES = frozenset(
    f"{name}_token" for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask", "image", "video", "audio")
)


def is_secret(name: str) -> bool:
    """True if a config key's name is a credential's: one of `SECRET_NAMES` (``api_key``, ``hf_token``,
    ``PASSWORD``), or ending in one of `SECRET_SUFFIXES` (``github_token``) unless it is a special token's
    (``pad_token``). Whole names, never substrings: ``max_new_tokens``, ``tokenizer``, ``keyword`` are kept."""
    lowered = name.strip().lower().replace("-", "_")
    if lowered in SECRET_NAMES:
        return True
    return lowered.endswith(SECRET_SUFFIXES) and lowered not in SPECIAL_TOKEN_NAMES


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
    """Lightning's `WandbLogger`, logging hyperparameters as a flat, secret-free config (`flatten_config`), and
    going offline (one warning) when an online run cannot start: a rejected key or an unreachable server."""

    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        # A Namespace as its vars, None as nothing (what Lightning's loggers accept); a DictConfig stays one.
        flat = flatten_config(vars(params) if isinstance(params, Namespace) else params or {})
        super().log_hyperparams(flat)

    @property
    def experiment(self) -> Any:
        if wandb_run_started(self) or wandb_offline(self):
            return super().experiment
        import wandb

        try:
            return super().experiment
        except (wandb.errors.AuthenticationError, wandb.errors.CommError, wandb.errors.UsageError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.warning(
                "W&B could not start an online run (%s): logging offline to %s instead", first, self.save_dir
            )
            switch_wandb_offline(self)
            return super().experiment


#: Seconds `server_answers` waits for a W&B server's HTTP answer (DNS, connect and response together).
PROBE_TIMEOUT = 3.0


def server_answers(base_url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the W&B server of ``base_url`` answers an HTTP request (any status) within ``timeout`` seconds.

    A TCP connection is not enough: a server (or a proxy) that accepts connections and never answers would
    hold ``wandb.init`` for its own timeout (90 s). The request runs in a daemon thread so that nothing (a
    DNS lookup included) outlasts ``timeout``.
    """
    import threading
    import urllib.error
    import urllib.request

    answered: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(base_url, timeout=timeout):
                answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)  # a status (401, 404) is an answer
        except (OSError, ValueError):
            answered.append(False)

    thread = threading.Thread(target=probe, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


def resolve_wandb_mode(mode: str) -> str:
    """``auto``: ``WANDB_MODE`` when set (offline, disabled...); else online when logged in and the server
    (the login's own, never a hard-coded host) answers, offline otherwise (with a warning if logged in)."""
    if mode != "auto":
        return mode
    environment = os.environ.get("WANDB_MODE", "").strip().lower()
    if environment:
        return {"dryrun": "offline", "run": "online"}.get(environment, environment)
    if not wandb_logged_in():
        return "offline"
    import wandb

    base_url = os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url
    if not server_answers(base_url):
        log.warning(
            "W&B server %s is not reachable (no answer within %g s): logging offline (wandb sync uploads it "
            "later)",
            base_url,
            PROBE_TIMEOUT,
        )
        return "offline"
    return "online"


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
    init_timeout: float = 30.0,
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
        mode: ``auto`` (``WANDB_MODE`` when set; else online when logged in and the server answers; else
            offline), ``online``, ``offline`` or ``disabled``. An online run that cannot start (a rejected key,
            no server) logs offline instead, with one warning.
        init_timeout: Seconds an online run may take to start (``wandb.init``) before it logs offline
            instead, with one warning (a server that answers but stalls; W&B's own default is 90 s).
    """
    check_choice("logger.wandb.mode", mode, ("auto", "online", "offline", "disabled"))
    if not init_timeout > 0:
        raise ConfigError(f"logger.wandb.init_timeout={init_timeout!r} must be a positive number of seconds")
    import wandb

    if wandb.run is not None:
        # Left open by the previous job of a --multirun (same process): Lightning would log into it.
        wandb.finish()
    mode = resolve_wandb_mode(mode)
    check_choice("WANDB_MODE", mode, ("online", "offline", "disabled"))
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
        settings=wandb.Settings(init_timeout=float(init_timeout)),
    )


def _write_rows_atomically(path: Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    """Rewrite a CSV file through a temporary file beside it, so a kill leaves the old or the new file."""
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with staging.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staging, path)


class AppendingWriter(ExperimentWriterHooks):
    """Keeps an existing metrics.csv (a resumed run appends to it) instead of deleting it, and rewrites it
    atomically when a new column appears (Lightning rewrites it in place, which a kill can empty)."""

    def prepare_metrics_file(self) -> None:
        fs = get_filesystem(self.metrics_file_path)
        if fs.isfile(self.metrics_file_path):
            with fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)

    def rewrite_metrics_file(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
        _write_rows_atomically(path, list(fieldnames), rows)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger writing ``<save_dir>/metrics.csv``; a resumed run appends to the file."""

    @property
    def experiment(self) -> Any:
        def create() -> AppendingWriter:
            get_filesystem(self.root_dir).makedirs(self.root_dir, exist_ok=True)
            return AppendingWriter(log_dir=self.log_dir)

        return cached_experiment(self, create)


def read_metrics_rows(metrics_file: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the complete rows of a metrics.csv (a half-written last line is not a row)."""
    if not metrics_file.exists():
        return [], []
    text = metrics_file.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a kill mid-write leaves part of a line
    reader = csv.DictReader(text.splitlines())
    return list(reader.fieldnames or []), list(reader)


def truncate_metrics(metrics_file: Path, rows: int, pending: dict[str, Any] | None = None) -> int:
    """Keep the first ``rows`` rows of metrics.csv (those a checkpoint had seen written), then ``pending`` (the
    row of the checkpoint's own step, which Lightning logs only after the checkpoint was saved); a resumed
    run logs everything after again. Atomic. Returns the rows dropped."""
    if not metrics_file.exists():
        return 0
    fieldnames, existing = read_metrics_rows(metrics_file)
    kept: list[dict[str, Any]] = list(existing[:rows])
    if pending is not None:
        fieldnames += [key for key in pending if key not in fieldnames]
        kept.append(pending)
    _write_rows_atomically(metrics_file, fieldnames, kept)
    return len(existing) - min(rows, len(existing))


def archive_metrics(metrics_file: Path) -> Path | None:
    """Move an existing metrics.csv aside (``metrics.1.csv``, ``metrics.2.csv``, ...) before a run starts over in
    its directory: it never appends to another run's rows, and nothing written is lost."""
    if not metrics_file.exists():
        return None
    number = 1
    while (target := metrics_file.with_name(f"{metrics_file.stem}.{number}{metrics_file.suffix}")).exists():
        number += 1
    metrics_file.rename(target)
    return target
