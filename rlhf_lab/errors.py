"""Errors that name what is wrong and where."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


class RunStopped(RuntimeError):
    """A run stopped for a reason its one-line message names (a user's reward function failed, a companion
    model did not load, a child run failed...): the CLI prints ``error: <message>`` and exits with status 2.
    Subclass it for each cause; whatever must be kept (``last.ckpt``) is saved before raising."""


def check_choice(key: str, value: object, choices: Iterable[object]) -> None:
    """Raise `ConfigError` unless `value` is one of `choices`.

    Args:
        key: Dotted config key, e.g. ``algo.loss_type``.
        value: The configured value.
        choices: The allowed values.
    """
    allowed = list(choices)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported; choose one of: {', '.join(map(str, allowed))}")


def check_range(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise `ConfigError` unless ``low <= value <= high`` (bounds optional, inclusivity configurable)."""
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + str(low)
        hi = "inf)" if high is None else str(high) + ("]" if high_inclusive else ")")
        raise ConfigError(f"{key}={value!r} is out of range; expected a value in {lo}, {hi}")


# --- Hydra's composition errors, as one line -------------------------------------------------------------

_OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def full_traceback_requested() -> bool:
    """Whether the user asked for Hydra's full traceback (``HYDRA_FULL_ERROR=1``) instead of one line."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def close_matches(word: str, options: Sequence[str]) -> list[str]:
    """Up to three of ``options`` close to ``word``, closest first (a typo's likely intent)."""
    return difflib.get_close_matches(word, options, n=3, cutoff=0.6)


def config_error_message(error: BaseException, choices: Callable[[], Mapping[str, Any]] = dict) -> str:
    """One line for a Hydra composition error: what is wrong and what would be right, never ``+key``.

    Args:
        error: A ``ConfigCompositionException`` (an unknown key or option, a bad value), an
            ``OverrideParseException``, or omegaconf's ``MissingMandatoryValue``.
        choices: The run's ``group -> option`` (``algo -> dpo``), asked for only to name where a key is not.
    """
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

    if isinstance(error, OverrideParseException):
        reason = error.message.splitlines()[0] if error.message else "a syntax error"
        return f"cannot parse the override {error.override!r}: {reason} (the syntax: {_OVERRIDE_GRAMMAR})"
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = error.missing_cfg_file.rpartition("/")
        close = close_matches(option, sorted(error.options))
        meant = f"did you mean {' or '.join(f'{group}={c}' for c in close)}? " if close else ""
        # Sorted, so the list reads the same whatever was mistyped; the likely intent is named before it.
        options = ", ".join(sorted(error.options))
        return f"{group}={option} is not an option of {group}; {meant}choose one of: {options}"
    if isinstance(error, MissingMandatoryValue) and error.full_key:
        return f"{error.full_key} has no value (??? in its config): set it, e.g. {error.full_key}=<value>"
    cause, message = error.__cause__, str(error)
    overridden = re.match(r"Could not override '([^']+)'", message)
    if overridden and isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        return _unknown_key_message(overridden.group(1), cause, choices)
    merging = re.match(r"Error merging override (\S+)", message)
    if merging and cause is not None:
        return f"cannot apply {merging.group(1)}: {str(cause).splitlines()[0]}"
    exists = re.search(r"An item is already at '([^']+)'.*remove \+ prefix: '([^']+)'", message, re.DOTALL)
    if exists:
        return f"{exists.group(1)} exists (a leading + adds a new key): set it with {exists.group(2)}"
    return _one_line(error)


def _unknown_key_message(key: str, cause: Any, choices: Callable[[], Mapping[str, Any]]) -> str:
    """``<key> is not a key of <where>; did you mean <close keys>?`` (or the keys there are)."""
    from omegaconf import DictConfig

    failing = str(cause.full_key)  # the first part of `key` that does not exist: algoo of algoo.beta
    parent, _, name = failing.rpartition(".")
    rest = key[len(failing) :]
    node = cause.parent_node
    siblings = [k for k in node if not str(k).startswith("_")] if isinstance(node, DictConfig) else []
    suggestions = [
        f"{parent}.{match}{rest}" if parent else f"{match}{rest}"
        for match in difflib.get_close_matches(name, map(str, siblings), n=3, cutoff=0.6)
    ]
    # The right name in the wrong place (algo.max_steps for trainer.max_steps).
    if isinstance(node, DictConfig):
        suggestions += [k for k in _dotted_keys(node._get_root()) if k.endswith(f".{name}{rest}")]
    where = _node_name(parent, choices)
    if suggestions:
        return f"{key} is not a key of {where}; did you mean {' or '.join(dict.fromkeys(suggestions))}?"
    return f"{key} is not a key of {where}; it has: {', '.join(map(str, siblings))}"


def _node_name(key: str, choices: Callable[[], Mapping[str, Any]]) -> str:
    """``algo=dpo`` for a group's node, ``data.source (data=synthetic)`` inside one, ``the config`` for the
    root."""
    if not key:
        return "the config"
    try:
        chosen = {str(group): option for group, option in choices().items() if option is not None}
    except Exception:  # naming the option is a nicety; the message stands without it
        chosen = {}
    if key in chosen:
        return f"{key}={chosen[key]}"
    group = next((g for g in sorted(chosen, key=len, reverse=True) if key.startswith(f"{g}.")), None)
    return f"{key} ({group}={chosen[group]})" if group else key


def _dotted_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every key under ``node`` as a dotted path, Hydra's own ``hydra`` node left out."""
    from omegaconf import DictConfig

    try:
        keys = [str(k) for k in node]
    except Exception:  # a node that is itself ??? has no keys to offer
        return
    for key in keys:
        if not prefix and key == "hydra":
            continue
        yield f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from _dotted_keys(child, f"{prefix}{key}.")


def _one_line(error: BaseException) -> str:
    """Hydra's message and its omegaconf cause on one line, without the ``+key`` hint or the search path."""
    lines = [*str(error).splitlines(), *(str(error.__cause__).splitlines()[:1] if error.__cause__ else [])]
    kept = []
    for line in map(str.strip, lines):
        if line.startswith(("Config search path", "Available options")):
            break
        if line and not line.startswith(("To append to your config", "Set the environment variable")):
            kept.append(line.rstrip(".:"))
    return ": ".join(kept) or type(error).__name__


def run_dir_error_message(error: OSError) -> str:
    """One line for a run directory Hydra could not create or write (read-only, full, not a directory)."""
    reason = error.strerror or type(error).__name__
    where = f": {error.filename}" if error.filename else ""
    return (
        f"the run directory is not writable ({reason}{where}): point hydra.run.dir (hydra.sweep.dir with "
        "--multirun) at a writable directory"
    )


def missing_value_in(error: BaseException) -> Any:
    """The omegaconf ``MissingMandatoryValue`` (a ``???`` read) in ``error``'s chain, or None."""
    from omegaconf.errors import MissingMandatoryValue

    current: BaseException | None = error
    while current is not None:
        if isinstance(current, MissingMandatoryValue):
            return current
        current = current.__cause__ or current.__context__
    return None
