"""Registries of pure functions chosen by name in config (online RL's estimators, policy losses and
aggregations), as verl's ``core_algos.py`` registers them.

A registry maps a name (and its aliases: verl's hyphenated names, the paper's or TRL's names) to a
function; `Registry.get` fails naming the config key, the value and every allowed choice. Adding an
estimator is decorating one function (`Registry.register`), writing a YAML that names it, and a test
(`rlhf_lab.rl.parts` also accepts a dotted import path: a user's function, unregistered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from rlhf_lab.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Functions by name.

    Args:
        key: The config key that names a member (``algo.advantage_estimator``), for messages.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._functions: dict[str, Callable[..., Any]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[F], F]:
        """Register the decorated function as ``name`` (also reachable by ``aliases``)."""

        def attach(function: F) -> F:
            for key in (name, *aliases):
                if key in self._functions or key in self._aliases:
                    raise ValueError(f"{self.key}: {key!r} is registered twice")
            self._functions[name] = function
            self._aliases.update(dict.fromkeys(aliases, name))
            return function

        return attach

    def canonical(self, name: str) -> str:
        """The registered name ``name`` refers to (verl's ``seq-mean-token-mean`` is ``seq_mean_token_mean``).

        Raises:
            ConfigError: ``name`` is neither a name nor an alias, listing the choices.
        """
        key = name.replace("-", "_") if isinstance(name, str) else name
        if key in self._functions:
            return key
        if key in self._aliases:
            return self._aliases[key]
        raise ConfigError(f"{self.key}={name!r} is not one of: {', '.join(self.choices())}")

    def get(self, name: str) -> Callable[..., Any]:
        """The function registered as (or aliased by) ``name``."""
        return self._functions[self.canonical(name)]

    def choices(self) -> list[str]:
        """Every accepted name, registered names first."""
        return [*self._functions, *self._aliases]

    def names(self) -> list[str]:
        """The registered names (no aliases)."""
        return list(self._functions)


def logs(*names: str) -> Callable[[F], F]:
    """Declare the metrics (unprefixed names) a registered function returns beyond the shared ones, so an
    objective knows every metric it logs before its first step."""

    def attach(function: F) -> F:
        function.__metrics__ = names  # type: ignore[attr-defined]
        return function

    return attach


def declared_metrics(function: Callable[..., Any]) -> tuple[str, ...]:
    """The metric names `logs` declared on ``function`` (none if it declared nothing)."""
    return tuple(getattr(function, "__metrics__", ()))
