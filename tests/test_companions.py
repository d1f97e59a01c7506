"""Models built beside the policy from their own specs: a teacher of another size and a reward model with
its own tokenizer load frozen next to the policy, alone and under 2-process DDP, FSDP2 and ZeRO-3, and the
policy's generations are the same on every rank and strategy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf_lab.errors import ConfigError
from rlhf_lab.models.build import Companion
from rlhf_lab.objectives import PairwiseObjective
from tests.scripts.probe_models import TEACHER
from tests.subprocesses import python_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sequence-classification model with its own (smaller) BPE vocabulary, saved like an export."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.data.synthetic import SyntheticPreferences
    from rlhf_lab.models import TinyModel

    texts = [
        message["content"]
        for block in SyntheticPreferences(num_train=64, num_eval=8).load()["train"]
        for row in block.rows
        for value in (row["prompt"], row["chosen"])
        for message in value
    ]
    spec = TinyModel(
        vocab_size=384, hidden_size=32, num_layers=1, cache_dir=str(tmp_path_factory.mktemp("rm"))
    )
    spec.prepare(lambda: texts)
    torch.manual_seed(7)
    model = AutoModelForSequenceClassification.from_pretrained(spec.name_or_path, num_labels=1)
    out = tmp_path_factory.mktemp("reward_export")
    model.save_pretrained(out)
    spec.load_tokenizer().save_pretrained(out)
    return out


def probe(out_dir: Path, reward_model_dir: Path, *overrides: str) -> list[dict]:
    result = python_module("tests.scripts.probe_models", str(out_dir), str(reward_model_dir), *overrides)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(path.read_text()) for path in sorted(out_dir.glob("rank*.json"))]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, reward_model_dir: Path) -> dict:
    (report,) = probe(tmp_path_factory.mktemp("single"), reward_model_dir)
    return report


def test_companions_load_frozen_beside_the_policy(single: dict) -> None:
    assert single["world_size"] == 1
    teacher, reward = single["teacher"], single["reward"]
    assert teacher["trainable"] == 0 and reward["trainable"] == 0
    assert not teacher["training"] and not reward["training"]
    # Another width and depth than the policy (hidden 64, 2 layers), the same vocabulary.
    assert (teacher["hidden_size"], teacher["num_layers"]) == (TEACHER["hidden_size"], TEACHER["num_layers"])
    # The reward model tokenises with its own, smaller vocabulary (texts decoded, then re-encoded).
    assert reward["vocabulary"] < single["policy_vocabulary"]
    assert len(single["reward_scores"]) == 4 and len(set(single["reward_scores"])) == 4


def test_generation_log_probs_equal_a_teacher_forced_pass(single: dict) -> None:
    mask = torch.tensor(single["completion_mask"])
    generated = torch.tensor(single["generation_logps"])[mask]
    forced = torch.tensor(single["forced_logps"])[mask]
    torch.testing.assert_close(generated, forced, atol=1e-5, rtol=0)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero3"])
def test_companions_and_generation_under_two_processes(
    strategy: str, single: dict, reward_model_dir: Path, tmp_path: Path
) -> None:
    """Each rank holds the same frozen teacher and reward model (sharded under FSDP2), scores the same
    rows as one process does, and generates the same tokens (sharded parameters gathered in every step)."""
    reports = probe(
        tmp_path, reward_model_dir, f"strategy={strategy}", "trainer.devices=2", "data.batch_size=4"
    )
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world_size"] == 2 for r in reports)
    for report in reports:
        for name in ("teacher", "reward"):
            assert report[name] == single[name], (strategy, name)
        torch.testing.assert_close(
            torch.tensor(report["teacher_logps"]), torch.tensor(single["teacher_logps"]), atol=1e-4, rtol=1e-5
        )
        torch.testing.assert_close(
            torch.tensor(report["reward_scores"]), torch.tensor(single["reward_scores"]), atol=1e-5, rtol=1e-5
        )
        assert report["completion_ids"] == single["completion_ids"]
        mask = torch.tensor(report["completion_mask"])
        torch.testing.assert_close(
            torch.tensor(report["generation_logps"])[mask],
            torch.tensor(single["generation_logps"])[mask],
            atol=1e-4,
            rtol=0,
        )


def test_a_teacher_with_another_vocabulary_fails_before_training(make_config) -> None:
    from rlhf_lab.models import TinyModel
    from rlhf_lab.models.adapters import FullFinetune
    from rlhf_lab.models.build import Companion, build_models
    from rlhf_lab.quant import NoQuantization
    from rlhf_lab.train import build

    objective, datamodule, _ = build(make_config())
    teacher = TinyModel(vocab_size=384, cache_dir=objective.model_spec.cache_dir)
    teacher.prepare(datamodule.corpus)
    with pytest.raises(ConfigError) as caught:
        build_models(
            objective.model_spec,
            FullFinetune(),
            NoQuantization(),
            companions={"teacher": Companion(teacher, same_vocabulary=True)},
        )
    message = str(caught.value)
    assert "the teacher and the policy must share a vocabulary" in message
    assert teacher.name_or_path in message and objective.model_spec.name_or_path in message
    assert "384" in message or "has 3" in message


class WithCritic(PairwiseObjective):
    """DPO plus a trainable value model built from the policy's spec (PPO's critic)."""

    def companion_specs(self) -> dict[str, Companion]:
        return {
            **super().companion_specs(),
            "value": Companion(self.model_spec, task="sequence_classification", trainable=True),
        }


def test_a_trainable_value_model_is_optimised_and_checkpointed_with_the_policy(tmp_path: Path) -> None:
    from omegaconf import open_dict

    from rlhf_lab.policy import ValueModel
    from rlhf_lab.train import run
    from tests.conftest import compose_config

    cfg = compose_config(["trainer.max_steps=1", "trainer.limit_val_batches=1"], run_dir=tmp_path)
    with open_dict(cfg.algo):
        cfg.algo._target_ = f"{__name__}.WithCritic"
    result = run(cfg)
    critic = result.objective.companions["value"]
    assert isinstance(critic, ValueModel) and all(p.requires_grad for p in critic.parameters())
    optimised = {id(p) for group in result.trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in critic.parameters()} <= optimised
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    assert "companions.value.model.score.weight" in state
    assert not any(key.startswith("reference.") for key in state)  # frozen weights stay out
    # Values at every position: the classifier's score head on each hidden state.
    batch = next(iter(result.datamodule.val_dataloader()))
    with torch.no_grad():
        values = critic(batch.sequences)
        hidden = critic.model.model(
            input_ids=batch.sequences.input_ids, attention_mask=batch.sequences.attention_mask
        ).last_hidden_state
        expected = critic.model.score(hidden).squeeze(-1)
    assert values.shape == batch.sequences.input_ids.shape
    mask = batch.sequences.attention_mask.bool()
    torch.testing.assert_close(values[mask], expected[mask], atol=1e-5, rtol=1e-5)
