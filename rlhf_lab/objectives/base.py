"""The LightningModule every objective shares: the late-built models, the reference, steps, logging, checkpoints.

An objective subclasses `AlignmentObjective` and implements `compute`, which turns a typed batch
(`rlhf_lab.data.batches`) into a loss and a dict of metrics (names without the ``train/``/``val/``
prefix). It may ask for companions built beside the policy (`companion_specs`: a teacher, reward models, a
value model); `rlhf_lab.models.build.build_models` builds them with the policy. The pieces live in their own
modules: the reference modes in `rlhf_lab.policy` (`make_reference`), the optimiser and schedule in
`rlhf_lab.optim`, the non-finite loss and gradient policy in `rlhf_lab.nan_policy` (a callback the trainer
gets; the objective keeps thin `_non_finite` / `_all_ranks` hooks for its own loss checks).
"""

from __future__ import annotations

import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from rlhf_lab.data.batches import Batch
from rlhf_lab.errors import ConfigError, check_choice, check_range
from rlhf_lab.lightning_compat import attached_trainer
from rlhf_lab.logprobs import SequenceLogps
from rlhf_lab.models.adapters import Adapter, FullFinetune
from rlhf_lab.models.build import Companion, build_models
from rlhf_lab.models.hub import HubModel, default_cache_dir
from rlhf_lab.nan_policy import NanPolicy, all_ranks
from rlhf_lab.nan_policy import NonFiniteError as NonFiniteError  # re-exported: it lived here
from rlhf_lab.optim import OptimConfig, configure_optimizers
from rlhf_lab.policy import FrozenModel, Policy, ValueModel
from rlhf_lab.quant import NoQuantization
from rlhf_lab.reference import Reference, cache_key, make_reference, resolve_reference_mode
from rlhf_lab.strategies import fsdp_options


@dataclass
class RuntimeConfig:
    """Where reference caches live, how the head is chunked, and what a non-finite loss does.

    Attributes:
        cache_dir: Built tiny models and precomputed reference tables.
        logps_chunk_size: Completion tokens per output-head call.
        logps_recompute: Recompute the head's logits in backward (True: memory) or store them (False: speed);
            ``auto`` stores them when they fit in `rlhf_lab.logprobs.STORED_LOGITS_BUDGET`.
        nan_policy: ``stop``, ``skip`` or ``ignore`` (`rlhf_lab.nan_policy`).
        max_nan_skips: Most steps ``skip`` may skip.
        seed: The run's seed (online RL seeds its rollouts with it).
        run_dir: The run directory (online RL writes its sample tables there).
        accumulate_grad_batches: Micro-batches per optimiser step, for objectives that optimise manually
            (Lightning accumulates for the others).
        gradient_clip_val: Gradient-norm clipping, likewise.
    """

    cache_dir: str = field(default_factory=default_cache_dir)
    logps_chunk_size: int = 256
    logps_recompute: bool | str = "auto"
    nan_policy: str = "stop"
    max_nan_skips: int = 10
    seed: int = 0
    run_dir: str | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None

    def __post_init__(self) -> None:
        check_range("logps_chunk_size", self.logps_chunk_size, 1)
        check_choice("logps_recompute", self.logps_recompute, ("auto", True, False))


#: The submodules `AlignmentObjective.configure_model` builds late.
LATE_BUILT = ("policy", "reference")


class ModelNotBuiltError(AttributeError):
    """The policy or the reference was read before `AlignmentObjective.configure_model` built it."""


