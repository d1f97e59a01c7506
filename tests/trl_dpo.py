"""TRL's own ``DPOTrainer._compute_loss`` on given per-token log-probs: the oracle the DPO family's tests
compare with (TRL 1.16 computes every loss type inline there; there is no separate ``dpo_loss``)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch


def trl_dpo_loss(
    policy_token_logps: torch.Tensor,
    reference_token_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    log_sum_sq_probs: torch.Tensor | None = None,
    **args,
) -> torch.Tensor:
    """TRL's ``DPOTrainer._compute_loss`` (one process, no accumulation) for a batch of ``B`` pairs.

    Args:
        policy_token_logps: ``[2B, T]`` per-token log-probs (chosen rows first), aligned with
            ``completion_mask``; position 0 has no prediction (TRL's shift drops it).
        reference_token_logps: ``[2B, T]`` the reference's.
        completion_mask: ``[2B, T]`` 1 at completion tokens (never at position 0).
        log_sum_sq_probs: ``[2B, T]`` ``log sum_v pi(v)^2`` per position (WPO), aligned likewise.
        **args: ``DPOConfig`` fields: ``beta``, ``loss_type`` (a list), ``loss_weights``, ``label_smoothing``,
            ``ld_alpha``, ``f_divergence_type``, ``f_alpha_divergence_coef``, ``use_weighting``, ``discopop_tau``.
    """
    dpo = pytest.importorskip("trl.trainer.dpo_trainer")

    def _policy_module() -> torch.nn.Module:
        module = torch.nn.Module()  # TRL asks whether it is a peft model, and whether it checkpoints
        module.is_gradient_checkpointing = False  # type: ignore[assignment]
        return module

    rows, width = completion_mask.shape

    def outputs(token_logps: torch.Tensor) -> SimpleNamespace:
        # The fused head gives 0 (no gradient) at positions whose label is -100.
        shifted = token_logps[:, 1:] * completion_mask[:, 1:]
        sq = log_sum_sq_probs[:, 1:] if log_sum_sq_probs is not None else torch.zeros_like(shifted)
        return SimpleNamespace(
            log_probs=shifted, entropy=torch.zeros_like(shifted), mean_logits=torch.zeros_like(shifted),
            is_top1=torch.zeros_like(shifted, dtype=torch.bool), log_sum_sq_probs=sq,
        )  # fmt: skip

    identity = SimpleNamespace(
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        device=torch.device("cpu"),
        unwrap_model=lambda m: m,
    )
    settings = {"beta": 0.1, "loss_type": ["sigmoid"], "loss_weights": None, "label_smoothing": 0.0,
                "ld_alpha": None, "f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 0.5,
                "use_weighting": False, "discopop_tau": 0.05, **args}  # fmt: skip
    trainer = SimpleNamespace(
        model=_policy_module(), ref_model=lambda **kwargs: outputs(reference_token_logps),
        accelerator=identity, precompute_ref_logps=False, aux_loss_enabled=False, beta=settings["beta"],
        loss_types=settings["loss_type"], loss_weights=settings["loss_weights"] or [1.0] * len(settings["loss_type"]),
        ld_alpha=settings["ld_alpha"], f_divergence_type=settings["f_divergence_type"],
        f_alpha_divergence_coef=settings["f_alpha_divergence_coef"], label_smoothing=settings["label_smoothing"],
        use_weighting=settings["use_weighting"], args=SimpleNamespace(discopop_tau=settings["discopop_tau"],
        gradient_checkpointing_kwargs=None), _metrics={"train": defaultdict(list)}, _total_train_tokens=0,
        _tp_size=1,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.zeros(rows, width, dtype=torch.long),
        "attention_mask": torch.ones(rows, width, dtype=torch.long),
        "completion_mask": completion_mask.long(),
    }
    return dpo.DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs(policy_token_logps), inputs, False)
