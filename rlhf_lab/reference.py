"""The reference: log-probs of the initial policy, one small class per mode behind `make_reference`.

``copy`` (`CopyReference`: a frozen model loaded from the policy's spec), ``adapter_off``
(`AdapterOffReference`: the policy's base with adapters disabled, `rlhf_lab.policy.adapters_disabled`),
``precomputed`` (`PrecomputedReference`: a table filled by one pass before training, cached on disk and kept
in checkpoints) or ``none`` (`NoReference`). The reference is always the *initial* policy: a precomputed
table is computed from the policy only while its weights are still the initial ones, and otherwise from a
freshly loaded base model, never from trained weights. Whether a run may ask for the adapter-off view is
checked in one place, `require_adapters`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from rlhf_lab.data.batches import Batch, PairBatch, Sequences
from rlhf_lab.errors import ConfigError, check_choice, check_range
from rlhf_lab.logprobs import SequenceLogps
from rlhf_lab.losses.dpo import ld_logps
from rlhf_lab.policy import FrozenModel, Policy, adapters_disabled, sequence_logps
from rlhf_lab.progress import progress

log = logging.getLogger(__name__)

REFERENCE_MODES = ("copy", "adapter_off", "precomputed", "none")


@dataclass(frozen=True)
class RowScoring:
    """How a batch's rows become per-row log-probs, for the policy and the reference alike: their summed
    completion log-probs, or with ``ld_alpha`` LD-DPO's (`rlhf_lab.losses.ld_logps`: the tail past the pair's
    shared length weighted by ``ld_alpha``; pair batches only)."""

    ld_alpha: float | None = None

    def options(self, batch: Batch) -> dict[str, Any]:
        """The scoring options (`rlhf_lab.policy.sequence_logps`) these values need."""
        if self.ld_alpha is None:
            return {}
        assert isinstance(batch, PairBatch), "LD-DPO weights pairs"
        return {"tail_after": batch.shared_lengths()}

    def value(self, stats: SequenceLogps) -> torch.Tensor:
        """``[N]`` per-row values from statistics scored with `options`."""
        if self.ld_alpha is None:
            return stats.logps
        assert stats.tail_logps is not None
        return ld_logps(stats.logps, stats.tail_logps, self.ld_alpha)

    def __call__(self, batch: Batch, score: Callable[..., SequenceLogps]) -> torch.Tensor:
        """``[N]`` values of ``batch``'s rows under ``score`` (``score(sequences, **options)``)."""
        return self.value(score(batch.sequences, **self.options(batch)))


def require_adapters(setting: str, adapter: Any, instead: str) -> None:
    """The one check behind every ``adapter_off`` setting (the reference, the teacher): the policy's base with
    its adapters disabled needs adapters to disable, i.e. ``adapter=lora`` or ``adapter=dora``.

    Args:
        setting: The key set to ``adapter_off`` (``algo.reference``, ``teacher``).
        adapter: The run's adapter spec (`rlhf_lab.models.adapters`), checked before any model loads.
        instead: What to do instead, for the message.
    """
    if not adapter.is_peft:
        raise ConfigError(f"{setting}=adapter_off needs adapter=lora or adapter=dora; {instead}")


def resolve_reference_mode(requested: str, needs_reference: bool, adapter: Any, objective: str) -> str:
    """The reference mode an objective runs with: ``algo.reference`` checked against the objective and the
    adapter (``auto``: ``adapter_off`` under LoRA/DoRA, else ``copy``; reference-free objectives: ``none``)."""
    check_choice("algo.reference", requested, ("auto", *REFERENCE_MODES))
    if not needs_reference:
        if requested not in ("auto", "none"):
            raise ConfigError(
                f"algo.reference={requested} but {objective} is reference-free; use algo.reference=none (or auto)"
            )
        return "none"
    if requested == "auto":
        return "adapter_off" if adapter.is_peft else "copy"
    if requested == "none":
        raise ConfigError(
            f"algo.reference=none but {objective} needs a reference; choose one of: copy, adapter_off, precomputed"
        )
    if requested == "adapter_off":
        require_adapters(
            "algo.reference", adapter, "use algo.reference=copy or precomputed with adapter=full"
        )
    return requested


