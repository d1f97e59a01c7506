"""Online RL (GRPO, RLOO, PPO): rollouts, metrics pinned to hand computations, accumulation equivalence,
reproducible rollouts, and config errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.objectives.online import Rollout, completion_metrics, reward_metrics
from rlhf_lab.rl.rollout import share_completions
from rlhf_lab.train import build, run
from tests.conftest import compose_config
from tests.naive import full_logits

# A signal on every rollout even for the untrained tiny model (a user-supplied reward, by import path).
SMALL = (
    "data=synthetic_rl",
    "data.source.num_train=32",
    "data.source.num_eval=8",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "algo.reward_functions=[tests.custom_rewards.even_tokens]",
    "algo.max_new_tokens=12",
    "algo.num_generations=2",
    "trainer.limit_val_batches=0",
    "trainer.val_check_interval=1",
    "export.enabled=false",
    "checkpoint.save_top_k=0",
    "checkpoint.save_last=false",
    "optim.lr=1e-2",
    "optim.warmup_ratio=0",
)


def trained(tmp_path: Path, name: str, *overrides: str):
    return run(compose_config([*SMALL, *overrides], run_dir=tmp_path / name))


def weights(result) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in result.objective.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------- metrics
def test_reward_metrics_by_hand() -> None:
    # Two prompts x 2 samples; reward "a" applies to all rows, "b" only to rows 0 and 3.
    per_reward = torch.tensor([[1.0, 2.0], [0.0, float("nan")], [1.0, float("nan")], [1.0, 4.0]])
    rewards = torch.tensor([3.0, 0.0, 1.0, 5.0])
    metrics = reward_metrics(rewards, per_reward, ["a", "b"], num_generations=2)
    assert_close(metrics["reward"], torch.tensor(9.0 / 4))
    # Group stds (unbiased): |3 - 0| / sqrt(2) and |1 - 5| / sqrt(2); their mean.
    assert_close(metrics["reward_std"], torch.tensor((3 + 4) / 2 / 2**0.5))
    assert_close(metrics["frac_reward_zero_std"], torch.tensor(0.0))
    assert_close(metrics["rewards/a/mean"], torch.tensor(0.75))
    assert_close(metrics["rewards/b/mean"], torch.tensor(3.0))  # NaN rows left out of the mean
    tied = reward_metrics(torch.tensor([1.0, 1.0, 0.0, 2.0]), per_reward[:, :1], ["a"], 2)
    assert_close(tied["frac_reward_zero_std"], torch.tensor(0.5))


def test_completion_metrics_by_hand() -> None:
    metrics = completion_metrics(torch.tensor([3, 12, 5, 12]), torch.tensor([False, True, False, True]))
    assert_close(metrics["completions/mean_length"], torch.tensor(8.0))
    assert_close(metrics["completions/min_length"], torch.tensor(3.0))
    assert_close(metrics["completions/max_length"], torch.tensor(12.0))
    assert_close(metrics["completions/clipped_ratio"], torch.tensor(0.5))


def _objective_and_rollout(*overrides: str):
    objective, datamodule, _ = build(compose_config([*SMALL, *overrides]))
    objective.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in objective.policy.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))  # so the reference differs from the policy
    batch = next(iter(datamodule.val_dataloader()))
    generation = objective.sample(batch, objective.sampling, 2, 0, 0)
    rollout = Rollout(
        generation.sequences(), generation.prompts.input_ids.shape[1], generation.completion_mask
    )
    return objective, rollout


def _naive_token_logps(model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Sampled tokens' log-probs from the full logits at the sampling temperature, ``[N, L]``."""
    logits = full_logits(model, rollout.sequences)[:, :-1] / temperature
    tokens = rollout.sequences.input_ids[:, 1:]
    logps = logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return logps[:, rollout.prompt_width - 1 :] * rollout.mask


