"""A run with a teacher and a reward model built beside the policy, probed on every rank.

    python -m tests.scripts.probe_models <out dir> <reward model dir> [overrides ...]

Used by tests/test_companions.py, as its own process because Lightning's DDP relaunches the command line.
The objective is DPO plus two companions: a tiny teacher of another width and depth (same vocabulary) and
a reward model with its own tokenizer. At the start of training each rank writes ``rank<r>.json``: how the
companions were built (frozen, eval mode, their sizes), the teacher's log-probs and the reward model's
scores on fixed held-out rows, and greedy generations of the policy with their log-probs and a
teacher-forced re-scoring of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import open_dict

from rlhf_lab.data.collate import PromptCollator
from rlhf_lab.data.formats import PreferenceExample
from rlhf_lab.generation import SamplingConfig
from rlhf_lab.models import HubModel, TinyModel
from rlhf_lab.models.build import Companion
from rlhf_lab.objectives import PairwiseObjective

TEACHER = {"hidden_size": 96, "num_layers": 3, "intermediate_size": 160, "seed": 5}


class ProbeObjective(PairwiseObjective):
    """DPO with a teacher and a reward model beside the policy; reports what each rank sees."""

    def __init__(self, out_dir: str, reward_model: str, cache_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_dir = Path(out_dir)
        self.teacher_spec = TinyModel(cache_dir=cache_dir, **TEACHER)
        self.reward_spec = HubModel(name_or_path=reward_model, dtype="float32")

    def companion_specs(self) -> dict[str, Companion]:
        return {
            **super().companion_specs(),
            "teacher": Companion(self.teacher_spec, same_vocabulary=True),
            "reward": Companion(self.reward_spec, task="sequence_classification"),
        }

    def on_train_start(self) -> None:
        datamodule = self.trainer.datamodule
        tokenizer = datamodule.tokenizer
        examples = datamodule.datasets["val"].examples[:4]
        items = list(enumerate(examples))
        batch = datamodule.collator("val")(items)
        sequences = batch.sequences.to(self.device)
        teacher, reward = self.companions["teacher"], self.companions["reward"]

        prompts = PromptCollator(pad_token_id=tokenizer.pad_token_id)(items).sequences.to(self.device)
        generation = self.policy.generate(
            prompts,
            SamplingConfig(max_new_tokens=8, do_sample=False),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.no_grad():
            forced = self.policy(generation.sequences(), per_token=True).token_logps[
                :, prompts.input_ids.shape[1] :
            ]
        texts = [
            PreferenceExample(
                prompt=tokenizer.decode(example.prompt_ids, skip_special_tokens=True),
                chosen=tokenizer.decode(example.chosen_ids, skip_special_tokens=True),
                rejected=None,
                source=f"val:{index}",
            )
            for index, example in items
        ]
        report = {
            "rank": self.global_rank,
            "world_size": self.trainer.world_size,
            "teacher": describe(teacher),
            "reward": {**describe(reward), "vocabulary": len(reward.tokenizer)},
            "policy_vocabulary": len(tokenizer),
            "teacher_logps": teacher(sequences).logps.tolist(),
            "reward_scores": reward.score_examples(texts).tolist(),
            "completion_ids": generation.completion_ids.tolist(),
            "completion_mask": generation.completion_mask.tolist(),
            "generation_logps": generation.logps.tolist(),
            "forced_logps": forced.tolist(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{self.global_rank}.json").write_text(json.dumps(report))


def describe(frozen: torch.nn.Module) -> dict[str, Any]:
    config = frozen.model.config
    return {
        "trainable": sum(p.requires_grad for p in frozen.parameters()),
        "training": frozen.training or frozen.model.training,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        # Full sizes: an FSDP2 DTensor counts globally, a ZeRO-3 partitioned parameter keeps it in ds_numel.
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in frozen.parameters()),
    }


def main(out_dir: str, reward_model: str, *overrides: str) -> None:
    from rlhf_lab.cli import quiet_libraries
    from rlhf_lab.config import register_schemas
    from rlhf_lab.train import run
    from tests.conftest import compose_config

    quiet_libraries()
    register_schemas()
    cfg = compose_config(
        ["trainer.max_steps=1", "trainer.limit_val_batches=1", "export.enabled=false", *overrides],
        run_dir=Path(out_dir) / "run",
    )
    with open_dict(cfg.algo):
        cfg.algo._target_ = f"{__name__}.ProbeObjective"
        cfg.algo.out_dir = out_dir
        cfg.algo.reward_model = reward_model
        cfg.algo.cache_dir = cfg.paths.cache_dir
    run(cfg)


if __name__ == "__main__":
    main(*sys.argv[1:])
