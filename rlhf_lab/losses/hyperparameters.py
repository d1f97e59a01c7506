"""Hyperparameter constraints declared beside each loss, checked once when an objective is configured.

A loss declares what its keyword-only hyperparameters may be with `hyperparameters`; the objective that
uses it checks the configured values once, at construction, with `check_hyperparameters`, so a bad value
fails before any model loads with the config key, the value and what is allowed, and the loss itself
stays a pure function that never validates on the hot path.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rlhf_lab.errors import ConfigError, check_choice, check_range


@dataclass(frozen=True)
class Range:
    """A number in ``[low, high]`` (either bound optional, each inclusive or not)."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def check(self, key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        check_range(
            key,
            value,
            self.low,
            self.high,
            low_inclusive=self.low_inclusive,
            high_inclusive=self.high_inclusive,
        )


@dataclass(frozen=True)
class OneOf:
    """One of ``choices`` (or, with ``many``, a non-empty list of them)."""

    choices: tuple[Any, ...]
    many: bool = False

    def check(self, key: str, value: Any) -> None:
        values = list(value) if self.many and isinstance(value, (list, tuple)) else [value]
        if self.many and not values:
            raise ConfigError(f"{key} is empty; give one of {', '.join(map(str, self.choices))} or a list")
        for item in values:
            check_choice(key, item, self.choices)


POSITIVE = Range(0.0, None, low_inclusive=False)
NON_NEGATIVE = Range(0.0, None)
LABEL_SMOOTHING = Range(0.0, 0.5, high_inclusive=False)
#: A probability or a mixing weight.
UNIT_INTERVAL = Range(0.0, 1.0)
#: An inverse temperature: above 1e3 the loss is a step function of float32 log-probs (a typo, not a setting).
BETA = Range(0.0, 1e3, low_inclusive=False)


def hyperparameters(
    check: Callable[[Mapping[str, Any]], None] | None = None, **constraints: Range | OneOf
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare constraints on a loss's keyword-only hyperparameters (``check``: a cross-field rule).

    Example:
        ``@hyperparameters(beta=POSITIVE, loss_type=OneOf(("sigmoid", "hinge")))``
    """

    def attach(loss: Callable[..., Any]) -> Callable[..., Any]:
        loss.__hyperparameters__ = (dict(constraints), check)  # type: ignore[attr-defined]
        return loss

    return attach


def hyperparameter_defaults(loss: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The loss's keyword-only parameters (its hyperparameters), by name."""
    return {
        name: parameter
        for name, parameter in inspect.signature(loss).parameters.items()
        if parameter.kind is parameter.KEYWORD_ONLY
    }


def tensor_inputs(loss: Callable[..., Any]) -> list[str]:
    """The loss's positional-or-keyword parameters (the tensors an objective passes it), in order."""
    return [
        name
        for name, parameter in inspect.signature(loss).parameters.items()
        if parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    ]


def config_name(parameter: str) -> str:
    """The config key of a Python parameter (``lambda_`` is ``algo.lambda``: a keyword in Python)."""
    return parameter[:-1] if parameter.endswith("_") else parameter


def check_hyperparameters(loss: Callable[..., Any], values: Mapping[str, Any], prefix: str = "algo") -> None:
    """Check ``values`` (Python parameter names) against the loss's declared constraints.

    Raises:
        ConfigError: A value is out of range, not an allowed choice, or fails the cross-field check; the
            message names ``<prefix>.<key>``.
    """
    constraints, check = getattr(loss, "__hyperparameters__", ({}, None))
    for name, constraint in constraints.items():
        if name in values:
            constraint.check(f"{prefix}.{config_name(name)}", values[name])
    if check is not None:
        check(values)


def unknown(names: Iterable[str], loss: Callable[..., Any]) -> list[str]:
    """The ``names`` that are not hyperparameters of ``loss``."""
    known = hyperparameter_defaults(loss)
    return [name for name in names if name not in known]