@pytest.mark.parametrize(
    ("loss_type", "share_prompts"),
    [("grpo", False), ("grpo", True), ("dr_grpo", False), ("dapo", True), ("bnpo", False)],
)
def test_grpo_loss_and_metrics_equal_the_naive_computation(loss_type: str, share_prompts: bool) -> None:
    """One micro-batch: loss, policy_loss, kl, clip ratios and entropy against full-softmax arithmetic (the
    teacher-forced passes reading each prompt once for its completions, or once per row)."""
    objective, rollout = _objective_and_rollout(
        "algo=grpo",
        f"algo.loss_type={loss_type}",
        "algo.beta=0.1",
        "algo.temperature=0.7",
        "algo.epsilon_high=0.3",
    )
    objective.share_prompts = share_prompts
    if share_prompts:  # the passes below do read packed rows
        assert objective._forwarded(rollout).shared is not None
    mask = rollout.mask.float()
    naive = _naive_token_logps(objective.policy.model, rollout, 0.7)
    reference = _naive_token_logps(objective.reference.model.model, rollout, 0.7)
    # Old log-probs pushed away from the current ones so the clip binds on some tokens.
    old = (naive + torch.linspace(-0.5, 0.5, naive.numel()).view_as(naive)).detach() * mask
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 0.0]).repeat(rollout.size // 8)
    rollout.advantages, rollout.old_logps, rollout.reference_logps = advantages, old, reference
    totals = objective.step_totals(rollout)
    loss, metrics = objective.micro_loss(rollout, totals)

    ratio = torch.exp(naive - old)
    clipped = ratio.clamp(1 - 0.2, 1 + 0.3)
    surrogate = -torch.min(ratio * advantages[:, None], clipped * advantages[:, None]) * mask
    log_ratio = reference - naive
    kl = (torch.exp(log_ratio) - log_ratio - 1) * mask
    per_token = surrogate + 0.1 * kl
    lengths, tokens = mask.sum(1), mask.sum()
    reduce = {
        "grpo": lambda x: ((x * mask).sum(1) / lengths).mean(),
        "dr_grpo": lambda x: (x * mask).sum() / (rollout.size * 12),
        "dapo": lambda x: (x * mask).sum() / tokens,
        "bnpo": lambda x: (x * mask).sum() / tokens,
    }[loss_type]
    assert_close(loss, reduce(per_token), rtol=1e-5, atol=1e-6)
    assert_close(metrics["policy_loss"], reduce(surrogate), rtol=1e-5, atol=1e-6)
    assert_close(metrics["kl"], (kl * mask).sum() / tokens, rtol=1e-5, atol=1e-6)
    low = ((ratio < 0.8) & (advantages[:, None] < 0) & mask.bool()).float()
    high = ((ratio > 1.3) & (advantages[:, None] > 0) & mask.bool()).float()
    assert float(low.sum()) > 0 and float(high.sum()) > 0
    assert_close(metrics["clip_ratio/low"], low.sum() / tokens)
    assert_close(metrics["clip_ratio/high"], high.sum() / tokens)
    probs = (full_logits(objective.policy.model, rollout.sequences)[:, :-1] / 0.7).softmax(-1)
    entropy = -(probs * probs.log()).sum(-1)[:, rollout.prompt_width - 1 :]
    assert_close(metrics["entropy"], (entropy * mask).sum() / tokens, rtol=1e-4, atol=1e-5)


def test_ppo_value_and_policy_losses_equal_the_naive_computation() -> None:
    objective, rollout = _objective_and_rollout("algo=ppo", "algo.cliprange=0.1", "algo.cliprange_value=0.05")
    mask = rollout.mask.float()
    with torch.no_grad():
        rollout.rewards = torch.linspace(0, 1, rollout.size)
        rollout.truncated = torch.zeros(rollout.size, dtype=torch.bool)
        naive = _naive_token_logps(objective.policy.model, rollout, 1.0)
        rollout.old_logps = naive - 0.05 * mask
        rollout.reference_logps = _naive_token_logps(objective.reference.model.model, rollout, 1.0)
        metrics = objective.score_rollout(rollout)
    # The value of the state before completion token t is the value head's output at the token before it.
    scores = (
        objective.companions["value_model"]
        .model(input_ids=rollout.sequences.input_ids, attention_mask=rollout.sequences.attention_mask)
        .logits
    )
    assert scores.shape[-1] == 1
    values = rollout.values
    assert torch.equal(values == 0, ~rollout.mask)  # off-mask values are zeroed
    # Rewards: -beta * k1 per token, the score added on the last token; GAE with gamma=1, lam=0.95.
    k1 = (rollout.old_logps - rollout.reference_logps) * mask
    rewards = -0.05 * k1
    last = mask.sum(1).long() - 1
    rewards[torch.arange(rollout.size), last] += rollout.rewards
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rollout.size)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros(rollout.size)
        running = rewards[:, t] + next_value - values[:, t] + 0.95 * running
        advantages[:, t] = running
    advantages = advantages * mask
    assert_close(metrics["advantages/mean"], advantages.sum() / mask.sum(), rtol=1e-5, atol=1e-6)
    assert_close(rollout.returns, advantages + values * mask, rtol=1e-5, atol=1e-6)

    totals = objective.step_totals(rollout)
    loss, step = objective.micro_loss(rollout, totals)
    whitened = rollout.advantages
    ratio = torch.exp(naive - rollout.old_logps)
    policy = (-torch.min(ratio * whitened, ratio.clamp(0.9, 1.1) * whitened) * mask).sum() / mask.sum()
    value_losses = torch.max(
        (values - rollout.returns).square(),
        (values.clamp(values - 0.05, values + 0.05) - rollout.returns).square(),
    )
    value = 0.5 * (value_losses * mask).sum() / mask.sum()
    assert_close(step["policy_loss"], policy, rtol=1e-5, atol=1e-6)
    assert_close(step["value_loss"], value, rtol=1e-5, atol=1e-6)
    assert_close(loss, policy + 0.1 * value, rtol=1e-5, atol=1e-6)
    assert_close(step["approx_kl"], 0.5 * (0.05**2) * torch.tensor(1.0), rtol=1e-4, atol=1e-6)
    assert_close(step["value_clipfrac"], torch.tensor(0.0))  # the values have not moved yet