class AlignmentObjective(L.LightningModule):
    """Shared base of every objective.

    Args:
        model: The model spec (`HubModel` or `TinyModel`); the model is built in `configure_model`.
        adapter: `FullFinetune` or `LoraAdapter`.
        optim: Optimiser and schedule (`rlhf_lab.optim`).
        reference: Reference mode (``auto``: ``adapter_off`` under LoRA/DoRA, else ``copy``; reference-free
            objectives force ``none``).
        runtime: Cache directory, log-prob chunking and the non-finite policy.
        quant: Quantisation of the base weights (`rlhf_lab.quant`).
    """

    #: Constructor arguments the entry point passes as built objects (not part of ``algo``'s schema).
    RUNTIME_ARGS: tuple[str, ...] = ("model", "adapter", "optim", "runtime", "quant", "data")

    #: Whether the objective needs reference log-probs (reference-free objectives set False).
    @property
    def needs_reference(self) -> bool:
        """Whether the objective needs reference log-probs (reference-free objectives say False)."""
        return True

    #: What the training batches hold: ``pairs`` (chosen + rejected), ``single`` (chosen only: SFT) or
    #: ``unpaired`` (KTO: labelled completions plus mismatched rows).
    batch_kind: str = "pairs"
    #: The objective completes rows that have no completion itself (distillation: the teacher does), so
    #: prompt-only data can serve it.
    completes_prompts: bool = False
    #: What the model is: ``causal_lm`` (a policy) or ``sequence_classification`` (a reward model).
    model_task: str = "causal_lm"
    #: The held-out metric checkpoints are ranked by under ``checkpoint.monitor=auto``, and its direction.
    monitor: tuple[str, str] = ("val/loss", "min")
    #: Steps skipped for a non-finite loss or gradient (``trainer.nan_policy=skip``): a buffer, kept in
    #: checkpoints under this key.
    nan_skipped: torch.Tensor
    #: The trainable model and the reference (`rlhf_lab.reference.make_reference`), built by `configure_model`:
    #: submodules (state-dict keys ``policy.*``, ``reference.*``), typed here, and a `ModelNotBuiltError` if
    #: read before (`is_built` asks).
    policy: Policy
    reference: Reference

    def __init__(
        self,
        model: HubModel,
        adapter: Adapter | None = None,
        optim: OptimConfig | None = None,
        reference: str = "auto",
        runtime: RuntimeConfig | None = None,
        quant: Any = None,
        data: Any = None,
    ) -> None:
        super().__init__()
        self.model_spec = model
        self.adapter = adapter or FullFinetune()
        self.quant = quant or NoQuantization()
        self.optim = optim or OptimConfig()
        self.runtime = runtime or RuntimeConfig()
        #: The non-finite loss and gradient policy: the trainer gets it as a callback (`rlhf_lab.train`).
        self.nan_policy = NanPolicy(self.runtime.nan_policy, self.runtime.max_nan_skips)
        self.reference_mode = resolve_reference_mode(reference, self.needs_reference, self.adapter, self.name)
        self.companions = nn.ModuleDict()
        # Checkpoints hold the trainable weights only (frozen weights come back from the model specs);
        # `on_load_checkpoint` checks that they match this run's trainable weights exactly.
        self.strict_loading = False
        self._batch_started: float | None = None
        self._deepspeed_config: Any = None
        self.register_buffer("nan_skipped", torch.zeros((), dtype=torch.long))
        #: The data's tokenizer (decodes what the objective generates; knows EOS and padding).
        self.tokenizer: Any = getattr(data, "tokenizer", None)
        if data is not None:
            self.check_data(data)

    @property
    def name(self) -> str:
        """The objective's name in messages (a pairwise objective names its loss)."""
        return type(self).__name__

    # ----------------------------------------------------------------------------------------- model
    def __getattr__(self, name: str) -> torch.Tensor | nn.Module:
        # Reached only when normal lookup fails (nn.Module finds submodules in `_modules` here).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in LATE_BUILT:
                raise
        raise ModelNotBuiltError(
            f"{type(self).__name__}.{name} does not exist yet: configure_model() builds it (the trainer calls "
            "it at fit and validate; call objective.configure_model() to use the objective outside a trainer)"
        )

    @property
    def is_built(self) -> bool:
        """Whether `configure_model` has built the policy, the reference and the companions."""
        return "policy" in self._modules

    def companion_specs(self) -> dict[str, Companion]:
        """The models to build beside the policy, by name (subclasses add a teacher, reward models...)."""
        if self.reference_mode != "copy":
            return {}
        # The copy reference is loaded from the policy's own spec (and quantisation): the initial policy.
        spec = Companion(self.model_spec, task=self.model_task, load_kwargs=self.quant.load_kwargs())
        return {"reference": spec}

    def model_specs(self) -> list[Any]:
        """Every model spec the run loads (tiny specs build their weights and tokenizer from the corpus)."""
        return [self.model_spec, *(companion.spec for companion in self.companion_specs().values())]

    def configure_model(self) -> None:
        """Build the policy and its companions late, so sharding strategies can wrap them at init."""
        if self.is_built:
            return
        trainer = attached_trainer(self)
        strategy = trainer.strategy if trainer is not None else None
        specs = self.companion_specs()
        built = build_models(
            self.model_spec,
            self.adapter,
            self.quant,
            task=self.model_task,
            companions=specs,
            strategy=strategy,
            device_mesh=self.device_mesh if fsdp_options(strategy) is not None else None,
        )
        self._deepspeed_config = built.deepspeed_config
        chunk = self.runtime.logps_chunk_size
        policy = Policy(built.policy, chunk_size=chunk, recompute=self.runtime.logps_recompute).train()
        wrapped: dict[str, nn.Module] = {
            name: ValueModel(model)
            if specs[name].trainable
            else FrozenModel(model, built.tokenizers[name], chunk)
            for name, model in built.companions.items()
        }
        frozen: Any = wrapped.pop("reference", None)
        self.policy = policy
        self.reference = make_reference(self.reference_mode, policy, frozen, self._load_initial_weights)
        self.companions = nn.ModuleDict(wrapped)

    def _load_initial_weights(self) -> nn.Module:
        """A fresh, frozen copy of the initial policy weights (a precomputed reference after training)."""
        trainer = attached_trainer(self)
        strategy = trainer.strategy if trainer is not None else None
        if fsdp_options(strategy) is not None or getattr(strategy, "zero_stage_3", False):
            raise ConfigError(
                "algo.reference=precomputed: the reference table is missing from the checkpoint and the cache, "
                "and rebuilding it needs the unsharded base model, which a sharded strategy (fsdp, zero3) "
                "does not load; restore the cache under paths.cache_dir or resume with strategy=ddp"
            )
        model = self.model_spec.load_model(task=self.model_task, **self.quant.load_kwargs())
        model.requires_grad_(False).eval()
        if trainer is not None:
            model = trainer.precision_plugin.convert_module(model)
        return model.to(self.device)

    def check_data(self, datamodule: Any) -> None:
        """Fail (or warn) before any model loads when the data cannot serve this objective (called at the end
        of construction with the built, tokenised data; a subclass sets what it reads before ``super().__init__``)."""

    def on_fit_start(self) -> None:
        if self.reference_mode == "precomputed":
            self.precompute_reference()

    def on_validation_start(self) -> None:
        if self.reference_mode == "precomputed":
            self.precompute_reference()

    def scoring_settings(self) -> dict[str, Any]:
        """Objective settings that change what is scored (part of the reference cache key)."""
        return {}

    def reference_cache_key(self, datamodule: Any) -> str:
        """Everything that changes a precomputed reference table: weights, quantisation, precision, chat
        template, data and scoring settings."""
        tokenizer = getattr(datamodule, "tokenizer", None)
        trainer = attached_trainer(self)
        return cache_key(
            model=self.model_spec.identity(),
            task=self.model_task,
            quant=self.quant.identity(),
            precision=str(trainer.precision) if trainer is not None else "32-true",
            chat_template=getattr(tokenizer, "chat_template", None),
            data=datamodule.fingerprint(),
            scoring=self.scoring_settings(),
        )

    def precompute_reference(self, datamodule: Any = None) -> str:
        """Fill the precomputed reference table (held from a checkpoint, from the cache, or computed from
        the initial weights); returns where it came from: ``held``, ``cache`` or ``computed``."""
        trainer = attached_trainer(self)
        datamodule = datamodule if datamodule is not None else getattr(trainer, "datamodule", None)
        key = self.reference_cache_key(datamodule)
        cache_file = Path(self.runtime.cache_dir) / "reference" / f"{key}.pt"
        # Under the run's precision (autocast for bf16-mixed), so the table matches what training computes.
        context = trainer.precision_plugin.forward_context if trainer is not None else nullcontext
        loaders = datamodule.reference_loaders()
        return self.reference.precompute(loaders, self.device, key, cache_file, context)

    # -------------------------------------------------------------------------------------- steps
    def compute(self, batch: Any, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and metrics (unprefixed names) for one batch."""
        raise NotImplementedError

    def reference_logps(self, batch: Batch, split: str) -> torch.Tensor | None:
        return self.reference.logps(batch, split)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        # From here on the policy's weights are no longer the initial ones (the reference must not use them).
        self.policy.at_initial_weights = False
        loss, metrics = self.compute(batch, "train")
        if self.nan_policy.active and not self._all_ranks(bool(torch.isfinite(loss.detach()))):
            self._non_finite("loss", batch)
            return None  # skip: no backward, no optimiser step for this batch
        self._log("train", loss, metrics, batch.size, on_step=True)
        scheduler: Any = self.lr_schedulers()
        if scheduler is not None:
            self.log("train/lr", scheduler.get_last_lr()[0], on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self._batch_started is not None:
            elapsed = time.perf_counter() - self._batch_started
            tokens = float(batch.num_tokens)
            self.log("train/tokens_per_sec", tokens / max(elapsed, 1e-9), on_step=True, on_epoch=False)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters the optimiser updates (policy and any trainable companion), by name."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def _all_ranks(self, decision: bool) -> bool:
        """True when it holds on every rank (a skip must be taken by all ranks together)."""
        return all_ranks(attached_trainer(self), decision)

    def _non_finite(self, what: str, batch: Batch | None) -> None:
        """Apply ``trainer.nan_policy`` to a non-finite loss or gradient (stop raises; skip counts)."""
        self.nan_policy.handle(self, what, batch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # The `NanPolicy` callback has checked (and logged) the gradient norm before this hook runs.
        # Lightning clips only under automatic optimisation; after that norm, as it would.
        clip = self.runtime.gradient_clip_val
        if not self.automatic_optimization and clip and any(p.grad is not None for p in self.parameters()):
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        loss, metrics = self.compute(batch, "val")
        self._log("val", loss, metrics, batch.size, on_step=False)
        return loss

    def _log(
        self, split: str, loss: torch.Tensor, metrics: dict[str, torch.Tensor], batch_size: int, on_step: bool
    ) -> None:
        values = {f"{split}/loss": loss.detach(), **{f"{split}/{k}": v.detach() for k, v in metrics.items()}}
        on_progress_bar = (f"{split}/loss", f"{split}/rewards/accuracies")
        options: dict[str, Any] = {"on_step": on_step, "on_epoch": not on_step, "sync_dist": not on_step}
        for key, value in values.items():
            self.log(key, value, prog_bar=key in on_progress_bar, batch_size=batch_size, **options)

    # ------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        """The ``optim`` optimiser of the trainable parameters and its per-step schedule (`rlhf_lab.optim`)."""
        parameters = [p for _, p in self.trainable_parameters()]
        return configure_optimizers(self.optim, parameters, self.total_optimizer_steps())

    def derived_seed(self, *parts: Any) -> int:
        """A seed derived from the run's seed and ``parts`` (a rollout, a prompt, a step): draws that depend on
        what they are for, never on batch layout, rank or how often the run was resumed."""
        digest = hashlib.sha256(":".join(map(str, (self.runtime.seed, *parts))).encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1

    def total_optimizer_steps(self) -> int:
        """Optimiser steps the run will take (the learning-rate schedule's length)."""
        return max(1, int(self.trainer.estimated_stepping_batches))

    def metric_names(self, split: str) -> set[str] | None:
        """The metrics ``split`` logs (unprefixed), when known without running a batch; None: probe one."""
        return None

    # -------------------------------------------------------------------------------- checkpoints
    def checkpoint_keys(self) -> set[str]:
        """State-dict keys a checkpoint holds: the trainable weights and the objective's own state."""
        own_state = {
            name
            for name, buffer in self.named_buffers(recurse=False)
            if name not in self._non_persistent_buffers_set
        }
        return {name for name, _ in self.trainable_parameters()} | own_state

    def check_checkpoint_keys(self, keys: set[str], source: str) -> None:
        """Fail unless ``keys`` are exactly this run's `checkpoint_keys`, naming what is missing or extra."""
        expected = self.checkpoint_keys()
        missing, unexpected = sorted(expected - keys), sorted(keys - expected)
        if not missing and not unexpected:
            return
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ConfigError(
            f"{source} does not hold this run's trainable weights: {'; '.join(parts)}. Was it written by a run "
            "with another model, adapter or objective?"
        )

    def load_trained_state(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Load a checkpoint's state dict (trainable weights), after checking its keys."""
        self.check_checkpoint_keys(set(state_dict), source)
        self.load_state_dict(state_dict, strict=False)
        self.policy.at_initial_weights = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Trainable weights only: frozen base weights and companions come back from their model specs.
        keys = self.checkpoint_keys()
        if "state_dict" in checkpoint:  # DeepSpeed saves the weights itself
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint["rlhf_lab"] = {"reference": self.reference.state_for_checkpoint()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" in checkpoint:
            self.check_checkpoint_keys(set(checkpoint["state_dict"]), "the checkpoint")
        self.reference.restore((checkpoint.get("rlhf_lab") or {}).get("reference"))
        self.policy.at_initial_weights = False


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
