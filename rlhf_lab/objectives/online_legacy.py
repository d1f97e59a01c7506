"""The online-RL classes of runs written before GRPO, RLOO and PPO became YAML files over `OnlineObjective`.

A saved ``config.yaml`` that names ``rlhf_lab.objectives.GRPO`` (``RLOO``, ``PPO``) still builds: each name
is a function that gives `OnlineObjective` the parts that class hard-coded. Their keys are read as they were
(TRL's ``loss_type``, ``cliprange`` and ``num_ppo_epochs`` are aliases), and checkpoints hold the same keys.
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.objectives.online import OnlineObjective


def GRPO(**kwargs: Any) -> OnlineObjective:
    """`OnlineObjective` with the ``grpo`` estimator (``loss_type`` defaulting to ``grpo``)."""
    kwargs.setdefault("loss_type", "grpo")
    return OnlineObjective(advantage_estimator="grpo", policy_loss="ppo_clip", **kwargs)


def RLOO(**kwargs: Any) -> OnlineObjective:
    """`OnlineObjective` with the ``rloo`` estimator, a per-sequence sum and (by default) KL in the reward."""
    kwargs.setdefault("beta", 0.05)
    kwargs.setdefault("kl_in_reward", True)
    return OnlineObjective(advantage_estimator="rloo", loss_agg_mode="seq_mean_token_sum", **kwargs)


def PPO(**kwargs: Any) -> OnlineObjective:
    """`OnlineObjective` with GAE against a critic, token-mean losses, shuffled mini-batches, KL in the reward."""
    kwargs.setdefault("beta", 0.05)
    kwargs.setdefault("num_generations", 1)
    kwargs.setdefault("num_ppo_epochs", 4)
    return OnlineObjective(
        advantage_estimator="gae",
        loss_agg_mode="token_mean",
        shuffle_mini_batches=True,
        kl_in_reward=True,
        **kwargs,
    )
