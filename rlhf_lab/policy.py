"""The policy and its companions: the reference, frozen models (teacher, reward models) and a value model.

`Policy` owns the trainable model (with its adapter) and turns `Sequences` into log-probs through the
chunked path of `rlhf_lab.logprobs` (per sequence, per token, entropies, top-k), scores sequences with a
classification head, and samples completions (`rlhf_lab.generation`).

`FrozenModel` wraps a model built beside the policy from its own spec (`rlhf_lab.models.build`): eval mode,
no gradients, its own tokenizer. `ValueModel` wraps a trainable sequence classifier read at every position.

`Reference` gives reference log-probs, one small class per mode, built by `make_reference`: ``copy``
(`CopyReference`: a frozen model loaded from the policy's spec), ``adapter_off`` (`AdapterOffReference`: the
policy's base with adapters disabled), ``precomputed`` (`PrecomputedReference`: a table filled by one pass
before training, cached on disk and kept in checkpoints) or ``none`` (`NoReference`). The reference is
always the *initial* policy: a precomputed table is computed from the policy only while its weights are
still the initial ones, and otherwise from a freshly loaded base model, never from trained weights.

"The base with its adapters off" is one view, `adapters_disabled`, read by the ``adapter_off`` reference, the
``adapter_off`` teacher (`rlhf_lab.objectives.distill`) and a precomputed table under LoRA/DoRA; whether a
run may ask for it is checked in one place, `require_adapters`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import nn

from rlhf_lab.data.batches import Batch, Sequences
from rlhf_lab.errors import ConfigError, check_choice
from rlhf_lab.generation import Generation, SamplingConfig, generate
from rlhf_lab.logprobs import (
    SequenceLogps,
    backbone_and_score_head,
    completion_logps,
    decoder_and_head,
    forward_inputs,
    last_hidden_state,
    unwrap_model,
)

log = logging.getLogger(__name__)

REFERENCE_MODES = ("copy", "adapter_off", "precomputed", "none")


def hidden_states(backbone: nn.Module, sequences: Sequences) -> torch.Tensor:
    """``[N, T, H]`` final hidden states of a decoder stack (`rlhf_lab.logprobs.forward_inputs`: positions
    counted over real tokens, and the images of a vision-language model's rows)."""
    if sequences.shared is not None and shares_prompts(backbone, sequences.shared.input_ids.shape[1]):
        shared = sequences.shared
        outputs = backbone(
            input_ids=shared.input_ids,
            attention_mask=shared.attention(None if _attention(backbone) == "sdpa" else _dtype(backbone)),
            position_ids=shared.position_ids,
            use_cache=False,
        )
        # Each unshared row's hidden states, read from the packed rows: the head sees the usual layout.
        return last_hidden_state(outputs)[shared.source_rows, shared.source_positions]
    return last_hidden_state(backbone(**forward_inputs(backbone, sequences), use_cache=False))


def _attention(backbone: nn.Module) -> str:
    return str(getattr(backbone.config, "_attn_implementation", None) or "eager")


def _dtype(backbone: nn.Module) -> torch.dtype:
    return next(backbone.parameters()).dtype


_warned_unshared: set[str] = set()


def shares_prompts(backbone: nn.Module, width: int) -> bool:
    """Whether ``backbone`` can read packed pairs ``width`` tokens long: a text decoder taking a custom 4-D mask
    (sdpa or eager attention) and no sliding window shorter than the row (the custom mask replaces the
    window); others fall back to unshared rows, saying so once."""
    implementation = _attention(backbone)
    window = getattr(backbone.config, "sliding_window", None)
    if (
        implementation in ("sdpa", "eager")
        and getattr(backbone.config, "vision_config", None) is None
        and (window is None or width <= window)
    ):
        return True
    name = f"{type(backbone).__name__}/{implementation}/window {window}"
    if name not in _warned_unshared:
        _warned_unshared.add(name)
        log.info(
            "data.prefix_sharing: %s cannot take a custom 4-D attention mask for these rows; pairs run unshared",
            name,
        )
    return False


def sequence_logps(
    model: nn.Module,
    sequences: Sequences,
    chunk_size: int = 256,
    *,
    score_prompt: bool = False,
    per_token: bool = False,
    entropy: bool = False,
    top_k: int = 0,
    temperature: float = 1.0,
    recompute: bool | str = "auto",
) -> SequenceLogps:
    """Run the decoder once over ``sequences`` and score their completion (and, if asked, prompt) tokens."""
    decoder, head = decoder_and_head(model)
    return completion_logps(
        hidden_states(decoder, sequences),
        sequences.input_ids,
        sequences.completion_mask,
        head,
        chunk_size=chunk_size,
        logit_softcap=getattr(unwrap_model(model).config, "final_logit_softcapping", None),
        prompt_mask=sequences.prompt_mask if score_prompt else None,
        per_token=per_token,
        entropy=entropy,
        top_k=top_k,
        temperature=temperature,
        recompute=recompute,
    )


def classifier_outputs(model: nn.Module, sequences: Sequences) -> torch.Tensor:
    """``[N, T]`` scores of a one-label sequence classifier at every position."""
    backbone, score = backbone_and_score_head(model)
    return score(hidden_states(backbone, sequences)).squeeze(-1).float()


def sequence_scores(model: nn.Module, sequences: Sequences) -> torch.Tensor:
    """``[N]`` scores of a one-label sequence classifier (reward model) at each row's last real token.

    The last token comes from the attention mask (rows are right-padded), not from searching for pad ids
    as HF's own pooling does: with pad = EOS (Mistral, Llama) that search stops at the wrong token.
    """
    scores = classifier_outputs(model, sequences)
    last = sequences.attention_mask.sum(1) - 1
    return scores[torch.arange(scores.shape[0], device=scores.device), last]


class Policy(nn.Module):
    """The trainable model with its adapter.

    Args:
        model: A causal LM (or, for reward-model training, a sequence classifier), possibly peft-wrapped.
        chunk_size: Completion tokens per output-head call.
        recompute: Recompute the head's logits in backward instead of storing them: True, False or ``auto``
            (``logps_recompute``; `rlhf_lab.logprobs.completion_logps`).
    """

    def __init__(self, model: nn.Module, chunk_size: int = 256, recompute: bool | str = "auto") -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.recompute = recompute
        #: True while the weights are the initial ones (cleared once training starts or weights are loaded).
        self.at_initial_weights = True

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def forward(self, sequences: Sequences, **options: Any) -> SequenceLogps:
        """Log-probs of ``sequences``; ``options`` as `sequence_logps` (``per_token``, ``entropy``...)."""
        return sequence_logps(self.model, sequences, self.chunk_size, recompute=self.recompute, **options)

    def scores(self, sequences: Sequences) -> torch.Tensor:
        """``[N]`` scalar scores of a sequence-classification policy (reward-model training)."""
        return sequence_scores(self.model, sequences)

    def generate(self, prompts: Sequences, sampling: SamplingConfig, **ids: Any) -> Generation:
        """Sample completions of left-padded ``prompts``: `rlhf_lab.generation.generate` on the policy
        (``eos_token_id``, ``pad_token_id``, ``generator``; KV cache, EOS stop)."""
        return generate(self.model, prompts, sampling, **ids)

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The policy's base with its adapters disabled, inside the block (`adapters_disabled`)."""
        with adapters_disabled(self.model):
            yield


class FrozenModel(nn.Module):
    """A model built beside the policy from its own spec: eval mode, no gradients, its own tokenizer.

    The teacher of a distillation run, a reward model, the ``copy`` reference.

    Args:
        model: The loaded model (a causal LM or a sequence classifier).
        tokenizer: Its tokenizer (reward models may tokenise differently from the policy).
        chunk_size: Completion tokens per output-head call.
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None, chunk_size: int = 256) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.chunk_size = chunk_size
        self.train(False)

    def train(self, mode: bool = True) -> FrozenModel:
        # Stays in eval mode whatever the trainer asks (no dropout in a frozen model).
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, sequences: Sequences, **options: Any) -> SequenceLogps:
        return sequence_logps(self.model, sequences, self.chunk_size, **options)

    @torch.no_grad()
    def scores(self, sequences: Sequences) -> torch.Tensor:
        """``[N]`` scores of a sequence classifier at each row's last token."""
        return sequence_scores(self.model, sequences)

    @torch.no_grad()
    def score_examples(self, examples: list[Any], max_length: int | None = None) -> torch.Tensor:
        """Score `PreferenceExample` rows with this model's own tokenizer and chat template.

        Text from another tokenizer (the policy's completions) is decoded first and passed here as
        examples, so a reward model with a different vocabulary scores exactly what a user would see.

        Returns:
            ``[N]`` scores of the chosen (or only) completions, then ``[N]`` of the rejected ones if any.
        """
        from rlhf_lab.data.collate import PreferenceCollator
        from rlhf_lab.data.tokenize import TokenizeSettings, tokenize_examples

        settings = TokenizeSettings(max_length=max_length, max_prompt_length=None)
        tokenized, stats = tokenize_examples(examples, self.tokenizer, settings)
        if stats["dropped_too_long"]:
            raise ValueError(f"{stats['dropped_too_long']} examples do not fit max_length={max_length}")
        batch = PreferenceCollator(pad_token_id=self.tokenizer.pad_token_id)(list(enumerate(tokenized)))
        device = next(self.model.parameters()).device
        return self.scores(batch.sequences.to(device))


class ValueModel(nn.Module):
    """A trainable one-label sequence classifier read at every position (PPO's critic).

    Args:
        model: The loaded classifier.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, sequences: Sequences) -> torch.Tensor:
        """``[N, T]`` value estimates: position ``t`` values the state after token ``t``."""
        return classifier_outputs(self.model, sequences)


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


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` (a peft-wrapped model) as its base with the adapters disabled, inside the block: the view
    that the ``adapter_off`` reference, the ``adapter_off`` teacher and a precomputed table under LoRA read."""
    with cast(Any, model).disable_adapter():  # peft's PeftModel.disable_adapter
        yield model


class _ByMode(type):
    """``Reference(mode, policy, frozen, load_initial)``, the signature of the one class the per-mode classes
    replaced, builds through `make_reference`; each per-mode class constructs as usual."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is Reference:
            return make_reference(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class Reference(nn.Module, metaclass=_ByMode):
    """Reference log-probs: the interface of the classes per mode in `REFERENCE_MODES` (`make_reference`).

    ``mode`` names the class's mode; ``model`` is the frozen model a ``copy`` reference runs (None otherwise).
    """

    mode: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.model: FrozenModel | None = None

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
        """Reference log-probs ``[N]`` in the batch's row order, or None for ``none``."""
        return self.compute(batch.sequences)

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


class CopyReference(Reference):
    """A frozen model loaded from the policy's spec (loaded, not deep-copied, so a sharding strategy
    partitions it at init like the policy)."""

    mode = "copy"

    def __init__(self, frozen: FrozenModel) -> None:
        super().__init__()
        self.model = frozen

    @torch.no_grad()
    def run(self, sequences: Sequences, **options: Any) -> SequenceLogps:
        assert self.model is not None
        return self.model(sequences, **options)  # type: ignore[no-any-return]


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
    def _initial_weights(self) -> Iterator[Callable[[Sequences], torch.Tensor]]:
        """A scorer running the initial weights, never the trained ones."""
        policy = self._policy[0]
        if policy.is_peft:
            with adapters_disabled(policy.model):
                yield lambda sequences: policy(sequences).logps
            return
        if policy.at_initial_weights:
            yield lambda sequences: policy(sequences).logps
            return
        if self._load_initial is None:
            raise RuntimeError(
                "the precomputed reference must be computed from the initial weights, but the policy has "
                "been trained and no base model loader was given"
            )
        log.info("computing reference log-probs from a freshly loaded base model (the policy has trained)")
        base = self._load_initial()  # released when the caller's `with` block ends
        yield lambda sequences: sequence_logps(base, sequences, policy.chunk_size).logps

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
                    for batch in loader:
                        values = score(batch.sequences.to(device)).float().cpu()
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
