"""Warnings that explain a run that looks broken: what the metrics show, why it happens, what to try.

Each `Check` reads the metrics a run logs (training ones after every optimiser step, held-out ones after every
validation) and returns its warning's text once the pattern holds; the `Diagnostics` callback logs it once per
run (logger ``rlhf_lab.diagnostics``, rank zero), resumes included: the checks' counters and what was already
said travel in checkpoints.

- `NoRewardVariance`: online RL whose every group of completions got one reward for K rollouts in a row.
- `StuckLoss`: a training loss that has not left its initial value for N steps.
- `RewardModelAtChance`: a reward model no better than chance after an epoch (or at the end of a shorter run).

After training, `learned` judges the run as a whole (``run/learned`` in ``summary.json``, a warning, the model
card, ``export.require_learning``): did its held-out objective improve from step 0?
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from rlhf_lab.lightning_compat import should_accumulate

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
#: Optimiser steps a run needs before `learned` judges it (as `StuckLoss` and `RewardModelAtChance` wait).
LEARNING_MIN_STEPS = 20
#: The relative improvement of the held-out objective that counts as learning (0.1%).
LEARNING_RTOL = 1e-3
#: How ``summary.json`` names a held-out metric's value at step 0 (``rlhf_lab.callbacks.START_PREFIX``).
_START_PREFIX = "val_start/"


def learned(
    summary: Mapping[str, Any],
    metric: str,
    mode: str,
    min_steps: int = LEARNING_MIN_STEPS,
    rtol: float = LEARNING_RTOL,
) -> bool | None:
    """Whether the run learned, judged conservatively from its held-out values at step 0 and at the end.

    True: the objective's held-out loss ``metric`` ended more than ``rtol`` (0.1%) below its step-0 value.
    False: it did not, and either the objective is judged by that loss alone (SFT, distillation: no held-out
    pairs), or the model no longer tells chosen from rejected (`collapsed`: a model whose output ignores its
    input, as ``optim.lr=1e4`` leaves DPO, its held-out loss ln 2 at every validation). None (not judged):
    a preference run whose held-out loss did not improve but whose scores still separate the pairs (a short
    run on a few pairs: noise or early overfitting, not a broken model), no validation at step 0 or at the
    end, a non-finite value (the run diverged: said elsewhere), fewer than ``min_steps`` optimiser steps (a
    few warm-up steps move nothing), or a metric to maximise (online RL's sampled ``val/reward``, too noisy
    over a short run; `NoRewardVariance` covers its flat case).
    """
    if mode != "min" or not metric.startswith("val/"):
        return None
    start, end = summary.get(_START_PREFIX + metric.removeprefix("val/")), summary.get(metric)
    steps = summary.get("trainer/global_step") or 0
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (start, end)) or steps < min_steps:
        return None
    assert isinstance(start, (int, float)) and isinstance(end, (int, float))
    if end < start - rtol * abs(start):
        return True
    if PAIRWISE_ACCURACY not in summary:
        return False
    return False if collapsed(summary) else None


#: A preference objective's held-out pairwise accuracy: its presence marks an objective judged on pairs.
PAIRWISE_ACCURACY = "val/rewards/accuracies"
#: Held-out log-probs of chosen and rejected closer than this (nats, summed per completion) are the same.
COLLAPSE_LOGPS_ATOL = 1e-3
#: A reward model's held-out mean margin smaller than this is no margin.
COLLAPSE_MARGIN_ATOL = 1e-4


def collapsed(summary: Mapping[str, Any]) -> bool:
    """Whether the model's held-out scores no longer separate chosen from rejected: the policy's mean
    log-probs of the two within `COLLAPSE_LOGPS_ATOL` (a model whose output ignores its input gives every
    completion of a length the same), or, for a reward model (no log-probs), its mean margin within
    `COLLAPSE_MARGIN_ATOL` of 0."""
    chosen, rejected = summary.get("val/logps/chosen"), summary.get("val/logps/rejected")
    if isinstance(chosen, (int, float)) and isinstance(rejected, (int, float)):
        return math.isfinite(chosen - rejected) and abs(chosen - rejected) < COLLAPSE_LOGPS_ATOL
    margin = summary.get("val/rewards/margins")
    return isinstance(margin, (int, float)) and math.isfinite(margin) and abs(margin) < COLLAPSE_MARGIN_ATOL


def not_learned_message(summary: Mapping[str, Any], metric: str) -> str:
    """The one line that says a run did not learn (`learned` is False), with its numbers."""
    start, end = summary[_START_PREFIX + metric.removeprefix("val/")], summary[metric]
    alike = PAIRWISE_ACCURACY in summary and collapsed(summary)
    ln2 = " (chosen and rejected score alike: a collapsed model)" if alike else ""
    steps = int(summary.get("trainer/global_step") or 0)
    return (
        f"the run did not learn: held-out {metric} {start:.4f} at step 0 -> {end:.4f}{ln2} after {steps} steps "
        f"(not {LEARNING_RTOL:.1%} better; run/learned: false in summary.json). A learning rate far too high "
        "can collapse a model without a NaN (optim.lr), or one too small moves nothing"
    )


class Check:
    """One diagnosis: `train_step` and `validation` return the warning's text when it applies, else None.

    ``STATE`` names the attributes a checkpoint keeps (counters), so a resumed run counts on.
    """

    STATE: tuple[str, ...] = ()

    def train_step(self, metrics: Mapping[str, float]) -> str | None:
        """After an optimiser step, with that step's ``train/`` metrics."""
        return None

    def validation(self, metrics: Mapping[str, float], epochs: float, steps: int, final: bool) -> str | None:
        """After a validation (``val/`` metrics), ``epochs`` and ``steps`` of training in; ``final``: the
        run's last validation, after training."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STATE}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in self.STATE:
            if name in state:
                setattr(self, name, state[name])


class NoRewardVariance(Check):
    """Online RL: no group of completions had any reward variance for ``rollouts`` rollouts in a row
    (``train/frac_reward_zero_std`` at 1.0): group-relative advantages are all 0: no gradient from the reward.

    Args:
        rollouts: Consecutive rollouts without variance before warning.
        num_generations: ``algo.num_generations``, quoted in the advice.
        temperature: ``algo.temperature``, quoted in the advice.
    """

    STATE = ("streak",)
    METRIC = "train/frac_reward_zero_std"

    def __init__(
        self, rollouts: int = 10, num_generations: int | None = None, temperature: float | None = None
    ) -> None:
        self.rollouts = rollouts
        self.num_generations = num_generations
        self.temperature = temperature
        self.streak = 0

    def train_step(self, metrics: Mapping[str, float]) -> str | None:
        value = metrics.get(self.METRIC)
        if value is None:
            return None
        self.streak = self.streak + 1 if value >= 1.0 - 1e-6 else 0
        return self.message() if self.streak >= self.rollouts else None

    def message(self) -> str:
        group = f"{self.num_generations} completions" if self.num_generations else "completions"
        more = f", e.g. {2 * self.num_generations}" if self.num_generations else ""
        hotter = f", now {self.temperature:g}" if self.temperature is not None else ""
        return (
            f"no reward variance: {self.METRIC} has been 1.0 for {self.streak} rollouts in a row. "
            f"Each prompt's {group} all got the same reward, so the group-relative advantages are 0 and "
            "the policy gets no gradient from the reward. Try: more completions per prompt "
            f"(algo.num_generations{more}); more varied samples (a higher algo.temperature{hotter}); a warm "
            "start that already succeeds sometimes (an SFT run first, then model=hub "
            "model.name_or_path=<sft run>/export, as in the README's online RL example); or a denser reward "
            "(partial credit instead of all-or-nothing)"
        )


class StuckLoss(Check):
    """A training loss that stays at its first value (within ``rtol``) for ``steps`` optimiser steps: the
    update is not reaching what the loss sees. Steps without reward variance (online RL, a loss of 0 that
    `NoRewardVariance` explains) are not counted.

    Args:
        steps: Consecutive steps at the initial value before warning.
        rtol: Relative tolerance around the initial value.
        atol: Absolute tolerance (a loss that starts at 0).
        metric: The loss watched.
        lr: ``optim.lr``, quoted in the advice.
    """

    STATE = ("initial", "streak", "moved")

    def __init__(
        self,
        steps: int = 20,
        rtol: float = 1e-4,
        atol: float = 1e-8,
        metric: str = "train/loss",
        lr: float | None = None,
    ) -> None:
        self.steps, self.rtol, self.atol, self.metric, self.lr = steps, rtol, atol, metric, lr
        self.initial: float | None = None
        self.streak = 0
        self.moved = False

    def train_step(self, metrics: Mapping[str, float]) -> str | None:
        value = metrics.get(self.metric)
        if self.moved or value is None or not math.isfinite(value):
            return None
        if metrics.get(NoRewardVariance.METRIC, 0.0) >= 1.0 - 1e-6:
            return None
        if self.initial is None:
            self.initial = value
        if abs(value - self.initial) > self.rtol * abs(self.initial) + self.atol:
            self.moved = True
            return None
        self.streak += 1
        return self.message() if self.streak >= self.steps else None

    def message(self) -> str:
        assert self.initial is not None
        ln2 = " (ln 2: chosen and rejected still score alike)" if abs(self.initial - LN2) < 1e-3 else ""
        lr = f", now {self.lr:g}" if self.lr is not None else ""
        return (
            f"{self.metric} has stayed at its initial value {self.initial:.6g}{ln2} for {self.streak} steps "
            f"(within {self.rtol:.0e} relative): the updates do not change what the loss sees. Likely "
            f"causes: a learning rate of 0 or far too small (optim.lr{lr}; optim.warmup_ratio / "
            "warmup_steps), parameters that are frozen or not in the optimiser (the adapter's target "
            "modules, a model loaded without gradients), or gradients clipped or zeroed "
            "(trainer.gradient_clip_val)"
        )


class RewardModelAtChance(Check):
    """A reward model at chance: held-out accuracy at most ``max_accuracy`` (or, without an accuracy, a loss
    within ``loss_tolerance`` of ln 2), checked once ``epochs`` epochs are trained and at the run's last
    validation.

    Args:
        epochs: Epochs of training before the first check during the run.
        max_accuracy: Held-out pairwise accuracy at or below which it is at chance.
        loss_tolerance: Distance of the held-out loss from ln 2 that counts as at chance (no accuracy logged).
        min_steps: Optimiser steps before any check (a run's last validation included).
        lr: ``optim.lr``, quoted in the advice.
    """

    ACCURACY, LOSS = "val/rewards/accuracies", "val/loss"

    def __init__(
        self,
        epochs: float = 1.0,
        max_accuracy: float = 0.55,
        loss_tolerance: float = 0.01,
        min_steps: int = 20,
        lr: float | None = None,
    ) -> None:
        self.epochs, self.max_accuracy, self.loss_tolerance = epochs, max_accuracy, loss_tolerance
        self.min_steps, self.lr = min_steps, lr

    def validation(self, metrics: Mapping[str, float], epochs: float, steps: int, final: bool) -> str | None:
        if steps < self.min_steps or not (final or epochs >= self.epochs):
            return None
        accuracy, loss = metrics.get(self.ACCURACY), metrics.get(self.LOSS)
        if accuracy is not None:
            at_chance = accuracy <= self.max_accuracy
        else:
            at_chance = loss is not None and abs(loss - LN2) <= self.loss_tolerance
        if not at_chance:
            return None
        seen = [f"held-out accuracy {accuracy:.2f} ({self.ACCURACY})"] if accuracy is not None else []
        if loss is not None:
            tie = " = ln 2: chosen and rejected score alike" if abs(loss - LN2) <= self.loss_tolerance else ""
            seen.append(f"loss {loss:.4f} ({self.LOSS}{tie})")
        lr = f", now {self.lr:g}" if self.lr is not None else ""
        return (
            f"the reward model is at chance after {epochs:.2f} epochs ({steps} steps): {', '.join(seen)}. "
            f"Likely causes: a learning rate too small for its new score head (optim.lr{lr}; the README's "
            "example uses optim.lr=2e-3), too little training (trainer.max_steps, trainer.max_epochs), or "
            "pairs this model cannot tell apart (chosen and rejected identical, swapped or noisily labelled)"
        )


def _floats(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items() if key.startswith(prefix)}


class Diagnostics(Callback):
    """Runs `Check`s on the metrics of a fit and its final validation; each check's warning is logged once.

    Args:
        checks: The checks, each with its thresholds.
    """

    def __init__(self, checks: list[Check]) -> None:
        super().__init__()
        self.checks = checks
        self.warned: list[str] = []
        self.epochs = 0.0

    def warn(self, trainer: L.Trainer, check: Check, message: str | None) -> None:
        name = type(check).__name__
        if message is None or name in self.warned:
            return
        self.warned.append(name)
        if trainer.is_global_zero:
            log.warning(message)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False) or should_accumulate(trainer):
            return
        batches = trainer.num_training_batches
        self.epochs = trainer.current_epoch + ((batch_idx + 1) / batches if math.isfinite(batches) else 0.0)
        metrics = _floats(trainer.callback_metrics, "train/")
        for check in self.checks:
            self.warn(trainer, check, check.train_step(metrics))

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False) or trainer.global_step == 0:
            return  # the start validation says nothing about training
        final = trainer.state.fn != TrainerFn.FITTING
        metrics = _floats(trainer.callback_metrics, "val/")
        for check in self.checks:
            self.warn(trainer, check, check.validation(metrics, self.epochs, trainer.global_step, final))

    def state_dict(self) -> dict[str, Any]:
        return {
            "warned": self.warned,
            "epochs": self.epochs,
            "checks": {type(check).__name__: check.state_dict() for check in self.checks},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warned = list(state_dict.get("warned") or [])
        self.epochs = float(state_dict.get("epochs") or 0.0)
        states = state_dict.get("checks") or {}
        for check in self.checks:
            check.load_state_dict(states.get(type(check).__name__) or {})


def diagnostics_for(cfg: Any, objective: Any = None) -> Diagnostics:
    """The checks that apply to a run of ``cfg`` (its settings quoted in the advice); a reward model's
    at-chance check for ``algo=reward``."""
    from rlhf_lab.objectives.reward import RewardModel

    algo, lr = cfg.algo, cfg.optim.get("lr")
    checks: list[Check] = [
        NoRewardVariance(num_generations=algo.get("num_generations"), temperature=algo.get("temperature")),
        StuckLoss(lr=lr),
    ]
    if isinstance(objective, RewardModel):
        checks.append(RewardModelAtChance(lr=lr))
    return Diagnostics(checks)
