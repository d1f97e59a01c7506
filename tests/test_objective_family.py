"""Every objective: a smoke run per conf/algo/*.yaml, and its logged metrics recomputed independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_object
from omegaconf import OmegaConf
from torch.testing import assert_close

from rlhf_lab.data.batches import Sequences
from rlhf_lab.objectives import RolloutObjective
from rlhf_lab.train import build, run
from tests.conftest import compose_config
from tests.naive import full_logits, naive_logps

ALGO_DIR = Path(__file__).resolve().parents[1] / "rlhf_lab" / "conf" / "algo"
ALGOS = sorted(path.stem for path in ALGO_DIR.glob("*.yaml"))


# The online-RL options: those whose target samples its own completions (read from the YAML, not listed).
def _target(algo: str) -> type:
    # (An option without a _target_ builds on another one, e.g. ipo on dpo: neither online nor distillation.)
    return get_object(OmegaConf.load(ALGO_DIR / f"{algo}.yaml").get("_target_") or "builtins.object")


ONLINE = tuple(algo for algo in ALGOS if issubclass(_target(algo), RolloutObjective))
# The distillation options: their target takes a teacher.
DISTILL = tuple(algo for algo in ALGOS if "teacher" in getattr(_target(algo), "RUNTIME_ARGS", ()))
ONLINE_SMOKE = (
    "data=synthetic_rl",
    "data.source.num_train=64",
    "data.source.num_eval=16",
    "data.batch_size=4",
    "algo.reward_functions=[tests.custom_rewards.even_tokens]",
    "algo.max_new_tokens=12",
)


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algo_config_trains(algo: str, tmp_path: Path) -> None:
    """A few steps of each objective: finite losses, the weights move, paired held-out metrics exist (online
    RL: held-out rewards of generated completions)."""
    online = algo in ONLINE
    overrides = [f"algo={algo}", "trainer.max_steps=3", "trainer.limit_val_batches=1", "optim.lr=1e-3"]
    if online:
        # The untrained tiny model earns no exact-match reward; a dense user-supplied reward gives every rollout a signal.
        overrides += [*ONLINE_SMOKE, "algo.num_generations=2"]
    if algo in DISTILL:
        # A larger tiny teacher built from the same corpus: the same tokenizer, other weights.
        overrides += ["teacher=tiny", "teacher.hidden_size=96", "teacher.seed=1"]
        if algo != "kd":
            overrides.append("algo.max_new_tokens=8")  # seqkd and gkd generate
    result = run(compose_config(overrides, run_dir=tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert math.isfinite(summary["train/loss"])
    assert math.isfinite(summary["val/reward" if online else "val/loss"])
    # Online RL takes its steps per rollout (PPO: num_ppo_epochs) and stops at the rollout that reaches 3.
    assert summary["trainer/global_step"] >= 3 if online else summary["trainer/global_step"] == 3
    if online:
        assert {
            "val/reward",
            "val/completions/mean_length",
            {"online_dpo": "train/rewards/margins"}.get(
                algo, "train/kl" if "train/kl" in summary else "train/entropy"
            ),
        } <= set(summary)
    elif algo in DISTILL:
        assert {"val/teacher_student_kl/forward", "val/teacher_student_kl/reverse", "val/kd_loss"} <= set(
            summary
        )
    elif algo != "sft":
        # Every preference objective reports held-out accuracy and margin on paired data, on one scale.
        assert {"val/rewards/accuracies", "val/rewards/margins"} <= set(summary)
    trained = dict(result.objective.policy.model.named_parameters())
    from safetensors.torch import load_file

    initial = load_file(str(Path(result.objective.model_spec.name_or_path) / "model.safetensors"))
    moved = [
        name
        for name, p in trained.items()
        if name.endswith("q_proj.weight")
        and not torch.equal(p.detach(), initial[name.removeprefix("model.").join(["model.", ""])])
    ]
    assert moved, "no attention weight changed"


def naive_policy_logps(objective, batch, score_prompt: bool = False) -> torch.Tensor:
    return naive_logps(objective.policy.model, batch.sequences, score_prompt)


def perturbed(overrides: list[str]):
    objective, datamodule, _ = build(compose_config(overrides))
    objective.configure_model()
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in objective.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    batch = next(iter(datamodule.val_dataloader()))
    return objective, batch


def check_pairwise(metrics, chosen_rewards, rejected_rewards, logps, pairs) -> None:
    expected = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": logps[:pairs].mean(),
        "logps/rejected": logps[pairs:].mean(),
    }
    for name, value in expected.items():
        assert_close(metrics[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_cpo_metrics_and_loss() -> None:
    objective, batch = perturbed(["algo=cpo", "algo.beta=0.5", "algo.cpo_alpha=0.7"])
    loss, metrics = objective.compute(batch, "val")
    pairs = batch.size
    logps = naive_policy_logps(objective, batch)
    lengths = batch.sequences.completion_mask[:, 1:].sum(1)
    c, r = logps[:pairs], logps[pairs:]
    nll = -c / lengths[:pairs]
    expected_loss = (-F.logsigmoid(0.5 * (c - r)) + 0.7 * nll).mean()
    assert_close(loss, expected_loss, rtol=1e-4, atol=1e-5)
    assert_close(metrics["nll_loss"], nll.mean(), rtol=1e-4, atol=1e-5)
    check_pairwise(metrics, 0.5 * c, 0.5 * r, logps, pairs)


def test_cpo_ipo_compares_per_token_means() -> None:
    """CPO's ipo loss type on length-normalised log-probs (as TRL's CPO and this project's DPO ipo), and
    its rewards on the same scale, so rewards/accuracies is the share of pairs the loss ranks correctly."""
    objective, batch = perturbed(["algo=cpo", "algo.loss_type=ipo", "algo.beta=0.5", "algo.cpo_alpha=0"])
    loss, metrics = objective.compute(batch, "val")
    pairs = batch.size
    logps = naive_policy_logps(objective, batch)
    mean = logps / batch.sequences.completion_mask[:, 1:].sum(1).float()
    h = mean[:pairs] - mean[pairs:]
    assert_close(loss, ((h - 1.0) ** 2).mean(), rtol=1e-4, atol=1e-5)
    check_pairwise(metrics, 0.5 * mean[:pairs], 0.5 * mean[pairs:], logps, pairs)


def test_ipo_rewards_are_the_length_normalised_log_ratios() -> None:
    """IPO's loss compares per-token mean log-ratios; its rewards (and so rewards/accuracies) are those,
    while logps/* stay the summed completion log-probs of every objective."""
    objective, batch = perturbed(["algo=ipo", "algo.beta=0.5"])
    loss, metrics = objective.compute(batch, "val")
    pairs = batch.size
    policy = naive_policy_logps(objective, batch)
    reference = naive_logps(objective.reference.model.model, batch.sequences)
    ratio = (policy - reference) / batch.sequences.completion_mask[:, 1:].sum(1).float()
    h = ratio[:pairs] - ratio[pairs:]
    assert_close(loss, ((h - 1 / (2 * 0.5)) ** 2).mean(), rtol=1e-4, atol=1e-5)
    check_pairwise(metrics, 0.5 * ratio[:pairs], 0.5 * ratio[pairs:], policy, pairs)
    assert_close(metrics["rewards/accuracies"], (h > 0).float().mean())


def test_simpo_metrics_and_loss() -> None:
    objective, batch = perturbed(["algo=cpo_simpo", "algo.beta=2.0", "algo.gamma=0.5", "algo.cpo_alpha=0.3"])
    loss, metrics = objective.compute(batch, "val")
    pairs = batch.size
    logps = naive_policy_logps(objective, batch)
    lengths = batch.sequences.completion_mask[:, 1:].sum(1).float()
    mean = logps / lengths
    nll = -mean[:pairs]
    expected_loss = (-F.logsigmoid(2.0 * (mean[:pairs] - mean[pairs:]) - 0.5) + 0.3 * nll).mean()
    assert_close(loss, expected_loss, rtol=1e-4, atol=1e-5)
    check_pairwise(metrics, 2.0 * mean[:pairs], 2.0 * mean[pairs:], logps, pairs)


@pytest.mark.parametrize("nll_on_prompt", [False, True])
def test_orpo_metrics_and_loss(nll_on_prompt: bool) -> None:
    objective, batch = perturbed(["algo=orpo", "algo.lambda=0.25", f"algo.nll_on_prompt={nll_on_prompt}"])
    loss, metrics = objective.compute(batch, "val")
    pairs = batch.size
    logps = naive_policy_logps(objective, batch)
    lengths = batch.sequences.completion_mask[:, 1:].sum(1).float()
    mean = logps / lengths
    c, r = mean[:pairs], mean[pairs:]
    log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    if nll_on_prompt:
        full = naive_policy_logps(objective, batch, score_prompt=True)[:pairs]
        nll = -full / batch.sequences.attention_mask[:pairs, 1:].sum(1)
    else:
        nll = -c
    expected_loss = (nll - 0.25 * F.logsigmoid(log_odds)).mean()
    assert_close(loss, expected_loss, rtol=1e-4, atol=1e-5)
    assert_close(metrics["log_odds_chosen"], log_odds.mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["log_odds_ratio"], F.logsigmoid(log_odds).mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["nll_loss"], nll.mean(), rtol=1e-4, atol=1e-5)
    check_pairwise(metrics, 0.25 * c, 0.25 * r, logps, pairs)


def test_dpo_weighted_loss_types() -> None:
    """loss_type=[sigmoid, hinge] with weights [1, 0.5]: the weighted sum of the two DPO losses."""
    objective, batch = perturbed(
        ["algo.beta=0.5", "algo.loss_type=[sigmoid,hinge]", "algo.loss_weights=[1.0,0.5]"]
    )
    loss, metrics = objective.compute(batch, "val")
    pairs = batch.size
    policy = naive_policy_logps(objective, batch)
    reference = naive_logps(objective.reference.model.model, batch.sequences)
    h = (policy[:pairs] - reference[:pairs]) - (policy[pairs:] - reference[pairs:])
    sigmoid, hinge = -F.logsigmoid(0.5 * h), torch.relu(1 - 0.5 * h)
    assert_close(loss, (sigmoid + 0.5 * hinge).mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["loss/sigmoid"], sigmoid.mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["loss/hinge"], hinge.mean(), rtol=1e-4, atol=1e-5)


def test_reward_model_metrics_and_loss() -> None:
    objective, batch = perturbed(["algo=reward", "algo.center_rewards_coefficient=0.01"])
    loss, metrics = objective.compute(batch, "val")
    pairs = batch.size
    # HF's own pooling (last non-pad id) agrees here: the tiny tokenizer's pad is not EOS.
    scores = full_logits(objective.policy.model, batch.sequences).squeeze(-1)
    c, r = scores[:pairs], scores[pairs:]
    assert_close(loss, (-F.logsigmoid(c - r) + 0.01 * (c + r) ** 2).mean(), rtol=1e-4, atol=1e-5)
    expected = {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/accuracies": (c > r).float().mean(),
        "rewards/margins": (c - r).mean(),
        "rewards/mean": scores.mean(),
        "rewards/min": scores.min(),
        "rewards/max": scores.max(),
    }
    for name, value in expected.items():
        assert_close(metrics[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_reward_model_reads_the_last_real_token() -> None:
    """Changing a padded position changes nothing; changing the last real token changes the score."""
    objective, batch = perturbed(["algo=reward"])
    sequences = batch.sequences
    scores = objective.policy.scores(sequences)
    lengths = sequences.attention_mask.sum(1)
    row = int(torch.argmin(lengths))  # the shortest row has padding after it
    assert lengths[row] < sequences.input_ids.shape[1]
    changed = Sequences(sequences.input_ids.clone(), sequences.attention_mask, sequences.completion_mask)
    changed.input_ids[row, -1] = (changed.input_ids[row, -1] + 5) % 50
    assert_close(objective.policy.scores(changed)[row], scores[row])
    last = lengths[row] - 1
    changed.input_ids[row, last] = (changed.input_ids[row, last] + 5) % 50
    assert not torch.isclose(objective.policy.scores(changed)[row], scores[row])


def test_kto_unpaired_metrics_and_loss() -> None:
    """One unpaired batch: z0 from the mismatched rows, per-class rewards, the weighted loss."""
    objective, datamodule, _ = build(
        compose_config(["algo=kto", "algo.beta=0.5", "algo.desirable_weight=1.5"])
    )
    objective.configure_model()
    torch.manual_seed(4)
    with torch.no_grad():
        for parameter in objective.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    # The first batch with both classes (the seed's first one happens to hold only desirable rows).
    batch = next(b for b in datamodule.train_dataloader() if 0 < int(b.labels.sum()) < b.size)
    loss, metrics = objective.compute(batch, "train")

    size = batch.size
    policy = naive_policy_logps(objective, batch)
    reference = naive_logps(objective.reference.model.model, batch.sequences)
    ratio = policy - reference
    z0 = ratio[size:].mean().clamp(min=0)
    desirable = batch.labels.bool()
    r = ratio[:size]
    losses = torch.where(
        desirable, 1.5 * (1 - torch.sigmoid(0.5 * (r - z0))), 1 - torch.sigmoid(0.5 * (z0 - r))
    )
    assert_close(loss, losses.mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["kl"], z0, rtol=1e-4, atol=1e-5)
    assert_close(metrics["rewards/chosen"], 0.5 * r[desirable].mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["rewards/rejected"], 0.5 * r[~desirable].mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["logps/chosen"], policy[:size][desirable].mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["logps/rejected"], policy[:size][~desirable].mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["rewards/margins"], metrics["rewards/chosen"] - metrics["rewards/rejected"])


def test_kto_held_out_pairs_use_the_implicit_reward() -> None:
    objective, datamodule, _ = build(compose_config(["algo=kto", "algo.beta=0.5"]))
    objective.configure_model()
    batch = next(iter(datamodule.val_dataloader()))
    assert batch.kind == "pairs"
    _, metrics = objective.compute(batch, "val")
    # Policy equals reference before training: every implicit reward is zero.
    assert_close(metrics["rewards/margins"], torch.tensor(0.0), atol=1e-6, rtol=0)
    assert "rewards/accuracies" in metrics


def test_kto_batch_of_one_fails_before_the_model_loads() -> None:
    from rlhf_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.batch_size"):
        build(compose_config(["algo=kto", "data.batch_size=1"]))


def test_log_probs_are_float32_under_half_precision() -> None:
    """fp16 hidden states and head: log-probs come out float32 and match the float32 computation."""
    from rlhf_lab.logprobs import completion_logps

    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 16)
    head = torch.nn.Linear(16, 300, bias=False)
    ids = torch.randint(0, 300, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    reference = completion_logps(hidden, ids, mask, head).logps
    half = completion_logps(hidden.half(), ids, mask, head.half()).logps
    assert half.dtype == torch.float32
    assert_close(half, reference, atol=0.05, rtol=0.01)


def test_a_new_pairwise_loss_needs_only_its_function_and_its_yaml(tmp_path: Path) -> None:
    """A loss function (here in tests/custom_losses.py) and one YAML file make a new objective: the schema
    comes from the loss's signature (typed, unknown keys rejected), the reference from its arguments."""
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import open_dict

    from rlhf_lab.config import register_schemas
    from tests.conftest import CONF_DIR, TINY_OVERRIDES

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "algo" / "squared_margin.yaml").write_text(
        "defaults:\n  - /schema/algo/squared_margin@_here_\n  - _self_\n"
        "_target_: rlhf_lab.objectives.PairwiseObjective\n"
        "loss: tests.custom_losses.squared_margin_loss\ntau: 2.0\nreference: auto\n"
    )
    register_schemas(conf)
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose("config", overrides=[*TINY_OVERRIDES, "algo=squared_margin", "algo.tau=0.5"])
        with pytest.raises(ConfigCompositionException, match=r"Could not override 'algo.beta'"):
            compose("config", overrides=["algo=squared_margin", "algo.beta=1"])
        with pytest.raises(ConfigCompositionException, match="tau"):
            compose("config", overrides=["algo=squared_margin", "algo.tau=large"])
    with open_dict(cfg):
        cfg.paths.run_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = compose_config().paths.cache_dir
    objective, datamodule, _ = build(cfg)
    objective.configure_model()
    assert objective.reference_mode == "copy"  # the loss takes reference log-probs
    batch = next(iter(datamodule.val_dataloader()))
    loss, metrics = objective.compute(batch, "val")
    assert_close(loss, torch.tensor(0.25), atol=1e-5, rtol=0)  # policy = reference: (0 - 0.5)^2
    assert metrics["rewards/margins"] == 0
