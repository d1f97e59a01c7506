"""The registered parts one online-RL run is built from, resolved from flat ``algo.*`` keys.

``algo.advantage_estimator`` names an estimator (`rlhf_lab.losses.advantages.ADVANTAGE_ESTIMATORS`),
``algo.policy_loss`` a policy loss and ``algo.loss_agg_mode`` an aggregation
(`rlhf_lab.losses.policy_gradient`). Each part's hyperparameters are its keyword-only parameters, set as
flat ``algo.<name>`` keys under their paper names; an estimator that takes ``values`` adds the critic
(``value_model``, ``vf_coef`` and the value loss's ``cliprange_value``). TRL's names are accepted as
aliases (`ALIASES`), so ``algo.loss_type=dapo`` or PPO's ``algo.cliprange`` mean what they mean in TRL.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from rlhf_lab.errors import ConfigError, check_range
from rlhf_lab.losses.advantages import ADVANTAGE_ESTIMATORS, INPUTS
from rlhf_lab.losses.correction import MISMATCH_METRICS
from rlhf_lab.losses.hyperparameters import check_hyperparameters, hyperparameter_defaults, tensor_inputs
from rlhf_lab.losses.policy_gradient import LOSS_AGGREGATIONS, POLICY_LOSSES, clipped_value_loss
from rlhf_lab.losses.registry import Registry, declared_metrics
from rlhf_lab.models.build import Companion
from rlhf_lab.models.hub import HubModel
from rlhf_lab.rl.controls import CONTROL_SETTINGS, Controls

#: TRL's (and verl's) names of online-RL settings -> this project's keys (verl's and the papers' names).
ALIASES = {
    "loss_type": "loss_agg_mode",
    "cliprange": "epsilon",
    "num_ppo_epochs": "num_iterations",
    "sapo_temperature_pos": "tau_pos",
    "sapo_temperature_neg": "tau_neg",
    "entropy_coeff": "entropy_coef",
    "vllm_importance_sampling_mode": "importance_sampling_correction",
    "vllm_importance_sampling_cap": "importance_sampling_cap",
    "vllm_importance_sampling_clip_max": "importance_sampling_cap",
}
#: The critic's settings beside the value loss's hyperparameters: (annotation, default).
CRITIC_SETTINGS: dict[str, tuple[Any, Any]] = {"value_model": (Optional[str], None), "vf_coef": (float, 0.1)}  # noqa: UP045


def _hyperparameter_functions(*named: Callable[..., Any]) -> list[Callable[..., Any]]:
    """Every registered function whose keyword-only parameters are ``algo.*`` keys (and ``named``)."""
    registries = (ADVANTAGE_ESTIMATORS, POLICY_LOSSES)
    registered = [r.get(name) for r in registries for name in r.names()]
    return [*registered, *(f for f in named if f not in registered), clipped_value_loss]


def schema_parameters(node: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """``(name, annotation, default)`` of every registered part's hyperparameters, the critic's settings
    and the TRL aliases: the ``algo`` schema of an online objective beyond its constructor arguments
    (every part's, so that ``algo.advantage_estimator=...`` on the command line finds its keys), plus
    those of a user's function that ``node`` names by import path."""
    fields: dict[str, tuple[Any, Any]] = {}
    for function in _hyperparameter_functions(*_imported(node or {})):
        hints = typing.get_type_hints(function)
        for name, parameter in hyperparameter_defaults(function).items():
            fields.setdefault(name, (hints.get(name, Any), parameter.default))
    fields.update(CRITIC_SETTINGS)
    fields.update(CONTROL_SETTINGS)
    fields.update(dict.fromkeys(ALIASES, (Any, None)))
    return [(name, annotation, default) for name, (annotation, default) in fields.items()]


@dataclass
class RLParts:
    """The estimator, policy loss and aggregation of a run, with their configured hyperparameters.

    Attributes:
        estimator_name: The estimator's registered name.
        estimator: The estimator function; ``estimator_kwargs`` its hyperparameters.
        policy_loss: The policy loss function; ``policy_loss_kwargs`` its hyperparameters.
        aggregate: The aggregation function.
        value_loss_kwargs: The value loss's hyperparameters (critic runs).
        value_model: The critic's initial weights (None: the policy's with a new head).
        vf_coef: The value loss's weight.
        controls: KL estimator, entropy bonus and mask, overlong punishment, dynamic sampling
            (`rlhf_lab.rl.controls`).
    """

    estimator_name: str
    estimator: Callable[..., Any]
    estimator_kwargs: dict[str, Any]
    policy_loss: Callable[..., Any]
    policy_loss_kwargs: dict[str, Any]
    aggregate: Callable[..., Any]
    value_loss_kwargs: dict[str, Any]
    value_model: str | None = None
    vf_coef: float = 0.1
    controls: Controls = field(default_factory=Controls)

    @property
    def needs_critic(self) -> bool:
        """The estimator takes the critic's ``values``."""
        return "values" in tensor_inputs(self.estimator)

    @property
    def needs_greedy_baseline(self) -> bool:
        """The estimator takes the reward of a greedy completion per prompt (ReMax)."""
        return "baseline_rewards" in tensor_inputs(self.estimator)

    def sampling(self) -> dict[str, Any]:
        """What the controls add to the `rlhf_lab.generation.SamplingConfig` (``min_new_tokens``)."""
        return {"min_new_tokens": self.controls.min_new_tokens}

    def policy_metrics(self) -> tuple[str, ...]:
        """The metrics the policy loss adds (its declared ``flags``)."""
        return declared_metrics(self.policy_loss)

    def metric_names(self, *, old_logps: bool) -> set[str]:
        """The training metrics the parts and controls add (unprefixed); ``old_logps``: the rollout has the
        trainer's log-probs beside the sampler's, whose mismatch is logged."""
        names = {*declared_metrics(self.estimator), *self.policy_metrics()}
        names |= {"num_gen_batches", "num_filtered_groups"} if self.controls.dynamic_sampling else set()
        return names | (set(MISMATCH_METRICS) if old_logps else set())

    @property
    def compares_generations(self) -> bool:
        """The estimator compares a prompt's completions with each other (needs ``num_generations >= 2``)."""
        return "num_generations" in tensor_inputs(self.estimator)

    def critic_companion(self, policy_spec: Any, dtype: str) -> dict[str, Companion]:
        """``{"value_model": ...}`` when the estimator needs a critic: the policy's weights with a new value
        head, or ``value_model``'s (a reward model sharing the policy's tokenizer); else nothing."""
        if not self.needs_critic:
            return {}
        path = self.value_model
        spec = policy_spec if path is None else HubModel(name_or_path=path, dtype=dtype)
        # The critic reads the policy's token ids, so it must tokenise exactly like the policy.
        companion = Companion(
            spec,
            task="sequence_classification",
            trainable=True,
            same_vocabulary=path is not None,
            key="model.name_or_path" if path is None else "algo.value_model",
            role="value model",
        )
        return {"value_model": companion}

    def check(
        self, estimator: str, num_generations: int, *, beta: float = 0.0, max_new_tokens: int = 0
    ) -> None:
        """Fail when the run's settings do not fit its parts (``estimator`` as the user wrote it)."""
        if max_new_tokens:
            self.controls.check(beta=beta, max_new_tokens=max_new_tokens)
        self.controls.check_dynamic_sampling(estimator, self.compares_generations, num_generations)
        if self.compares_generations and num_generations < 2:
            raise ConfigError(
                f"algo.advantage_estimator={estimator} compares the completions of a prompt with each "
                f"other: algo.num_generations={num_generations} must be at least 2"
            )
        if self.value_model is not None and not self.needs_critic:
            raise ConfigError(
                f"algo.value_model is set but algo.advantage_estimator={estimator} trains no critic"
            )

    @classmethod
    def resolve(
        cls,
        estimator: str,
        policy_loss: str,
        loss_agg_mode: str,
        settings: dict[str, Any],
        written: dict[str, str],
    ) -> RLParts:
        """Resolve the three names and take each part's hyperparameters out of ``settings`` (the remaining
        ``algo.*`` keys, already renamed by `take_aliases`; what is taken is removed).

        Args:
            written: The key the user wrote for a renamed one (``{"epsilon": "cliprange"}``), for messages.

        Raises:
            ConfigError: A name is not registered or a value breaks its constraint; the message names the
                key as the user wrote it.
        """
        parts = {
            "estimator": _named(ADVANTAGE_ESTIMATORS, estimator),
            "policy_loss": _named(POLICY_LOSSES, policy_loss),
            "aggregate": _named(LOSS_AGGREGATIONS, loss_agg_mode, written.get("loss_agg_mode")),
        }
        unknown = [name for name in tensor_inputs(parts["estimator"]) if name not in INPUTS]
        if unknown:
            raise ConfigError(
                f"algo.advantage_estimator={estimator} takes {unknown}, which the online objective cannot give; "
                f"its tensor parameters must be among: {', '.join(INPUTS)}"
            )
        known: set[str] = {*CRITIC_SETTINGS, *CONTROL_SETTINGS}
        for function in _hyperparameter_functions(parts["estimator"], parts["policy_loss"]):
            names = set(hyperparameter_defaults(function))
            known |= names
            _check(function, {k: v for k, v in settings.items() if k in names and v is not None}, written)
        values = {key: settings.pop(key) for key in known if key in settings}
        picked = {
            name: _with_defaults(function, values)
            for name, function in (("estimator", parts["estimator"]), ("policy_loss", parts["policy_loss"]))
        }
        vf_coef = float(values.get("vf_coef", CRITIC_SETTINGS["vf_coef"][1]))
        check_range("algo.vf_coef", vf_coef, 0.0)
        return cls(
            estimator_name=estimator if "." in estimator else ADVANTAGE_ESTIMATORS.canonical(estimator),
            estimator=parts["estimator"],
            estimator_kwargs=picked["estimator"],
            policy_loss=parts["policy_loss"],
            policy_loss_kwargs=picked["policy_loss"],
            aggregate=parts["aggregate"],
            value_loss_kwargs=_with_defaults(clipped_value_loss, values),
            value_model=values.get("value_model"),
            vf_coef=vf_coef,
            controls=_take_controls(values, written),
        )


def take_aliases(settings: dict[str, Any]) -> dict[str, str]:
    """Rename TRL's keys in ``settings`` to this project's (in place; an alias left at None is dropped);
    returns ``{canonical: alias}`` for the renamed ones, so messages can name the key the user wrote."""
    written = {}
    for alias, canonical in ALIASES.items():
        value = settings.pop(alias, None)
        if value is not None:
            settings[canonical] = value
            written[canonical] = alias
    return written


def _with_defaults(function: Callable[..., Any], values: dict[str, Any]) -> dict[str, Any]:
    """``function``'s hyperparameters: the configured values, its defaults for the rest."""
    return {name: values.get(name, p.default) for name, p in hyperparameter_defaults(function).items()}


def _imported(node: dict[str, Any]) -> list[Callable[..., Any]]:
    """The parts ``node`` names by import path (not registered)."""
    pairs = ((ADVANTAGE_ESTIMATORS, "advantage_estimator"), (POLICY_LOSSES, "policy_loss"))
    return [_named(registry, node[key]) for registry, key in pairs if "." in str(node.get(key, ""))]


def _named(registry: Registry, name: str, written_as: str | None = None) -> Callable[..., Any]:
    """The part ``name`` names: a registered name or alias, or the import path of a user's function."""
    key = f"algo.{written_as}" if written_as else registry.key
    if isinstance(name, str) and "." in name:
        from hydra.utils import get_method

        try:
            return get_method(name)
        except Exception as error:
            raise ConfigError(f"{key}={name!r} is not an importable function: {error}") from None
    try:
        return registry.get(name)
    except ConfigError as error:
        raise ConfigError(str(error).replace(registry.key, key)) from None


def _check(function: Callable[..., Any], values: dict[str, Any], used: dict[str, str]) -> None:
    """`check_hyperparameters`, naming each key as the user wrote it (``algo.cliprange``, not ``epsilon``)."""
    try:
        check_hyperparameters(function, values)
    except ConfigError as error:
        raise ConfigError(_as_written(str(error), used)) from None


def _take_controls(values: dict[str, Any], used: dict[str, str]) -> Controls:
    """`Controls.take`, naming each key as the user wrote it (``algo.vllm_importance_sampling_cap``)."""
    try:
        return Controls.take(values)
    except ConfigError as error:
        raise ConfigError(_as_written(str(error), used)) from None


def _as_written(message: str, used: dict[str, str]) -> str:
    """``message`` with each renamed key as the user wrote it."""
    for canonical, written in used.items():
        if canonical != written:
            message = message.replace(f"algo.{canonical}=", f"algo.{written}=")
    return message
