"""Every pairwise preference objective: one forward over chosen + rejected, then a pure loss named in config.

DPO (and its loss types), IPO, CPO, SimPO, CPO-SimPO and ORPO differ only in their loss, so they share
this one LightningModule: ``conf/algo/<name>.yaml`` names the loss function by import path
(``loss: rlhf_lab.losses.simpo_loss``) and sets its hyperparameters as flat ``algo.*`` keys under their
paper names. The objective passes the loss the tensors its signature names (see `PAIR_INPUTS`); a loss
that takes reference log-probs gets a reference, one that does not is reference-free. Adding a pairwise
objective is a loss function, a YAML file and a test.
"""

from __future__ import annotations

import inspect
import keyword
import typing
from collections.abc import Callable, Iterable
from typing import Any

import torch

from rlhf_lab.data.batches import PairBatch
from rlhf_lab.errors import ConfigError
from rlhf_lab.losses.hyperparameters import (
    UNIT_INTERVAL,
    check_hyperparameters,
    config_name,
    hyperparameter_defaults,
    tensor_inputs,
)
from rlhf_lab.losses.sft import nll_loss
from rlhf_lab.objectives.base import AlignmentObjective, pairwise_metrics
from rlhf_lab.reference import CopyReference, ReferenceSync, RowScoring

#: The tensors a pairwise loss may take, by parameter name.
PAIR_INPUTS = (
    "policy_chosen_logps",  # [B] summed completion log-probs under the policy
    "policy_rejected_logps",
    "reference_chosen_logps",  # [B] the same under the reference (a loss naming these needs a reference)
    "reference_rejected_logps",
    "chosen_lengths",  # [B] completion token counts
    "rejected_lengths",
    "chosen_nll",  # [B] per-token NLL of the chosen completion (prompt too with nll_on_prompt)
    "chosen_wpo_logps",  # [B] WPO's per-token mean log pi(y_t) - log sum_v pi(v)^2 (detached; use_weighting)
    "rejected_wpo_logps",
)


def resolve_loss(loss: str | Callable[..., Any]) -> Callable[..., Any]:
    """A loss function from its import path (``rlhf_lab.losses.dpo_loss``) or itself."""
    if callable(loss):
        return loss
    from hydra.utils import get_method

    try:
        return get_method(loss)
    except Exception as error:
        raise ConfigError(f"algo.loss={loss!r} is not an importable function: {error}") from None


def pairwise_losses(node: dict[str, Any] | None = None) -> list[Callable[..., Any]]:
    """The pairwise losses `rlhf_lab.losses` exports (their tensors all among `PAIR_INPUTS`), and the loss
    ``node`` names (``algo.loss``: a user's, by import path)."""
    import rlhf_lab.losses

    exported = [getattr(rlhf_lab.losses, name) for name in rlhf_lab.losses.__all__]
    found = [
        function
        for function in exported
        if inspect.isfunction(function)
        and "policy_chosen_logps" in (inputs := tensor_inputs(function))
        and set(inputs) <= set(PAIR_INPUTS)
    ]
    named = resolve_loss(node["loss"]) if node and node.get("loss") else None
    return found + ([named] if named is not None and named not in found else [])


