"""Is every model of a run available? A local directory, the Hugging Face cache, or the hub over the network.

Checked from the composed config alone, before any download or load: the policy (``model``), a distillation
teacher (``teacher``), the reward models and a value model of online RL (``algo.reward_models``,
``algo.value_model``) and a tokenizer given apart (``model.tokenizer``). Models built from config (``model=tiny``,
``tiny_vlm``) are always available. The network is asked once per model, with a short timeout and no retry;
``HF_HUB_OFFLINE=1`` means it is not asked at all. When the hub cannot be reached but every hub model is
cached, the process goes offline, so loading reads the cache instead of retrying the network.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds the hub has to answer before it counts as unreachable.
HUB_TIMEOUT_S = 3.0
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt")
REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class ModelSource:
    """A model (or a tokenizer) the run loads.

    Attributes:
        key: The config key that names it (``model.name_or_path``, ``teacher.name_or_path``,
            ``algo.reward_models[0]``...): what to set to a local copy.
        name: A hub id or a local directory; empty for a model built from config.
        revision: The hub revision, if any.
        spec: Its config node (None for reward and value models given as a path).
        tokenizer_only: Only a tokenizer is read from it.
    """

    key: str
    name: str
    revision: str | None = None
    spec: Any = None
    tokenizer_only: bool = False

    @property
    def built(self) -> bool:
        """Built from config (tiny models): nothing to find."""
        return not self.name


@dataclass
class Located:
    """Where a model was found: ``built``, ``local``, ``cache`` or ``hub``, and its ``config.json``."""

    source: ModelSource
    where: str
    config_file: Path | None = None


def spec_sources(node: Any, prefix: str) -> list[ModelSource]:
    """The sources of a model config node (``model`` or ``teacher``): its weights, and a tokenizer given apart."""
    if node is None or "_target_" not in node:
        return []  # teacher=none or adapter_off
    from hydra.utils import get_object

    from rlhf_lab.models.tiny import TinyModel

    sources = []
    tokenizer = node.get("tokenizer")
    if not issubclass(get_object(node._target_), TinyModel):
        if OmegaConf.is_missing(node, "name_or_path"):
            raise ConfigError(
                f"{prefix}.name_or_path is not set: give a hub id or a local directory, "
                f"e.g. {prefix}.name_or_path=/path/to/model"
            )
        sources.append(
            ModelSource(f"{prefix}.name_or_path", str(node.name_or_path), node.get("revision"), node)
        )
    else:
        sources.append(ModelSource(f"{prefix}.name_or_path", "", None, node))
    if tokenizer:
        sources.append(ModelSource(f"{prefix}.tokenizer", str(tokenizer), None, None, tokenizer_only=True))
    return sources


def run_sources(cfg: DictConfig) -> list[ModelSource]:
    """Every model and tokenizer the run ``cfg`` loads."""
    sources = spec_sources(cfg.model, "model") + spec_sources(cfg.get("teacher"), "teacher")
    algo = cfg.algo
    for i, path in enumerate(algo.get("reward_models") or []):
        sources.append(ModelSource(f"algo.reward_models[{i}]", str(path)))
    if algo.get("value_model"):
        sources.append(ModelSource("algo.value_model", str(algo.value_model)))
    return sources


def has_weights(directory: Path) -> bool:
    return any(next(directory.glob(pattern), None) is not None for pattern in WEIGHT_PATTERNS)


def find_local(source: ModelSource) -> Located | None:
    """A local directory (checked to hold a model), or None when ``source.name`` is no path on disk."""
    path = Path(source.name).expanduser()
    if not path.exists():
        if source.name.startswith(("/", "./", "../", "~")) or not REPO_ID.match(source.name):
            raise ConfigError(f"{source.key}={source.name!r}: no such directory (and not a hub id)")
        return None
    if not path.is_dir():
        raise ConfigError(f"{source.key}={source.name!r} is a file; give the model's directory")
    if source.tokenizer_only:
        return Located(source, "local")
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(
            f"{source.key}={source.name!r}: the directory holds no config.json (not a saved model)"
        )
    return Located(source, "local", config)


def find_cached(source: ModelSource) -> Located | None:
    """The model in the Hugging Face hub cache (its config and weights), or None."""
    from huggingface_hub import try_to_load_from_cache

    filename = "tokenizer_config.json" if source.tokenizer_only else "config.json"
    found = try_to_load_from_cache(source.name, filename, revision=source.revision)
    if not isinstance(found, str):
        return None
    config = Path(found)
    if source.tokenizer_only:
        return Located(source, "cache")
    return Located(source, "cache", config) if has_weights(config.parent) else None


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def go_offline() -> None:
    """Make this process (and the runs it starts) read the hub cache only: no network, so no retries."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def ask_hub(source: ModelSource) -> int | str:
    """The hub's HTTP status for ``source``'s config, or why the hub could not be asked (unreachable)."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    filename = "tokenizer_config.json" if source.tokenizer_only else "config.json"
    url = hf_hub_url(source.name, filename, revision=source.revision)
    try:
        response = get_session().head(
            url, headers=build_hf_headers(), timeout=HUB_TIMEOUT_S, follow_redirects=True
        )
    except Exception as error:  # httpx's connection and timeout errors: the hub is unreachable
        return f"the hub cannot be reached ({type(error).__name__}: {error})"
    return int(response.status_code)


def check_served(source: ModelSource, status: int) -> None:
    """Fail unless the hub's answer ``status`` means it serves ``source``."""
    if status in (401, 403):
        raise ConfigError(
            f"{source.key}={source.name}: the hub refuses access (HTTP {status}: a gated or private model); "
            f"accept its licence on the hub and log in (hf auth login), or set {source.key} to a local copy"
        )
    if status == 404:
        raise ConfigError(
            f"{source.key}={source.name}: no such model (or revision) on the hub; check the id, "
            f"or set {source.key} to a local copy"
        )
    if status >= 400:
        raise ConfigError(unavailable_message(source, f"the hub answered HTTP {status}"))


