"""Sample tables of online RL: ``samples/step_NNNNNN.jsonl`` in the run directory and a W&B table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rlhf_lab.rl.rollout import Rollout


def sample_rows(rollout: Rollout, reward_names: list[str], step: int) -> list[dict[str, Any]]:
    """One row per completion: prompt, completion, reward, each named reward and the advantage."""
    assert rollout.texts is not None
    per_reward, rewards = rollout.require("per_reward"), rollout.require("rewards")
    advantages = rollout.advantages
    rows = []
    for i, (prompt, completion) in enumerate(
        zip(rollout.texts.prompts, rollout.texts.completions, strict=True)
    ):
        if rollout.kept is not None and not bool(rollout.kept[i]):
            continue  # dropped (a reward failed on its prompt): no reward to show
        row: dict[str, Any] = {
            "step": step,
            "prompt": prompt,
            "completion": completion,
            "reward": float(rewards[i]),
        }
        for column, name in enumerate(reward_names):
            score = float(per_reward[i, column])
            row[f"rewards/{name}"] = None if math.isnan(score) else score
        if advantages is not None:
            advantage = advantages[i]
            row["advantage"] = float(advantage if advantage.ndim == 0 else advantage[rollout.mask[i]].mean())
        rows.append(row)
    return rows


def write_samples(rows: list[dict[str, Any]], run_dir: str, step: int, loggers: list[Any]) -> None:
    """Write ``rows`` to ``<run_dir>/samples/step_<step>.jsonl`` and to every logger with tables (W&B)."""
    path = Path(run_dir) / "samples" / f"step_{step:06d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    columns = list(rows[0])
    table = [[json.dumps(r[c]) if isinstance(r[c], (list, dict)) else r[c] for c in columns] for r in rows]
    for logger in loggers:
        if hasattr(logger, "log_table"):  # W&B
            logger.log_table(key="samples", columns=columns, data=table)