class Reference(nn.Module):
    """Reference log-probs: the interface of the classes per mode in `REFERENCE_MODES` (`make_reference`).

    ``mode`` names the class's mode; ``model`` is the frozen model a ``copy`` reference runs (None otherwise).
    """

    mode: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.model: FrozenModel | None = None
        #: How rows become values (`RowScoring`; the objective sets LD-DPO's).
        self.scoring = RowScoring()

    @torch.no_grad()
    def run(self, sequences: Sequences, **options: Any) -> SequenceLogps:
        """Reference statistics of ``sequences`` computed now (``options`` as `sequence_logps`: per-token
        log-probs, temperature...), for ``copy`` and ``adapter_off`` (online RL scores fresh samples)."""
        raise ConfigError(
            f"algo.reference={self.mode} has no reference model to run; use copy or adapter_off"
        )

    @torch.no_grad()
    def compute(self, sequences: Sequences) -> torch.Tensor:
        """Summed reference log-probs ``[N]`` of every row, computed now."""
        return self.run(sequences).logps

    def logps(self, batch: Batch, split: str) -> torch.Tensor | None:
        """Reference log-probs ``[N]`` in the batch's row order (`scoring`'s values), or None for ``none``."""
        with torch.no_grad():
            return self.scoring(batch, self.run)

    def precompute(
        self,
        loaders: Mapping[str, Any],
        device: torch.device,
        key: str,
        cache_file: Path | None,
        forward_context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        agree: Callable[[bool], bool] = bool,
    ) -> str:
        """Fill the tables of a ``precomputed`` reference (`PrecomputedReference.precompute`)."""
        raise ConfigError(
            f"algo.reference={self.mode} has no table to precompute; use algo.reference=precomputed"
        )

    def state_for_checkpoint(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of the reference besides weights (the precomputed tables), or None."""
        return None

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Take back what `state_for_checkpoint` returned."""


@dataclass(frozen=True)
class ReferenceSync:
    """TR-DPO's schedule (``algo.reference_sync``): every ``steps`` optimiser steps the reference moves toward
    the policy by ``alpha`` (``hard``: alpha 1, a copy), as TRL's ``sync_ref_model`` with
    ``ref_model_mixup_alpha`` and ``ref_model_sync_steps``."""

    alpha: float
    steps: int

    MODES: ClassVar[tuple[str, ...]] = ("soft", "hard")

    @classmethod
    def from_config(cls, mode: str | None, alpha: float, steps: int) -> ReferenceSync | None:
        """The schedule ``algo.reference_sync`` names (None: the reference stays the initial policy)."""
        if mode is None:
            return None
        check_choice("algo.reference_sync", mode, (None, *cls.MODES))
        check_range("algo.reference_sync_steps", steps, 1)
        if mode == "hard":
            return cls(1.0, int(steps))
        check_range("algo.reference_sync_alpha", alpha, 0.0, 1.0, low_inclusive=False)
        return cls(float(alpha), int(steps))

    def check(self, mode: str, needs_reference: bool) -> None:
        """The reference must be its own full model: not a table, not the adapter-off view of the policy."""
        if not needs_reference:
            raise ConfigError("algo.reference_sync updates a reference, but this loss is reference-free")
        if mode != "copy":
            raise ConfigError(
                f"algo.reference_sync needs algo.reference=copy (a model of its own to update), not {mode}: a "
                "precomputed table cannot follow the policy, and under LoRA the reference is the policy's base"
            )

    @staticmethod
    def check_strategy(strategy: Any) -> None:
        from rlhf_lab.strategies import fsdp_options

        if fsdp_options(strategy) is not None or getattr(strategy, "zero_stage_3", False):
            raise ConfigError(
                "algo.reference_sync mixes the policy's parameters into the reference's, which is validated for "
                "single-device, ddp and zero2 runs only; use strategy=ddp or strategy=zero2"
            )

    def due(self, step: int, synced_at: int) -> bool:
        """Whether the update after optimiser step ``step`` is still to do."""
        return step > synced_at and step % self.steps == 0


class CopyReference(Reference):
    """A frozen model loaded from the policy's spec (loaded, not deep-copied, so a sharding strategy
    partitions it at init like the policy).

    TR-DPO (`sync_toward`) moves it toward the policy; from then on checkpoints keep its weights and the
    step of the last update, since the initial spec no longer gives them back.
    """

    mode = "copy"

    def __init__(self, frozen: FrozenModel) -> None:
        super().__init__()
        self.model = frozen
        #: The optimiser step of the last TR-DPO update (0: never updated: the initial policy).
        self.synced_at = 0

    @torch.no_grad()
    def run(self, sequences: Sequences, **options: Any) -> SequenceLogps:
        assert self.model is not None
        return self.model(sequences, **options)  # type: ignore[no-any-return]

    @torch.no_grad()
    def sync_toward(self, policy: nn.Module, alpha: float, step: int) -> None:
        """TR-DPO's update (Gorbatovski et al., 2024, Eq. 5/6; TRL's ``SyncRefModelCallback``):
        ``ref <- (1 - alpha) ref + alpha policy``, parameter by parameter (``alpha = 1``: a hard copy)."""
        assert self.model is not None
        mine = dict(self.model.model.named_parameters())
        theirs = dict(policy.named_parameters())
        if mine.keys() != theirs.keys():
            raise RuntimeError(
                "the reference and the policy hold different parameters; TR-DPO cannot mix them"
            )
        for name, target in mine.items():
            target.mul_(1.0 - alpha).add_(theirs[name].detach().to(target.dtype), alpha=alpha)
        self.synced_at = step

    def state_for_checkpoint(self) -> dict[str, Any] | None:
        if not self.synced_at:
            return None
        assert self.model is not None
        weights = {
            name: value.detach().cpu().clone() for name, value in self.model.model.state_dict().items()
        }
        return {"synced_at": self.synced_at, "weights": weights}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        if state is None or "weights" not in state:
            return
        assert self.model is not None
        self.model.model.load_state_dict(state["weights"])
        self.synced_at = int(state["synced_at"])


class AdapterOffReference(Reference):
    """The policy's base with its adapters disabled (`adapters_disabled`)."""

    mode = "adapter_off"

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self._policy = [policy]  # in a list: not registered twice (state dict, device moves)

    @torch.no_grad()
    def run(self, sequences: Sequences, **options: Any) -> SequenceLogps:
        policy = self._policy[0]
        with adapters_disabled(policy.model):
            return policy(sequences, **options)  # type: ignore[no-any-return]


class NoReference(Reference):
    """No reference (reference-free objectives): log-probs are None."""

    mode = "none"

    def logps(self, batch: Batch, split: str) -> torch.Tensor | None:
        return None


class PrecomputedReference(Reference):
    """A table per split filled by one pass before training, cached on disk and kept in checkpoints.

    Args:
        policy: The policy: the table is computed from it while its weights are the initial ones (or, under
            LoRA/DoRA, from its base with the adapters disabled).
        load_initial: Loads a fresh copy of the initial weights, for full fine-tuning once the policy's own
            weights are no longer the initial ones (resume, evaluation).
    """

    mode = "precomputed"

    def __init__(self, policy: Policy, load_initial: Callable[[], nn.Module] | None = None) -> None:
        super().__init__()
        self._policy = [policy]  # in a list: not registered twice (state dict, device moves)
        self._load_initial = load_initial
        #: Precomputed tables per split (``[examples, rows_per_example]``) and the key they were computed for.
        self.tables: dict[str, torch.Tensor] = {}
        self.tables_key: str | None = None

    def logps(self, batch: Batch, split: str) -> torch.Tensor | None:
        table = self.tables.get(split)
        if table is None:
            raise RuntimeError(f"no precomputed reference log-probs for split {split!r}")
        return batch.per_row(table.to(batch.index.device)[batch.index]).to(torch.float32)

    @contextlib.contextmanager
    def _initial_weights(self) -> Iterator[Callable[..., SequenceLogps]]:
        """A scorer running the initial weights, never the trained ones."""
        policy = self._policy[0]
        if policy.is_peft:
            with adapters_disabled(policy.model):
                yield policy
            return
        if policy.at_initial_weights:
            yield policy
            return
        if self._load_initial is None:
            raise RuntimeError(
                "the precomputed reference must be computed from the initial weights, but the policy has "
                "been trained and no base model loader was given"
            )
        log.info("computing reference log-probs from a freshly loaded base model (the policy has trained)")
        base = self._load_initial()  # released when the caller's `with` block ends
        yield lambda sequences, **options: sequence_logps(base, sequences, policy.chunk_size, **options)

    @torch.no_grad()
    def precompute(
        self,
        loaders: Mapping[str, Any],
        device: torch.device,
        key: str,
        cache_file: Path | None,
        forward_context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        agree: Callable[[bool], bool] = bool,
    ) -> str:
        """Fill the tables for ``key`` with one pass over each loader (unshuffled), from the initial weights.

        Tables already held for ``key`` (restored from a checkpoint) are kept; otherwise ``cache_file`` is
        loaded if it exists, else the tables are computed and saved there. Processes sharing the cache take a
        file lock around the check, the computation and the save, so two runs never compute (or write) one
        table at once; the save is atomic either way. Under data parallelism the ranks compute together (a
        sharded model's forward is collective) and ``agree`` makes them take the same decision.

        Returns:
            Where the tables came from: ``held``, ``cache`` or ``computed``.
        """
        if self.tables and self.tables_key == key:
            return "held"
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        lock = contextlib.nullcontext() if cache_file is None or distributed else file_lock(cache_file)
        with lock:
            if agree(cache_file is not None and cache_file.exists()):
                assert cache_file is not None
                self.tables = torch.load(cache_file, map_location="cpu", weights_only=True)
                self.tables_key = key
                log.info("reference log-probs loaded from cache %s", cache_file)
                return "cache"
            self.tables, self.tables_key = self._compute_tables(loaders, device, forward_context), key
            if cache_file is not None and (not distributed or torch.distributed.get_rank() == 0):
                from rlhf_lab.checkpoints import atomic_torch_save

                atomic_torch_save(self.tables, cache_file)
                log.info("reference log-probs cached at %s", cache_file)
        return "computed"

    def _compute_tables(
        self,
        loaders: Mapping[str, Any],
        device: torch.device,
        forward_context: Callable[[], contextlib.AbstractContextManager[Any]],
    ) -> dict[str, torch.Tensor]:
        policy = self._policy[0]
        was_training = policy.training
        policy.eval()
        tables: dict[str, torch.Tensor] = {}
        try:
            with self._initial_weights() as score, forward_context():
                for split, loader in loaders.items():
                    table: torch.Tensor | None = None
                    for batch in progress(loader, f"reference log-probs ({split})"):
                        on_device = dataclasses.replace(batch, sequences=batch.sequences.to(device))
                        values = self.scoring(on_device, score).float().cpu()
                        if table is None:
                            table = torch.full((len(loader.dataset), batch.rows_per_example), float("nan"))
                        table[batch.index] = batch.per_example(values)
                    if table is not None:
                        tables[split] = table
        finally:
            policy.train(was_training)
        return tables

    def state_for_checkpoint(self) -> dict[str, Any] | None:
        """The precomputed tables and their key (a resume then needs neither the cache nor the base)."""
        if not self.tables:
            return None
        return {"key": self.tables_key, "tables": self.tables}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        if state is not None:
            self.tables, self.tables_key = dict(state["tables"]), state["key"]


def make_reference(
    mode: str,
    policy: Policy,
    frozen: FrozenModel | None = None,
    load_initial: Callable[[], nn.Module] | None = None,
) -> Reference:
    """The reference for ``mode`` (one of `REFERENCE_MODES`).

    Args:
        mode: ``copy``, ``adapter_off``, ``precomputed`` or ``none``.
        policy: The policy (``adapter_off`` runs through it, and ``precomputed`` while it is initial).
        frozen: For ``copy``: the frozen model loaded from the policy's spec.
        load_initial: For ``precomputed`` with full fine-tuning: loads a fresh copy of the initial weights.
    """
    check_choice("algo.reference", mode, REFERENCE_MODES)
    if mode == "copy":
        if frozen is None:
            raise ValueError("algo.reference=copy needs the frozen reference model")
        return CopyReference(frozen)
    if mode == "adapter_off":
        return AdapterOffReference(policy)
    if mode == "precomputed":
        return PrecomputedReference(policy, load_initial)
    return NoReference()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` (POSIX ``flock``; released if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic save still keeps the cache whole
        yield
        return
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_key(**parts: Any) -> str:
    """A short hash of everything that changes a cached value (JSON-serialisable parts, order-free)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
