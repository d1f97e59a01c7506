"""Errors that name what is wrong and where."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


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