def config_from_hub(located: Located) -> Located:
    """The hub model with its ``config.json`` fetched (small; needed for the memory estimate)."""
    from huggingface_hub import hf_hub_download

    source = located.source
    if source.tokenizer_only:
        return located
    try:
        path = hf_hub_download(
            source.name, "config.json", revision=source.revision, etag_timeout=HUB_TIMEOUT_S
        )
    except Exception as error:  # network trouble after a good answer: estimate without it
        log.warning("preflight: could not fetch %s's config.json (%s)", source.name, error)
        return located
    return Located(source, "hub", Path(path))


def unavailable_message(source: ModelSource, why: str) -> str:
    return (
        f"model {source.name} ({source.key}) is not available: not a local directory, not in the Hugging Face "
        f"cache, and {why}. Download it where there is network (hf download {source.name} --local-dir DIR) "
        f"and set {source.key}=DIR"
    )


def locate_models(cfg: DictConfig) -> list[Located]:
    """Where each model of the run is; a `ConfigError` naming every one that is not available.

    A model found only in the cache while the hub cannot be reached turns the process offline (`go_offline`).
    """
    found: list[Located] = []
    missing: list[ModelSource] = []
    for source in run_sources(cfg):
        located = Located(source, "built") if source.built else find_local(source) or find_cached(source)
        if located is None:
            missing.append(source)
        else:
            found.append(located)
    hub_models = missing + [loc.source for loc in found if loc.where == "cache"]
    if not hub_models:
        return found
    answer = "HF_HUB_OFFLINE=1 is set" if hub_offline() else ask_hub(hub_models[0])
    if isinstance(answer, str):  # no network (or not allowed): the cache is all there is
        if missing:
            raise ConfigError("; ".join(unavailable_message(source, answer) for source in missing))
        if not hub_offline():
            log.info("preflight: %s; loading from the Hugging Face cache", answer)
            go_offline()
        return found
    for i, source in enumerate(missing):
        status = answer if i == 0 else ask_hub(source)
        if isinstance(status, str):
            raise ConfigError(unavailable_message(source, status))
        check_served(source, status)
    return found + [config_from_hub(Located(source, "hub")) for source in missing]
