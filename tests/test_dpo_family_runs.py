"""The DPO family inside the objective: LD-DPO and WPO values against a naive full-logits recomputation, the
reference's LD-DPO table, and TR-DPO's reference updates (TRL's arithmetic, exact resume)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.logprobs import naive_token_logps
from rlhf_lab.losses import dpo_loss
from rlhf_lab.losses.dpo import LOSS_TYPES
from rlhf_lab.reference import CopyReference
from rlhf_lab.train import build, run
from tests.conftest import compose_config
from tests.test_objectives import built, first_batch
from tests.test_reference import SHORT, with_cache


def perturbed(objective) -> None:
    """Move the policy off its reference, so log-ratios are not all zero."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in objective.policy.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))


def naive(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token completion log-probs, ``log sum_v p^2`` per token, from the full logits (the oracle)."""
    ids, attention, mask = (
        batch.sequences.input_ids,
        batch.sequences.attention_mask,
        batch.sequences.completion_mask,
    )
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    token_logps = naive_token_logps(logits, ids, mask)
    log_probs = torch.log_softmax(logits[:, :-1], -1)
    sum_sq = F.pad(torch.logsumexp(2 * log_probs, -1) * mask[:, 1:], (1, 0))
    return token_logps, sum_sq, mask.bool()


def ld_sums(token_logps: torch.Tensor, mask: torch.Tensor, pairs: int, alpha: float) -> torch.Tensor:
    """LD-DPO's sums by a loop: the first min(|y_c|, |y_r|) completion tokens, then alpha times the rest."""
    lengths = mask.sum(1)
    values = []
    for row in range(mask.shape[0]):
        shared = int(min(lengths[row % pairs], lengths[row % pairs + pairs]))
        tokens = token_logps[row][mask[row]]
        values.append(tokens[:shared].sum() + alpha * tokens[shared:].sum())
    return torch.stack(values)


def test_ld_dpo_and_wpo_equal_a_naive_recomputation(make_config) -> None:
    """LD-DPO (alpha 0.3) on the policy and the copy reference, WPO weights, sigmoid + nca_pair: the loss and
    the metrics equal the formulas evaluated on full-vocabulary logits."""
    objective, datamodule = built(
        make_config(
            "data=suite",
            "data.source.task=length_bias",
            "algo.beta=0.5",
            "algo.ld_alpha=0.3",
            "algo.use_weighting=true",
            "algo.loss_type=[sigmoid,nca_pair]",
        )
    )
    perturbed(objective)
    batch = first_batch(datamodule)
    pairs = batch.size
    loss, metrics = objective.compute(batch, "train")
    with torch.no_grad():
        policy_tokens, sum_sq, mask = naive(objective.policy.model, batch)
        reference_tokens, _, _ = naive(objective.reference.model.model, batch)
    lengths = mask.sum(1)
    assert (lengths[:pairs] != lengths[pairs:]).any(), "a batch with pairs of unequal lengths tests LD-DPO"
    policy = ld_sums(policy_tokens, mask, pairs, 0.3)
    reference = ld_sums(reference_tokens, mask, pairs, 0.3)
    wpo = ((policy_tokens - sum_sq) * mask).sum(1) / lengths
    expected = dpo_loss(
        policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:],
        chosen_wpo_logps=wpo[:pairs], rejected_wpo_logps=wpo[pairs:],
        beta=0.5, loss_type=["sigmoid", "nca_pair"], use_weighting=True,
    )  # fmt: skip
    assert_close(loss, expected.losses.mean(), rtol=1e-4, atol=1e-5)
    assert_close(metrics["rewards/margins"], (expected.chosen_rewards - expected.rejected_rewards).mean())
    assert_close(metrics["wpo_weight"], torch.exp(wpo[:pairs] + wpo[pairs:]).mean(), rtol=1e-4, atol=1e-6)
    assert 0 < float(metrics["wpo_weight"]) < 1


def test_a_precomputed_ld_dpo_table_holds_ld_values_under_its_own_key(make_config) -> None:
    """The precomputed reference with ``ld_alpha`` holds what the copy reference gives (LD-DPO's sums of the
    initial policy), and its cache key differs from plain DPO's."""
    tables, keys = {}, {}
    data = ("data=suite", "data.source.task=length_bias")
    for alpha in ("0.3", "null"):
        objective, datamodule = built(
            make_config(*data, "algo.reference=precomputed", f"algo.ld_alpha={alpha}")
        )
        objective.precompute_reference(datamodule)
        tables[alpha] = objective.reference.tables["train"]
        keys[alpha] = objective.reference.tables_key
    copy_objective, datamodule = built(make_config(*data, "algo.reference=copy", "algo.ld_alpha=0.3"))
    batch = first_batch(datamodule)
    values = copy_objective.reference_logps(batch, "train")
    assert_close(batch.per_row(tables["0.3"][batch.index]), values, rtol=1e-5, atol=1e-5)
    assert keys["0.3"] != keys["null"]
    assert not torch.allclose(tables["0.3"], tables["null"])


