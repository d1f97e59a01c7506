"""Rewards that fail, under ``algo.reward_errors``: a mixin of the online objective (through `RolloutActor`).

`rlhf_lab.rewards.reward_values` says which reward failed on which completions; `RewardFailures.settle_rewards`
decides what follows, every process alike (a collective per scored batch under several processes, so no
process stops or skips alone): ``stop`` raises `RewardError` on every process, whose one line names the
failing reward, the step and the first offending prompt (the checkpoint callback keeps ``last.ckpt``);
``skip`` drops every completion of each prompt a reward failed on. Dropped completions leave the loss mask,
their advantages are 0 and the estimator runs on the kept ones alone (a GRPO or RLOO group's advantages
are its own), an optimiser step with no kept completion on any process is taken without gradients (the
optimiser leaves the weights and its state alone; the step counts), and ``train/reward_errors`` is the run's
count of dropped prompts over every process (checkpointed with the run's state).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import torch

from rlhf_lab.lightning_compat import attached_trainer
from rlhf_lab.rewards import RewardError, failure_message
from rlhf_lab.rl.metrics import reward_metrics
from rlhf_lab.rl.rollout import Completions
from rlhf_lab.rl.scoring import Scores

log = logging.getLogger(__name__)


class RewardFailures:
    """``algo.reward_errors`` applied to the failures of the rewards (mixed into `OnlineObjective`)."""

    # Provided by OnlineObjective / AlignmentObjective.
    device: torch.device
    reward_errors: str
    dropped_groups: int
    #: Whether the current validation scored some held-out completion (``skip`` may drop them all).
    _held_out_scored: bool = False

    if TYPE_CHECKING:  # provided by RolloutActor (a definition here would shadow it)

        @property
        def reward_names(self) -> list[str]: ...

    def _attached_trainer(self) -> Any:
        """The trainer this objective is attached to, or None (`attached_trainer`)."""
        return attached_trainer(cast(Any, self))

    def gather_objects(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order (``[value]`` in a single process)."""
        trainer = self._attached_trainer()
        if trainer is None or trainer.world_size == 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered

    def settle_rewards(
        self, decoded: Completions, scores: Scores, group_size: int, split: str
    ) -> torch.Tensor | None:
        """Apply ``algo.reward_errors`` to the rewards that failed, every process taking the same decision.

        ``stop``: `RewardError` on every process when a reward failed on any (the message is the first
        failing process's: the reward, the step, the first offending prompt), the last state being kept by
        the checkpoint callback; returns None. ``skip``: returns ``[N]`` bool, False for every completion of a
        prompt some reward failed on; training rollouts add the dropped prompts of every process to
        ``dropped_groups`` (``train/reward_errors``).
        """
        trainer = self._attached_trainer()
        failed = scores.failed_rows()
        count = len(decoded.completions)
        kept = torch.ones(count, dtype=torch.bool)
        for row in failed:
            start = row - row % group_size
            kept[start : start + group_size] = False
        dropped = (count - int(kept.sum())) // group_size
        message = None
        if scores.failures:
            message = failure_message(scores.failures[0], decoded.prompts, self._where(split))
            if trainer is not None and trainer.world_size > 1:
                message += f" (process {trainer.global_rank})"
        gathered = self.gather_objects((message, dropped))
        first = next((text for text, _ in gathered if text), None)
        if first is not None and self.reward_errors == "stop":
            kept_file = trainer is not None and trainer.global_step > 0 and not trainer.sanity_checking
            raise RewardError(
                f"{first}; the run stops (algo.reward_errors=stop; algo.reward_errors=skip drops such prompts "
                "and trains on)" + (". Its last state is in checkpoints/last.ckpt" if kept_file else "")
            )
        if self.reward_errors == "stop":
            return None
        total = sum(n for _, n in gathered)
        if split == "train":
            self.dropped_groups += total
        so_far = f"; {self.dropped_groups} dropped so far" if split == "train" else ""
        for failure in scores.failures:
            message = failure_message(failure, decoded.prompts, self._where(split))
            log.warning("%s; its prompts are dropped (algo.reward_errors=skip%s)", message, so_far)
        return kept

    def _where(self, split: str) -> str:
        """Where in the run a reward is called, for messages."""
        trainer = self._attached_trainer()
        if trainer is None:
            return "outside training"
        if split == "train":
            return f"at training step {trainer.global_step + 1}"
        return f"in the validation at step {trainer.global_step}"

    def kept_reward_metrics(
        self,
        rewards: torch.Tensor,
        per_reward: torch.Tensor,
        kept: torch.Tensor | None,
        generations: int,
        split: str = "train",
    ) -> dict[str, torch.Tensor]:
        """`reward_metrics` over the kept completions; under ``skip``, over every process's kept completions
        together (each process then logs the same values, so the mean over processes is theirs and every
        process logs the same keys), and none when no completion is kept anywhere."""
        if kept is None:
            return reward_metrics(rewards, per_reward, self.reward_names, generations)
        kept = kept.to(rewards.device)
        rewards, per_reward = rewards[kept], per_reward[kept]
        gathered = self.gather_objects((rewards.cpu(), per_reward.cpu()))
        if len(gathered) > 1:
            rewards = torch.cat([r for r, _ in gathered]).to(self.device)
            per_reward = torch.cat([p for _, p in gathered]).to(self.device)
        if rewards.numel() == 0:
            return {}
        self._held_out_scored = self._held_out_scored or split == "val"
        return reward_metrics(rewards, per_reward, self.reward_names, generations)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()  # type: ignore[misc]
        self._held_out_scored = False

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # type: ignore[misc]
        trainer = self._attached_trainer()
        batches = sum(trainer.num_val_batches) if trainer is not None and not trainer.sanity_checking else 0
        if self.reward_errors == "skip" and batches and not self._held_out_scored:
            # Nothing to log as val/reward: the checkpoint callback would fail on the missing metric.
            raise RewardError(
                f"{self._where('val')}, a reward failed on every held-out prompt (algo.reward_errors=skip dropped "
                "them all, see the warnings above): there is no val/reward to rank checkpoints by; the run stops"
            )

    def any_process(self, decision: bool) -> bool:
        """True when ``decision`` holds on some process."""
        return any(self.gather_objects(decision))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint["rlhf_lab"]["reward_errors"] = self.dropped_groups

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        self.dropped_groups = int((checkpoint.get("rlhf_lab") or {}).get("reward_errors", 0))

    @staticmethod
    def take_empty_step(optimizer: Any, scheduler: Any) -> None:
        """An optimiser step with no gradients (every prompt of it dropped on every process): the optimiser
        skips parameters without one, so nothing changes, and the step counts like any other."""
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
