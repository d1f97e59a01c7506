"""Online-RL machinery the online objective is built from: the typed `Rollout`, the `RolloutEngine` that
samples it, the reward scorer, the registered parts (estimator, policy loss, aggregation) and metrics.

The pure functions themselves live in `rlhf_lab.losses.advantages` and `rlhf_lab.losses.policy_gradient`;
`rlhf_lab.objectives.online.OnlineObjective` is the one LightningModule that runs them.
"""

from rlhf_lab.rl.engine import ENGINES, InProcessEngine, RolloutEngine
from rlhf_lab.rl.parts import RLParts
from rlhf_lab.rl.rollout import Completions, Rollout

__all__ = ["ENGINES", "Completions", "InProcessEngine", "RLParts", "Rollout", "RolloutEngine"]