# --------------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize(
    "overrides",
    [
        ("algo=grpo", "algo.loss_type=grpo"),
        ("algo=grpo", "algo.loss_type=dr_grpo"),
        ("algo=grpo", "algo.loss_type=dapo", "algo.beta=0.1"),
        ("algo=grpo", "algo.loss_type=bnpo", "algo.importance_sampling_level=sequence"),
        ("algo=rloo",),
        ("algo=ppo", "algo.num_mini_batches=2", "algo.num_ppo_epochs=2"),
        ("algo=grpo", "algo.policy_loss=cispo", "algo.loss_type=dapo", "algo.epsilon_is_high=0.1"),
        ("algo=grpo", "algo.policy_loss=sapo", "algo.top_entropy_quantile=0.5", "algo.entropy_coef=0.01"),
        ("algo=grpo", "algo.clip_ratio_c=1.5", "algo.beta=0.1", "algo.kl_estimator=k2"),
        ("algo=reinforce_pp", "algo.advantage_estimator=reinforce_pp_baseline", "algo.overlong_buffer_len=4"),
        ("algo=remax", "algo.beta=0.05", "algo.kl_estimator=k3"),
        ("algo=grpo", "algo.policy_loss=cispo", "algo.epsilon_is_high=0.1"),
        ("algo=grpo", "algo.policy_loss=sapo", "algo.loss_type=dapo"),
        ("algo=grpo", "algo.loss_type=dr_grpo", "algo.top_entropy_quantile=0.5", "algo.entropy_coef=0.01"),
        ("algo=grpo", "algo.importance_sampling_correction=token_truncate", "algo.sampler_temperature=0.8",
         "algo.importance_sampling_cap=1.05"),
        ("algo=grpo", "algo.loss_type=dapo", "algo.dynamic_sampling=true",
         "algo.reward_functions=[tests.custom_rewards.even_tokens_on_odd_prompts]"),
    ],
    ids=["grpo", "dr_grpo", "dapo", "bnpo-gspo", "rloo", "ppo", "cispo", "sapo-80_20-entropy", "dual_clip-k2",
         "reinforce_pp_baseline-overlong", "remax-k3_in_reward", "cispo-grpo", "sapo-dapo",
         "clip-80_20-entropy", "is_token_truncate", "dynamic_sampling"],
)  # fmt: skip
def test_batch_8_accumulation_1_equals_4_x_2(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    """One rollout of 8 completions, two passes over it: splitting each optimiser step into 2 micro-batches
    gives the same weights (policy and value model) as one micro-batch of 8."""
    # Adam's eps above float noise: a gradient that is 0 up to rounding would otherwise step by +-lr.
    # Unshared rows: a micro-batch's packed prompts round with its own width (bounded separately below).
    common = [*overrides, "trainer.max_steps=2", "optim.eps=1e-5", "data.prefix_sharing=false"]
    if overrides[0] != "algo=ppo":
        common.append("algo.num_iterations=2")
    whole = trained(tmp_path, "whole", *common, "trainer.accumulate_grad_batches=1")
    split = trained(tmp_path, "split", *common, "trainer.accumulate_grad_batches=2")
    assert whole.trainer.global_step == split.trainer.global_step >= 2
    initial = build(compose_config([*SMALL, *common]))[0]
    initial.configure_model()
    before = dict(initial.named_parameters())
    moved = 0
    for name, value in weights(whole).items():
        assert_close(weights(split)[name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(before[name], value)
    assert moved, "no weight moved: the equivalence would be vacuous"
    assert whole.summary["train/loss"] == pytest.approx(split.summary["train/loss"], rel=1e-4, abs=1e-6)
    if "algo.dynamic_sampling=true" in overrides:  # groups of a later round were drawn
        assert whole.summary["train/num_gen_batches"] == split.summary["train/num_gen_batches"] > 1
    if "algo.importance_sampling_cap=1.05" in overrides:  # the cap binds on some tokens
        assert (
            whole.summary["train/is_ratio/clipped_frac"] == split.summary["train/is_ratio/clipped_frac"] > 0
        )


def test_shared_and_unshared_rollouts_train_alike(tmp_path: Path) -> None:
    """``data.prefix_sharing`` (on by default) packs each prompt's completions for the teacher-forced passes:
    training with it, with gradient accumulation, ends where unshared rows end, up to float rounding."""
    common = ["algo=grpo", "algo.beta=0.1", "trainer.max_steps=2", "optim.eps=1e-5", "algo.num_iterations=2"]
    shared = trained(tmp_path, "shared", *common, "trainer.accumulate_grad_batches=2")
    assert shared.objective.share_prompts
    unshared = trained(tmp_path, "unshared", *common, "data.prefix_sharing=false")
    assert not unshared.objective.share_prompts
    for name, value in weights(unshared).items():
        assert_close(weights(shared)[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert shared.summary["train/kl"] == pytest.approx(unshared.summary["train/kl"], rel=1e-3, abs=1e-7)


def test_rollouts_are_seeded_by_prompt_and_sample_not_by_batch_layout() -> None:
    """The same prompt gets the same completions alone or in a batch; a different rollout index resamples."""
    objective, datamodule, _ = build(compose_config([*SMALL, "algo=grpo", "data.eval_batch_size=4"]))
    objective.configure_model()
    loader = iter(datamodule.val_dataloader())
    batch = next(loader)
    together = objective.sample(batch, objective.sampling, 2, 0, 5)
    one = type(batch)(
        sequences=batch.sequences.rows(slice(2, 3)),
        index=batch.index[2:3],
        prompts=batch.prompts[2:3],
        columns={k: v[2:3] for k, v in batch.columns.items()},
    )
    # Strip the extra left padding a one-row batch does not need.
    width = int(one.sequences.attention_mask.sum())
    one.sequences = one.sequences.rows(slice(None)).__class__(
        *(
            t[:, -width:]
            for t in (one.sequences.input_ids, one.sequences.attention_mask, one.sequences.completion_mask)
        )
    )
    alone = objective.sample(one, objective.sampling, 2, 0, 5)
    length = alone.completion_ids.shape[1]
    assert torch.equal(alone.completion_ids, together.completion_ids[4:6, :length])
    again = objective.sample(batch, objective.sampling, 2, 0, 6)
    assert not torch.equal(again.completion_ids, together.completion_ids)


def test_samples_are_written_every_n_rollouts(tmp_path: Path) -> None:
    result = trained(tmp_path, "run", "algo=grpo", "trainer.max_steps=3", "algo.log_samples_every=2")
    files = sorted(p.name for p in (result.run_dir / "samples").glob("*.jsonl"))
    assert files == ["step_000001.jsonl", "step_000003.jsonl"]
    rows = [json.loads(line) for line in (result.run_dir / "samples" / files[0]).read_text().splitlines()]
    assert len(rows) == 8  # 4 prompts x 2 completions
    assert {"prompt", "completion", "reward", "rewards/even_tokens", "advantage"} <= set(rows[0])
    # Shares of even token ids.
    assert all(0.0 <= row["reward"] <= 1.0 for row in rows)


# ------------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("algo=grpo", "algo.num_generations=1"), r"algo.num_generations=1 must be at least 2"),
        (("algo=grpo", "algo.reward_functions=[]"), r"online RL needs a reward"),
        (("algo=grpo", "algo.reward_weights=[1.0,2.0]"), r"algo.reward_weights has 2 weights for 1 rewards"),
        (("algo=grpo", "algo.reward_functions=[nope.missing]"), r"algo.reward_functions\[0\]='nope.missing'"),
        (("algo=grpo", "algo.loss_type=ppo"), r"algo.loss_type='ppo' is not one of"),
        (("algo=grpo", "algo.scale_rewards=mean"), r"algo.scale_rewards"),
        (("algo=grpo", "algo.beta=0.1", "algo.reference=precomputed"), r"algo.reference=precomputed"),
        (("algo=grpo", "algo.generation_backend=vllm"), r"algo.generation_backend=vllm cannot run here"),
        (("algo=ppo", "algo.cliprange=1.5"), r"algo.cliprange"),
        (("algo=grpo", "algo.clip_ratio_c=0.5"), r"algo.clip_ratio_c=0.5"),
        (("algo=grpo", "algo.policy_loss=sapo", "algo.tau_pos=0"), r"algo.tau_pos=0"),
        (("algo=grpo", "algo.kl_estimator=k2"), r"algo.kl_estimator=k2 .* algo.beta=0"),
        (
            ("algo=grpo", "algo.kl_estimator=k9", "algo.beta=0.1"),
            r"algo.kl_estimator='k9' is not supported; choose one of: k1, k2, k3",
        ),
        (
            ("algo=grpo", "algo.min_new_tokens=12"),
            r"algo.min_new_tokens=12 must be below algo.max_new_tokens=12",
        ),
        (("algo=grpo", "algo.overlong_buffer_len=20"), r"algo.overlong_buffer_len=20 must be below"),
        (
            ("algo=grpo", "algo.cache_implementation=paged"),
            r"algo.cache_implementation='paged' is not supported; choose one of: dynamic, static",
        ),
        (("algo=grpo", "algo.top_entropy_quantile=1.5"), r"algo.top_entropy_quantile"),
        (
            ("algo=grpo", "algo.advantage_estimator=reinforce_pp_baseline", "algo.num_generations=1"),
            r"at least 2",
        ),
        (
            ("algo=grpo", "data.batch_size=3", "algo.num_generations=2", "trainer.accumulate_grad_batches=4"),
            r"equal micro-batches",
        ),
    ],
)
def test_bad_online_config_fails_before_training(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(compose_config([*SMALL, *overrides]))


def test_grpo_without_beta_loads_no_reference(tmp_path: Path) -> None:
    objective, _, _ = build(compose_config([*SMALL, "algo=grpo"]))
    objective.configure_model()
    assert objective.reference_mode == "none" and objective.reference.model is None
    with_kl, _, _ = build(compose_config([*SMALL, "algo=grpo", "algo.beta=0.04"]))
    assert with_kl.reference_mode == "copy"


def test_wandb_gets_the_sample_table(tmp_path: Path, no_wandb_login: None) -> None:
    result = trained(
        tmp_path, "run", "algo=grpo", "trainer.max_steps=2", "algo.log_samples_every=1", "logger=wandb"
    )
    tables = list((result.run_dir / "wandb").rglob("samples_*.table.json"))
    assert len(tables) == 2  # one per rollout
    table = json.loads(tables[0].read_text())
    assert table["columns"][:4] == ["step", "prompt", "completion", "reward"]
    assert len(table["data"]) == 8


def test_prompt_only_rows_pass_their_columns_to_the_reward_functions(tmp_path: Path) -> None:
    """A prompt_only JSONL file (plain and conversational prompts) with extra columns: every reward function
    receives the columns, repeated per sample, beside the prompts and decoded completions."""
    rows = [
        {"prompt": "Say yes.", "answer": "yes", "topic": "a"},
        {"prompt": [{"role": "user", "content": "Say no."}], "answer": "no", "topic": "b"},
    ] * 4
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    objective, datamodule, _ = build(
        compose_config(
            [
                "algo=grpo",
                "data=jsonl",
                f"data.source.train_path={data}",
                f"data.source.eval_path={data}",
                "data.eval_batch_size=8",
                "algo.num_generations=2",
                "algo.max_new_tokens=6",
                "algo.reward_functions=[tests.custom_rewards.record_call,rlhf_lab.rewards.exact_match]",
            ],
            tiny=False,
        )
    )
    objective.configure_model()
    batch = next(iter(datamodule.val_dataloader()))
    assert batch.columns == {"answer": ["yes", "no"] * 4, "topic": ["a", "b"] * 4}
    generation = objective.sample(batch, objective.sampling, 2, 0, 0)
    scores = objective.score(batch, generation, 2)
    from tests.custom_rewards import CALLS

    call = CALLS[-1]
    assert call["answer"] == ["yes", "yes", "no", "no"] * 4 and call["topic"][:4] == ["a", "a", "b", "b"]
    assert call["prompts"][:3] == ["Say yes.", "Say yes.", [{"role": "user", "content": "Say no."}]]
    # Plain prompts get string completions, conversational ones assistant messages.
    assert isinstance(call["completions"][0], str)
    assert call["completions"][2][0]["role"] == "assistant"
    eos = objective.tokenizer.eos_token_id
    for ids, row, mask in zip(
        call["completion_ids"], generation.completion_ids, generation.completion_mask, strict=True
    ):
        sampled = row[mask].tolist()
        assert ids == (sampled[:-1] if sampled[-1] == eos else sampled)  # without EOS
    assert scores.shape == (16, 2)


def test_truncated_completions_can_leave_the_loss() -> None:
    """With max_new_tokens=2 the untrained model ends no completion: all count as clipped, and with
    mask_truncated_completions none of their tokens is in the loss."""
    for masked in (False, True):
        objective, datamodule, _ = build(
            compose_config(
                [*SMALL, "algo=grpo", "algo.max_new_tokens=2", f"algo.mask_truncated_completions={masked}"]
            )
        )
        objective.configure_model()
        rollout, metrics = objective.make_rollout(next(iter(datamodule.train_dataloader())))
        assert metrics["completions/clipped_ratio"] == 1.0
        assert int(rollout.mask.sum()) == (0 if masked else 2 * rollout.size)


# ------------------------------------------------------------------------------ registered parts
@pytest.mark.parametrize("algo", ["grpo", "rloo", "ppo"])
def test_a_config_written_before_the_registry_builds_the_same_objective(algo: str) -> None:
    """A run's saved config.yaml from before GRPO, RLOO and PPO became YAMLs over one objective names
    ``rlhf_lab.objectives.<GRPO|RLOO|PPO>`` with that class's keys: it builds the objective today's YAML
    builds, with the same parts, settings and checkpoint keys."""
    from omegaconf import OmegaConf, open_dict

    old = OmegaConf.load(Path(__file__).parent / "assets" / "legacy_online" / f"{algo}.yaml")
    today, _, _ = build(compose_config([*SMALL, f"algo={algo}"]))
    cfg = compose_config([*SMALL, f"algo={algo}"])
    with open_dict(cfg):
        cfg.algo = OmegaConf.merge(
            old, {k: cfg.algo[k] for k in ("reward_functions", "max_new_tokens", "num_generations")}
        )
    legacy, _, _ = build(cfg)
    assert type(legacy) is type(today)
    assert legacy.parts.estimator is today.parts.estimator and legacy.parts.aggregate is today.parts.aggregate
    assert legacy.parts.policy_loss_kwargs == today.parts.policy_loss_kwargs
    assert legacy.parts.estimator_kwargs == today.parts.estimator_kwargs
    for key in ("beta", "kl_in_reward", "num_iterations", "shuffle_mini_batches", "num_generations"):
        assert getattr(legacy, key) == getattr(today, key), key
    legacy.configure_model()
    today.configure_model()
    assert legacy.checkpoint_keys() == today.checkpoint_keys()


def test_an_unregistered_estimator_by_import_path() -> None:
    """``algo.advantage_estimator`` may name a user's function by import path, without registering it."""
    objective, _, _ = build(
        compose_config([*SMALL, "algo=grpo", "algo.advantage_estimator=tests.custom_rewards.mean_baseline"])
    )
    rollout_scores = torch.tensor([1.0, 0.0, 3.0, 1.0])
    out = objective.parts.estimator(rollout_scores, 2)
    assert_close(out.advantages, torch.tensor([0.5, -0.5, 1.0, -1.0]))
    with pytest.raises(ConfigError, match=r"algo.advantage_estimator='gea' is not one of: grpo, rloo, gae"):
        build(compose_config([*SMALL, "algo=grpo", "algo.advantage_estimator=gea"]))
    with pytest.raises(ConfigError, match=r"algo.policy_loss='nope.missing' is not an importable function"):
        build(compose_config([*SMALL, "algo=grpo", "algo.policy_loss=nope.missing"]))
    # TRL's name for the aggregation is named in the message as written.
    with pytest.raises(
        ConfigError, match=r"algo.loss_type='token' is not one of: token_mean, token_mean_global"
    ):
        build(compose_config([*SMALL, "algo=grpo", "algo.loss_type=token"]))


# ------------------------------------------------------------------- issue 26: estimators and controls
def test_remax_baseline_is_the_reward_of_a_greedy_completion() -> None:
    """ReMax's rollout carries each prompt's greedy reward; with beta 0 every token's advantage is the
    completion's reward minus it."""
    objective, datamodule, _ = build(compose_config([*SMALL, "algo=remax"]))
    objective.configure_model()
    batch = next(iter(datamodule.train_dataloader()))
    rollout, metrics = objective.make_rollout(batch)
    greedy = objective.sample(batch, dataclasses.replace(objective.sampling, do_sample=False), 1, 3, 0)
    expected = objective.scorer.combine(objective.score(batch, greedy, 1))
    assert_close(rollout.baseline_rewards, expected.repeat_interleave(2))
    assert_close(metrics["baseline_reward"], expected.mean())
    advantages = rollout.require("advantages")
    assert_close(advantages[:, 0], rollout.require("rewards") - rollout.baseline_rewards)
    assert objective.metric_names("train") >= {"baseline_reward", "clip_ratio/dual"}


def test_top_entropy_quantile_masks_the_low_entropy_tokens_of_the_rollout() -> None:
    objective, datamodule, _ = build(compose_config([*SMALL, "algo=grpo", "algo.top_entropy_quantile=0.25"]))
    objective.configure_model()
    rollout, _ = objective.make_rollout(next(iter(datamodule.train_dataloader())))
    token_mask = rollout.token_mask
    assert token_mask is not None and not bool((token_mask & ~rollout.mask).any())
    with torch.no_grad():
        _, entropies = objective.token_stats(rollout, entropy=True)
    kept, dropped = entropies[token_mask], entropies[rollout.mask & ~token_mask]
    assert float(kept.min()) >= float(dropped.max())
    assert abs(float(token_mask.sum()) / float(rollout.mask.sum()) - 0.25) < 0.1


def test_a_static_cache_engine_samples_what_the_default_one_samples() -> None:
    """``algo.cache_implementation=static``: the engine decodes over a preallocated cache, and every row gets
    the same tokens and sampler log-probs as under the default growing cache."""
    samples = {}
    for cache in ("dynamic", "static"):
        overrides = [*SMALL, "algo=grpo", f"algo.cache_implementation={cache}", "data.eval_batch_size=4"]
        objective, datamodule, _ = build(compose_config(overrides))
        objective.configure_model()
        assert objective.engine.decoding == {"static_cache": cache == "static", "compile": False}
        samples[cache] = objective.sample(
            next(iter(datamodule.val_dataloader())), objective.sampling, 3, 0, 1
        )
    dynamic, static = samples["dynamic"], samples["static"]
    assert torch.equal(dynamic.completion_ids, static.completion_ids)
    assert torch.equal(dynamic.completion_mask, static.completion_mask)
    torch.testing.assert_close(dynamic.logps, static.logps, rtol=0, atol=1e-5)


def test_completions_of_one_prompt_read_it_once_with_the_same_values_and_gradients() -> None:
    """`share_completions`: a rollout's completions packed behind their prompt give each row's per-token
    log-probs and their gradients as the unshared rows do (prompts and completions of different lengths)."""
    objective, rollout = _objective_and_rollout("algo=grpo")
    shared = share_completions(rollout.sequences, rollout.prompt_width)
    assert shared.shared is not None and shared.shared.input_ids.shape[0] == rollout.size // 2
    # Every real unshared position reads the packed position that holds its token.
    packed = shared.shared.input_ids[shared.shared.source_rows, shared.shared.source_positions]
    real = rollout.sequences.attention_mask.bool()
    assert torch.equal(packed[real], rollout.sequences.input_ids[real])
    results = []
    for share in (False, True):
        objective.share_prompts = share
        objective.policy.zero_grad()
        logps, _ = objective.token_stats(rollout)
        (logps * rollout.mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in objective.policy.named_parameters() if p.grad is not None}
        results.append((logps.detach() * rollout.mask, grads))
    (unshared, unshared_grads), (packed_logps, packed_grads) = results
    assert_close(packed_logps, unshared, rtol=1e-5, atol=1e-5)
    assert unshared_grads.keys() == packed_grads.keys()
    for name, grad in unshared_grads.items():
        assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # A rollout whose adjacent rows never share a prompt is left as it is.
    alone = rollout.rows(torch.arange(0, rollout.size, 2))
    assert share_completions(alone.sequences, alone.prompt_width) is alone.sequences


def test_min_new_tokens_holds_back_eos() -> None:
    objective, datamodule, _ = build(compose_config([*SMALL, "algo=grpo", "algo.min_new_tokens=6"]))
    objective.configure_model()
    generation = objective.sample(next(iter(datamodule.train_dataloader())), objective.sampling, 2, 0, 0)
    assert int(generation.lengths.min()) >= 6
