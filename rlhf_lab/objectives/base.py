"""The LightningModule every objective shares: model building, reference, optimiser, schedule, logging.

An objective subclasses `AlignmentObjective` and implements `compute`, which turns a batch into a loss
and a dict of metrics (names without the ``train/``/``val/`` prefix). Everything else lives here once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from rlhf_lab.errors import ConfigError, check_choice, check_range
from rlhf_lab.models.adapters import Adapter, FullFinetune
from rlhf_lab.models.hub import HubModel, default_cache_dir
from rlhf_lab.policy import REFERENCE_MODES, Policy, Reference, SequenceLogps, cache_key
from rlhf_lab.quant import NoQuantization
from rlhf_lab.strategies import fsdp_options, shard_fsdp2

log = logging.getLogger(__name__)

SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule.

    Attributes:
        name: ``adamw`` (torch), ``adamw_8bit`` or ``paged_adamw_8bit`` (bitsandbytes; paged falls back to
            unpaged on CPU).
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay.
        betas: Adam betas.
        eps: Adam epsilon.
        scheduler: ``constant``, ``linear`` (decay to 0) or ``cosine`` (decay to ``min_lr_ratio * lr``).
        warmup_ratio: Linear warm-up over this share of the optimiser steps (ignored if ``warmup_steps``).
        warmup_steps: Linear warm-up steps (takes precedence over ``warmup_ratio`` when > 0).
        min_lr_ratio: Final learning rate of the cosine schedule, as a share of ``lr``.
    """

    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        check_choice("optim.name", self.name, OPTIMIZERS)
        check_choice("optim.scheduler", self.scheduler, SCHEDULERS)
        check_range("optim.lr", self.lr, 0.0, None, low_inclusive=False)
        check_range("optim.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def lr_lambda(self, total_steps: int) -> Any:
        warmup = self.warmup_steps if self.warmup_steps > 0 else math.ceil(self.warmup_ratio * total_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if self.scheduler == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            if self.scheduler == "linear":
                return 1.0 - progress
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor


@dataclass
class RuntimeConfig:
    """Where reference caches live and how the head is chunked."""

    cache_dir: str = field(default_factory=default_cache_dir)
    logps_chunk_size: int = 256


class AlignmentObjective(L.LightningModule):
    """Shared base of every objective.

    Args:
        model: The model spec (`HubModel` or `TinyModel`); the model is built in `configure_model`.
        adapter: `FullFinetune` or `LoraAdapter`.
        optim: Optimiser and schedule.
        reference: Reference mode (``auto``: ``adapter_off`` under LoRA/DoRA, else ``copy``; reference-free
            objectives force ``none``).
        runtime: Cache directory and log-prob chunking.
        quant: Quantisation of the base weights (`rlhf_lab.quant`).
    """

    #: Whether the objective needs reference log-probs (reference-free objectives set False).
    needs_reference: bool = True
    #: What the training batches hold: ``pairs`` (chosen + rejected), ``single`` (chosen only: SFT) or
    #: ``unpaired`` (KTO: labelled completions plus mismatched rows).
    batch_kind: str = "pairs"
    #: What the model is: ``causal_lm`` (a policy) or ``sequence_classification`` (a reward model).
    model_task: str = "causal_lm"

    def __init__(
        self,
        model: HubModel,
        adapter: Adapter | None = None,
        optim: OptimConfig | None = None,
        reference: str = "auto",
        runtime: RuntimeConfig | None = None,
        quant: Any = None,
    ) -> None:
        super().__init__()
        self.model_spec = model
        self.adapter = adapter or FullFinetune()
        self.quant = quant or NoQuantization()
        self.optim = optim or OptimConfig()
        self.runtime = runtime or RuntimeConfig()
        self.reference_mode = self._resolve_reference(reference)
        self.policy: Policy | None = None
        self.reference: Reference | None = None
        # Frozen weights and the reference are rebuilt from the model spec, not stored in checkpoints.
        self.strict_loading = False
        self._batch_started: float | None = None

    def _resolve_reference(self, requested: str) -> str:
        check_choice("algo.reference", requested, ("auto", *REFERENCE_MODES))
        if not self.needs_reference:
            if requested not in ("auto", "none"):
                raise ConfigError(
                    f"algo.reference={requested} but {type(self).__name__} is reference-free; "
                    "use algo.reference=none (or auto)"
                )
            return "none"
        if requested == "auto":
            return "adapter_off" if self.adapter.is_peft else "copy"
        if requested == "none":
            raise ConfigError(
                f"algo.reference=none but {type(self).__name__} needs a reference; "
                "choose one of: copy, adapter_off, precomputed"
            )
        if requested == "adapter_off" and not self.adapter.is_peft:
            raise ConfigError(
                "algo.reference=adapter_off needs adapter=lora or adapter=dora; "
                "use algo.reference=copy or precomputed with adapter=full"
            )
        return requested

    # ----------------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Build the policy (and reference) late, so sharding strategies can wrap them at init."""
        if self.policy is not None:
            return
        load_kwargs = self.quant.load_kwargs()
        strategy = self._trainer.strategy if self._trainer is not None else None
        if strategy is not None and getattr(strategy, "zero_stage_3", False):
            # Tell transformers that ZeRO-3 is on: it then builds each model partitioned and loads its
            # weights shard by shard (this object must stay alive while models load).
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_deepspeed_config = HfDeepSpeedConfig(strategy.config)
        base = self.model_spec.load_model(task=self.model_task, **load_kwargs)
        base = self.quant.prepare(base, self.model_spec.gradient_checkpointing)
        frozen = None
        if self.reference_mode == "copy":
            frozen = self.model_spec.load_model(task=self.model_task, **load_kwargs)
            if getattr(frozen, "is_gradient_checkpointing", False):
                frozen.gradient_checkpointing_disable()  # no backward runs through the reference
        policy_model = self.adapter.apply(base, task=self.model_task)
        options = fsdp_options(self._trainer.strategy) if self._trainer is not None else None
        if options is not None:
            # Shard the policy and the frozen reference alike: no rank holds a full reference.
            policy_model = shard_fsdp2(policy_model, self.device_mesh, options)
            if frozen is not None:
                frozen = shard_fsdp2(frozen, self.device_mesh, options)
        self.policy = Policy(policy_model, chunk_size=self.runtime.logps_chunk_size)
        self.policy.train()
        self.reference = Reference(self.reference_mode, self.policy, frozen)

    def check_data(self, datamodule: Any) -> None:
        """Fail (or warn) before any model loads when the data cannot serve this objective."""

    def on_fit_start(self) -> None:
        if self.reference_mode == "precomputed":
            self.precompute_reference()

    def on_validation_start(self) -> None:
        if self.reference_mode == "precomputed" and not self.reference.tables:
            self.precompute_reference()

    def precompute_reference(self, datamodule: Any = None) -> bool:
        """Fill the precomputed reference table (from the on-disk cache when it has this model and data)."""
        datamodule = datamodule if datamodule is not None else self.trainer.datamodule
        key = cache_key(self.model_spec.identity(), datamodule.fingerprint(), type(self).__name__)
        cache_file = Path(self.runtime.cache_dir) / "reference" / f"{key}.pt"
        computed = self.reference.precompute(datamodule.reference_loaders(), self.device, cache_file)
        self.reference_computed = computed
        return computed

    # -------------------------------------------------------------------------------------- steps
    def compute(
        self, batch: Mapping[str, torch.Tensor], split: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and metrics (unprefixed names) for one batch."""
        raise NotImplementedError

    def reference_logps(self, batch: Mapping[str, torch.Tensor], split: str) -> torch.Tensor | None:
        return self.reference.logps(batch, split)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.compute(batch, "train")
        self._log("train", loss, metrics, batch["index"].numel(), on_step=True)
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            self.log("train/lr", schedulers.get_last_lr()[0], on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._batch_started is not None:
            elapsed = time.perf_counter() - self._batch_started
            tokens = float(batch["attention_mask"].sum())
            self.log("train/tokens_per_sec", tokens / max(elapsed, 1e-9), on_step=True, on_epoch=False)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Before clipping: the gradient of the (accumulated) loss as the optimiser receives it.
        norms = []
        for parameter in self.policy.parameters():
            if parameter.grad is not None:
                norm = parameter.grad.detach().norm(2)
                # A sharded (FSDP2) gradient's norm is a DTensor: materialise the global value.
                norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if norms:
            self.log("train/grad_norm", torch.stack(norms).norm(2), on_step=True, on_epoch=False)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.compute(batch, "val")
        self._log("val", loss, metrics, batch["index"].numel(), on_step=False)
        return loss

    def _log(
        self, split: str, loss: torch.Tensor, metrics: dict[str, torch.Tensor], batch_size: int, on_step: bool
    ) -> None:
        values = {f"{split}/loss": loss.detach(), **{f"{split}/{k}": v.detach() for k, v in metrics.items()}}
        on_progress_bar = (f"{split}/loss", f"{split}/rewards/accuracies")
        for key, value in values.items():
            self.log(
                key,
                value,
                prog_bar=key in on_progress_bar,
                on_step=on_step,
                on_epoch=not on_step,
                batch_size=batch_size,
                sync_dist=not on_step,
            )

    # ------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the policy has no trainable parameters (check adapter.*)")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer_cls: Any = torch.optim.AdamW
        if self.optim.name != "adamw":
            import bitsandbytes as bnb

            optimizer_cls = (
                bnb.optim.AdamW8bit if self.optim.name == "adamw_8bit" else bnb.optim.PagedAdamW8bit
            )
        # One group unless decay needs two: DeepSpeed ZeRO-3 regroups parameters, and a schedule built for
        # two groups would then no longer match its optimiser.
        groups: list[dict[str, Any]] = [{"params": params, "weight_decay": 0.0}]
        if self.optim.weight_decay:
            groups = [
                {"params": decay, "weight_decay": self.optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ]
        optimizer = optimizer_cls(
            groups,
            lr=self.optim.lr,
            betas=self.optim.betas,
            eps=self.optim.eps,
        )
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.optim.lr_lambda(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Keep trainable weights only: frozen base weights and the reference come back from the model spec.
        trainable = {f"policy.{name}" for name, p in self.policy.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}


def pairwise_metrics(
    chosen: SequenceLogps,
    rejected: SequenceLogps,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The DPO metric set, as TRL names it, with chosen and rejected each in their own place.

    Args:
        chosen: Policy statistics of the chosen completions.
        rejected: Policy statistics of the rejected completions.
        chosen_rewards: ``[B]`` implicit rewards of the chosen completions.
        rejected_rewards: ``[B]`` implicit rewards of the rejected completions.
    """
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen.logps.detach().mean(),
        "logps/rejected": rejected.logps.detach().mean(),
        "logits/chosen": chosen.mean_logits.mean(),
        "logits/rejected": rejected.mean_logits.mean(),
    }