def test_reference_update_equals_trl_sync_callback(make_config) -> None:
    """TR-DPO's soft update is TRL's ``SyncRefModelCallback._sync_target_model`` arithmetic."""
    callbacks = pytest.importorskip("trl.trainer.callbacks")
    objective, _ = built(make_config("algo.reference_sync=soft", "algo.reference_sync_alpha=0.25"))
    perturbed(objective)
    trl_reference = copy.deepcopy(objective.reference.model.model)
    callbacks.SyncRefModelCallback._sync_target_model(objective.policy.model, trl_reference, 0.25)
    assert isinstance(objective.reference, CopyReference)
    objective.reference.sync_toward(objective.policy.model, 0.25, step=3)
    mine = dict(objective.reference.model.model.named_parameters())
    for name, parameter in trl_reference.named_parameters():
        assert_close(mine[name], parameter, msg=name)
    assert objective.reference.synced_at == 3


def _tr_dpo_run(run_dir: Path, cache: Path, max_steps: int, resume: bool):
    common = ["algo.reference_sync=soft", "algo.reference_sync_alpha=0.5", "algo.reference_sync_steps=2",
              "trainer.val_check_interval=4", "optim.scheduler=constant", "optim.warmup_ratio=0", "optim.lr=5e-3",
              *SHORT]  # fmt: skip
    extra = ["resume=true"] if resume else []
    config = compose_config([*common, f"trainer.max_steps={max_steps}", *extra], run_dir=run_dir)
    return run(with_cache(config, cache))


@pytest.mark.slow
def test_tr_dpo_resumed_at_an_update_step_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """Updates every 2 steps, interrupted right after step 4 (an update is due before step 5) and resumed to
    step 8: the policy and the reference equal 8 steps straight through, and the reference has left the
    initial policy."""
    straight = _tr_dpo_run(tmp_path / "straight", tmp_path / "cache", 8, resume=False)
    _tr_dpo_run(tmp_path / "resumed", tmp_path / "cache", 4, resume=False)
    resumed = _tr_dpo_run(tmp_path / "resumed", tmp_path / "cache", 8, resume=True)
    assert resumed.trainer.global_step == 8
    assert straight.objective.reference.synced_at == resumed.objective.reference.synced_at == 8
    initial, _, _ = build(
        with_cache(compose_config([*SHORT], run_dir=tmp_path / "initial"), tmp_path / "cache")
    )
    initial.configure_model()
    initial_weights = dict(initial.policy.model.named_parameters())
    for straight_model, resumed_model in (
        (straight.objective.policy.model, resumed.objective.policy.model),
        (straight.objective.reference.model.model, resumed.objective.reference.model.model),
    ):
        resumed_weights = dict(resumed_model.named_parameters())
        for key, parameter in straight_model.named_parameters():
            assert_close(parameter, resumed_weights[key], atol=1e-6, rtol=1e-5, msg=key)
    moved = max(
        float((parameter - initial_weights[key]).abs().max())
        for key, parameter in straight.objective.reference.model.model.named_parameters()
    )
    assert moved > 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["algo.reference_sync=soft", "algo.reference=precomputed"],
            "algo.reference_sync needs algo.reference=copy",
        ),
        (["algo.reference_sync=soft", "adapter=lora"], "algo.reference_sync needs algo.reference=copy"),
        (["algo=simpo", "algo.reference_sync=hard"], "this loss is reference-free"),
        (["algo.reference_sync=sometimes"], "algo.reference_sync='sometimes'"),
        (["algo.reference_sync=soft", "algo.reference_sync_alpha=0"], "algo.reference_sync_alpha"),
        (["algo.ld_alpha=1.5"], "algo.ld_alpha"),
    ],
)
def test_bad_settings_fail_naming_the_key(make_config, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(make_config(*overrides))


def test_hard_sync_is_a_copy() -> None:
    from rlhf_lab.reference import ReferenceSync

    sync = ReferenceSync.from_config("hard", 0.6, 3)
    assert sync is not None and sync.alpha == 1.0
    assert [step for step in range(10) if sync.due(step, 0)] == [3, 6, 9]
    assert not sync.due(6, 6) and math.isclose(ReferenceSync.from_config("soft", 0.6, 3).alpha, 0.6)


@pytest.mark.parametrize("loss_type", LOSS_TYPES.names())
def test_every_loss_type_trains_from_zero_rewards(make_config, loss_type: str) -> None:
    """Each loss type through the objective: at the first step (policy = reference) the rewards are 0, the
    loss is the type's value at zero log-ratios, and one optimiser step changes it."""
    extra = ["algo.label_smoothing=0.01"] if loss_type == "exo_pair" else []
    objective, datamodule = built(make_config(f"algo.loss_type={loss_type}", "algo.beta=0.5", *extra))
    batch = first_batch(datamodule)
    loss, metrics = objective.compute(batch, "train")
    assert float(metrics["rewards/chosen"]) == float(metrics["rewards/rejected"]) == 0.0
    zero = torch.zeros(batch.size)
    lengths = batch.sequences.completion_mask.sum(1)
    at_zero = dpo_loss(
        zero, zero, zero, zero, chosen_lengths=lengths[: batch.size], rejected_lengths=lengths[batch.size :],
        chosen_nll=torch.as_tensor(metrics["nll_loss"]).expand(batch.size), beta=0.5, loss_type=loss_type,
        label_smoothing=0.01 if loss_type == "exo_pair" else 0.0,
    ).losses.mean()  # fmt: skip
    if loss_type != "sft":  # sft's per-pair NLLs are not all equal to their mean
        assert_close(loss.detach(), at_zero, rtol=1e-5, atol=1e-6)
    optimiser = torch.optim.SGD(objective.policy.parameters(), lr=0.5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in objective.policy.parameters() if p.grad is not None)
    optimiser.step()
    after, _ = objective.compute(batch, "train")
    assert float(after) != float(loss)
