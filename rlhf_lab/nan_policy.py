"""``trainer.nan_policy``: what a non-finite training loss or gradient does.

``stop`` raises `NonFiniteError`, naming the step and the batch's dataset examples (the run's last finite
state is left in ``checkpoints/last.ckpt``); ``skip`` skips the step and counts it (``train/nan_skipped``),
stopping past ``trainer.max_nan_skips``; ``ignore`` trains on.

`NanPolicy` is the Lightning callback the trainer gets (`rlhf_lab.train.build_callbacks`): before every
optimiser step it checks the gradient norm (and logs it as ``train/grad_norm``). A loss cannot be skipped
from a callback (only ``training_step`` returning None skips Lightning's backward), so an objective checks
its own loss and hands a non-finite one to `NanPolicy.handle`, agreeing with the other ranks first
(`all_ranks`). The count of skipped steps lives on the objective, in its ``nan_skipped`` buffer (a
state-dict key, kept in checkpoints).

A step is named as metrics.csv names it (its ``step`` column: training batches that stepped before it), and
a skipped step's row holds what that step logged (``train/nan_skipped``), never an earlier step's loss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rlhf_lab.errors import check_choice, check_range
from rlhf_lab.lightning_compat import batches_that_stepped, forget_step_values

if TYPE_CHECKING:
    from rlhf_lab.data.batches import Batch
    from rlhf_lab.objectives.base import AlignmentObjective

log = logging.getLogger(__name__)

NAN_POLICIES = ("stop", "skip", "ignore")


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient under ``trainer.nan_policy=stop`` (or past its skips)."""

    #: The last finite state was saved before raising (the checkpoint callbacks need not save again).
    checkpoint_saved = False


def all_ranks(trainer: L.Trainer | None, decision: bool) -> bool:
    """True when ``decision`` holds on every rank (a skip must be taken by all ranks together)."""
    if trainer is None or trainer.world_size == 1:
        return decision
    return bool(trainer.strategy.reduce_boolean_decision(decision, all=True))


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The L2 norm of the parameters' gradients together, or None when none has a gradient."""
    norms = []
    for parameter in parameters:
        if parameter.grad is not None:
            norm = parameter.grad.detach().norm(2)
            # A sharded (FSDP2) gradient's norm is a DTensor: materialise the global value.
            norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return torch.stack(norms).norm(2) if norms else None


class NanPolicy(Callback):
    """Apply ``trainer.nan_policy`` to non-finite losses (`handle`, called by the objective) and gradients.

    Args:
        policy: ``stop``, ``skip`` or ``ignore``.
        max_skips: Most steps ``skip`` may skip before the run stops.
    """

    def __init__(self, policy: str = "stop", max_skips: int = 10) -> None:
        check_choice("trainer.nan_policy", policy, NAN_POLICIES)
        check_range("trainer.max_nan_skips", max_skips, 0)
        self.policy = policy
        self.max_skips = max_skips

    @property
    def active(self) -> bool:
        """Whether non-finite values are looked for at all (not ``ignore``)."""
        return self.policy != "ignore"

    def handle(self, objective: AlignmentObjective, what: str, batch: Batch | None) -> None:
        """A non-finite ``what`` (``loss``, ``gradient``) at the current step: raise under ``stop`` (or past
        the skips), else count the skip on the objective and log it."""
        trainer = objective.trainer
        step = batches_that_stepped(trainer)  # the step column of this batch's metrics.csv row
        examples = "" if batch is None else f" (training batch of dataset examples {batch.index.tolist()})"
        skipped = int(objective.nan_skipped)
        if self.policy == "skip" and skipped < self.max_skips:
            objective.nan_skipped += 1
            # Lightning would write the previous step's values into this step's row: a skipped loss logs
            # nothing of its own; a skipped gradient, no norm.
            forget_step_values(trainer, None if what == "loss" else {"train/grad_norm"})
            log.warning(
                "non-finite %s at step %d%s: step skipped (%d so far)", what, step, examples, skipped + 1
            )
            objective.log("train/nan_skipped", objective.nan_skipped.float(), on_step=True, on_epoch=False)
            return
        past = "" if self.policy == "stop" else f" after {skipped} skipped steps"
        raise NonFiniteError(
            f"non-finite {what} at step {step}{examples}{past}; the run stops (trainer.nan_policy={self.policy}). "
            "Its last finite state is in checkpoints/last.ckpt. Lower optim.lr, check those examples, or set "
            "trainer.nan_policy=skip"
        )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: Any, optimizer: torch.optim.Optimizer
    ) -> None:
        # Before clipping: the gradient of the (accumulated) loss as the optimiser receives it.
        parameters = [parameter for _, parameter in pl_module.trainable_parameters()]
        norm = gradient_norm(parameters)
        if norm is None:
            return
        if self.active and not bool(torch.isfinite(norm)):
            # Gradients are already reduced across ranks: every rank takes the same decision here.
            self.handle(pl_module, "gradient", None)
            for parameter in parameters:
                parameter.grad = None  # the optimiser skips parameters without a gradient: no update
            return
        pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)