class PairwiseLoss:
    """A pairwise loss with its configured hyperparameters, applied to (chosen, rejected) pairs: what the
    offline `PairwiseObjective` and online DPO (`rlhf_lab.objectives.online_dpo`) share.

    Args:
        loss: The pairwise loss (import path or function): tensors as positional-or-keyword parameters
            named from `PAIR_INPUTS`, hyperparameters as keyword-only parameters.
        settings: The objective's ``algo.*`` keys; the loss's hyperparameters are taken out of it.
        nll_on_prompt: Score the prompt tokens too, so ``chosen_nll`` covers prompt + completion.
        optional: Hyperparameter names (of any loss) taken out of ``settings`` too, where null means unset:
            the loss's default, or nothing for a loss that does not take it (a value is an error).
        ld_alpha: LD-DPO's weight of the log-probs past each pair's shared length (`RowScoring`), for the
            policy here and, through `scoring`, the reference; None: summed log-probs.
    """

    def __init__(
        self,
        loss: Any,
        settings: dict[str, Any],
        nll_on_prompt: bool = False,
        optional: Iterable[str] = (),
        ld_alpha: float | None = None,
    ) -> None:
        loss_fn = resolve_loss(loss)
        inputs = tensor_inputs(loss_fn)
        unknown = [name for name in inputs if name not in PAIR_INPUTS]
        if unknown:
            raise ConfigError(
                f"algo.loss={getattr(loss_fn, '__name__', loss_fn)} takes {unknown}, which a pairwise objective "
                f"cannot give; its tensor parameters must be among: {', '.join(PAIR_INPUTS)}"
            )
        defaults = {name: parameter.default for name, parameter in hyperparameter_defaults(loss_fn).items()}
        values, optional = {}, set(optional)
        for key in list(settings):
            name = f"{key}_" if keyword.iskeyword(key) else key  # algo.lambda is `lambda_` in Python
            if name in defaults or name in optional:
                value = settings.pop(key)
                if value is None and name in optional:
                    continue
                if name not in defaults:
                    raise ConfigError(
                        f"algo.{key}={value!r}: algo.loss={loss_fn.__name__} takes no {key} (it takes: "
                        f"{', '.join(map(config_name, defaults))}); leave it null"
                    )
                values[name] = value
        check_hyperparameters(loss_fn, values)
        if ld_alpha is not None:
            UNIT_INTERVAL.check("algo.ld_alpha", ld_alpha)
        self.function = loss_fn
        self.inputs = inputs
        self.kwargs = {**defaults, **values}
        self.nll_on_prompt = nll_on_prompt
        self.scoring = RowScoring(ld_alpha)
        #: WPO: the policy pass also returns log sum_v pi(v)^2 per token.
        self.weighted = bool(self.kwargs.get("use_weighting")) and "chosen_wpo_logps" in inputs

    @staticmethod
    def schema_parameters(node: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """The hyperparameters of the loss ``node`` names, as ``(name, annotation, default)``."""
        loss = resolve_loss(node["loss"])
        hints = typing.get_type_hints(loss)
        return [(name, hints.get(name, Any), p.default) for name, p in hyperparameter_defaults(loss).items()]

    @property
    def needs_reference(self) -> bool:
        return "reference_chosen_logps" in self.inputs

    @property
    def name(self) -> str:
        return getattr(self.function, "__name__", "pairwise loss")

    def __call__(
        self, policy: Any, batch: PairBatch, reference: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``[B]`` per-pair losses of ``batch`` under ``policy`` and the DPO metrics (`pairwise_metrics`, the
        chosen NLL and the loss's own), given the reference's ``[2B]`` summed log-probs (None: none)."""
        size = batch.size
        options = self.scoring.options(batch)
        stats = policy(batch.sequences, score_prompt=self.nll_on_prompt, sum_sq=self.weighted, **options)
        values = self.scoring.value(stats)
        chosen, rejected = stats.rows(slice(None, size)), stats.rows(slice(size, None))
        if self.nll_on_prompt:
            assert chosen.prompt_logps is not None and chosen.prompt_lengths is not None
            nll = nll_loss(chosen.logps + chosen.prompt_logps, chosen.lengths + chosen.prompt_lengths)
        else:
            nll = nll_loss(chosen.logps, chosen.lengths)
        wpo = None
        if self.weighted:
            assert stats.log_sum_sq_probs is not None
            wpo = ((stats.logps - stats.log_sum_sq_probs) / stats.lengths.clamp(min=1)).detach()
        available = {
            "policy_chosen_logps": values[:size],
            "policy_rejected_logps": values[size:],
            "reference_chosen_logps": None if reference is None else reference[:size],
            "reference_rejected_logps": None if reference is None else reference[size:],
            "chosen_lengths": chosen.lengths,
            "rejected_lengths": rejected.lengths,
            "chosen_nll": nll,
            "chosen_wpo_logps": None if wpo is None else wpo[:size],
            "rejected_wpo_logps": None if wpo is None else wpo[size:],
        }
        out = self.function(**{name: available[name] for name in self.inputs}, **self.kwargs)
        metrics = pairwise_metrics(chosen, rejected, out.chosen_rewards, out.rejected_rewards)
        metrics["nll_loss"] = nll.detach().mean()
        metrics.update(out.metrics)
        return out.losses, metrics


class PairwiseObjective(AlignmentObjective):
    """A preference objective on (chosen, rejected) pairs.

    Args:
        loss: The pairwise loss (import path or function; `PairwiseLoss`).
        nll_on_prompt: Score the prompt tokens too, so ``chosen_nll`` covers prompt + completion (the ORPO
            paper's released code).
        ld_alpha: LD-DPO (Liu et al., 2024): weight of the log-probs past each pair's shared length, for the
            policy and the reference (None: plain summed log-probs; 1 is the same).
        reference_sync: TR-DPO (Gorbatovski et al., 2024): ``soft`` or ``hard`` updates of the reference
            toward the policy every ``reference_sync_steps`` optimiser steps (None: the reference stays the
            initial policy). The one setting under which the reference is not the initial policy.
        reference_sync_alpha: ``soft``: ``ref <- (1 - alpha) ref + alpha policy`` (``hard`` is alpha 1).
        reference_sync_steps: Optimiser steps between updates.
        **kwargs: The loss's hyperparameters (paper names: ``beta``, ``gamma``, ``lambda``...) and the
            `AlignmentObjective` arguments.
    """

    def __init__(
        self,
        loss: Any = "???",
        nll_on_prompt: bool = False,
        ld_alpha: float | None = None,
        reference_sync: str | None = None,
        reference_sync_alpha: float = 0.6,
        reference_sync_steps: int = 512,
        **kwargs: Any,
    ) -> None:
        self.pair_loss = PairwiseLoss(loss, kwargs, nll_on_prompt, ld_alpha=ld_alpha)
        self.reference_sync = ReferenceSync.from_config(
            reference_sync, reference_sync_alpha, reference_sync_steps
        )
        super().__init__(**kwargs)
        if self.reference_sync is not None:
            self.reference_sync.check(self.reference_mode, self.needs_reference)

    @classmethod
    def schema_parameters(cls, node: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """The hyperparameters of the loss ``node`` names, as ``(name, annotation, default)`` (the schema of
        ``algo=<name>`` is the objective's arguments plus these)."""
        return PairwiseLoss.schema_parameters(node)

    @property
    def needs_reference(self) -> bool:
        return self.pair_loss.needs_reference

    @property
    def name(self) -> str:
        return self.pair_loss.name

    @property
    def loss_kwargs(self) -> dict[str, Any]:
        """The loss's hyperparameters as configured (its defaults for the rest)."""
        return self.pair_loss.kwargs

    @property
    def nll_on_prompt(self) -> bool:
        return self.pair_loss.nll_on_prompt

    def scoring_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"nll_on_prompt": self.nll_on_prompt}
        if self.pair_loss.scoring.ld_alpha is not None:
            settings["ld_alpha"] = self.pair_loss.scoring.ld_alpha  # the tables hold LD-DPO's values
        return settings

    def configure_model(self) -> None:
        super().configure_model()
        self.reference.scoring = self.pair_loss.scoring

    def on_fit_start(self) -> None:
        if self.reference_sync is not None:
            self.reference_sync.check_strategy(self.trainer.strategy)
        super().on_fit_start()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._sync_reference()
        super().on_train_batch_start(batch, batch_idx)

    def on_validation_start(self) -> None:
        self._sync_reference()
        super().on_validation_start()

    def _sync_reference(self) -> None:
        """TR-DPO: update the reference once the optimiser step it is due after has run (checked before each
        batch and validation, so a run resumed from a checkpoint of that step updates it too)."""
        if self.reference_sync is None:
            return
        step = self.trainer.global_step
        reference = self.reference
        assert isinstance(reference, CopyReference)
        if self.reference_sync.due(step, reference.synced_at):
            reference.sync_toward(self.policy.model, self.reference_sync.alpha, step)

    def compute(self, batch: PairBatch, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses, metrics = self.pair_loss(self.policy, batch, self.reference_logps(batch, split))
        return losses.mean(), metrics
