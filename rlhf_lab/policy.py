"""The policy/reference wrapper shared by every objective.

`Policy` owns the trainable model (with its adapter) and turns a collated batch into per-sequence
completion log-probs. The output head runs only at completion positions, in chunks, and the
full-vocabulary log-softmax is never materialised: each chunk gathers the target logit and subtracts
``logsumexp``. Under autograd each chunk is checkpointed, so only ``[tokens, hidden]`` activations are
kept for backward and ``[batch, seq, vocab]`` never exists.

`Reference` gives the reference log-probs in one of four modes: ``copy`` (a frozen copy), ``adapter_off``
(the policy's base with adapters disabled), ``precomputed`` (a table filled by one pass before training,
cached on disk) or ``none`` (reference-free objectives).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rlhf_lab.errors import ConfigError, check_choice

log = logging.getLogger(__name__)

REFERENCE_MODES = ("copy", "adapter_off", "precomputed", "none")


@dataclass
class SequenceLogps:
    """Per-sequence statistics of the completion tokens.

    Attributes:
        logps: ``[N]`` summed log-probs of the completion tokens.
        lengths: ``[N]`` number of completion tokens scored.
        mean_logits: ``[N]`` mean logit over the vocabulary and the completion tokens (detached).
    """

    logps: torch.Tensor
    lengths: torch.Tensor
    mean_logits: torch.Tensor
    prompt_logps: torch.Tensor | None = None
    prompt_lengths: torch.Tensor | None = None

    def split(self, size: int) -> tuple[SequenceLogps, SequenceLogps]:
        """Split a chosen-then-rejected batch into its two halves."""
        halves = []
        for part in (slice(None, size), slice(size, None)):
            halves.append(
                SequenceLogps(
                    self.logps[part],
                    self.lengths[part],
                    self.mean_logits[part],
                    None if self.prompt_logps is None else self.prompt_logps[part],
                    None if self.prompt_lengths is None else self.prompt_lengths[part],
                )
            )
        return halves[0], halves[1]


def _token_logps_and_logit_sums(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return target_logits - torch.logsumexp(logits, dim=-1), logits.sum(-1).detach()


def completion_logps(
    hidden_states: torch.Tensor,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    head: nn.Module,
    *,
    chunk_size: int = 256,
    logit_softcap: float | None = None,
    prompt_mask: torch.Tensor | None = None,
) -> SequenceLogps:
    """Summed log-probs of the completion tokens, computing the head only where needed.

    Token ``t`` is predicted from the hidden state at ``t - 1``; a position counts when
    ``completion_mask[:, t]`` is set (the first position has no prediction and never counts).

    Args:
        hidden_states: ``[N, T, H]`` final hidden states (after the final norm).
        input_ids: ``[N, T]`` token ids.
        completion_mask: ``[N, T]`` bool, True at completion tokens.
        head: The output projection (``lm_head``).
        chunk_size: Tokens per head call; bounds the ``[chunk, vocab]`` logits alive at once.
        logit_softcap: Final logit soft-capping (Gemma 2), if the model uses it.
        prompt_mask: ``[N, T]`` bool, prompt tokens to score as well (summed apart, in ``prompt_logps``).

    Returns:
        `SequenceLogps` with ``[N]`` tensors.
    """
    num_sequences = hidden_states.shape[0]
    target_mask = completion_mask[:, 1:].bool()
    scored_mask = target_mask if prompt_mask is None else target_mask | prompt_mask[:, 1:].bool()
    rows, cols = scored_mask.nonzero(as_tuple=True)
    is_completion = target_mask[rows, cols]
    selected_hidden = hidden_states[:, :-1][rows, cols]
    targets = input_ids[:, 1:][rows, cols]
    token_logps, logit_sums = [], []
    for start in range(0, targets.numel(), chunk_size):
        chunk_hidden = selected_hidden[start : start + chunk_size]
        chunk_targets = targets[start : start + chunk_size]
        if torch.is_grad_enabled() and chunk_hidden.requires_grad:
            chunk_logps, chunk_sums = checkpoint(
                _token_logps_and_logit_sums,
                chunk_hidden,
                chunk_targets,
                head,
                logit_softcap,
                use_reentrant=False,
            )
        else:
            chunk_logps, chunk_sums = _token_logps_and_logit_sums(
                chunk_hidden, chunk_targets, head, logit_softcap
            )
        token_logps.append(chunk_logps)
        logit_sums.append(chunk_sums)
    device = hidden_states.device
    if token_logps:
        all_logps = torch.cat(token_logps)
        all_sums = torch.cat(logit_sums)
    else:
        all_logps = hidden_states.new_zeros(0, dtype=torch.float32)
        all_sums = hidden_states.new_zeros(0, dtype=torch.float32)
    zeros = torch.zeros(num_sequences, device=device, dtype=torch.float32)
    logps = zeros.index_add(0, rows, torch.where(is_completion, all_logps, 0.0))
    lengths = target_mask.sum(1)
    sums = zeros.index_add(0, rows, torch.where(is_completion, all_sums, 0.0))
    vocab_size = head.weight.shape[0] if hasattr(head, "weight") else 1
    mean_logits = sums / (lengths.clamp(min=1).float() * vocab_size)
    result = SequenceLogps(logps=logps, lengths=lengths, mean_logits=mean_logits)
    if prompt_mask is not None:
        result.prompt_logps = zeros.index_add(0, rows, torch.where(is_completion, 0.0, all_logps))
        result.prompt_lengths = (scored_mask & ~target_mask).sum(1)
    return result


def naive_completion_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """Reference implementation with a full log-softmax (tests only: it materialises ``[N, T, V]``)."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token_logps * completion_mask[:, 1:]).sum(-1)


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The underlying ``*ForCausalLM`` (peft wraps it; its LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    causal_lm = unwrap_causal_lm(model)
    head = causal_lm.get_output_embeddings()
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else causal_lm.model
    if head is None or decoder is None:
        raise ConfigError(f"{type(causal_lm).__name__} exposes no decoder/output head; it is not a causal LM")
    return decoder, head


def sequence_logps(
    model: nn.Module, batch: Mapping[str, torch.Tensor], chunk_size: int = 256, score_prompt: bool = False
) -> SequenceLogps:
    """Run the decoder once over the batch and score its completion (and, if asked, prompt) tokens."""
    decoder, head = decoder_and_head(model)
    outputs = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    hidden = outputs[0] if isinstance(outputs, tuple) else outputs.last_hidden_state
    softcap = getattr(unwrap_causal_lm(model).config, "final_logit_softcapping", None)
    prompt_mask = batch["attention_mask"].bool() & ~batch["completion_mask"].bool() if score_prompt else None
    return completion_logps(
        hidden,
        batch["input_ids"],
        batch["completion_mask"],
        head,
        chunk_size=chunk_size,
        logit_softcap=softcap,
        prompt_mask=prompt_mask,
    )


class Policy(nn.Module):
    """The trainable model with its adapter.

    Args:
        model: A causal LM, possibly wrapped by peft.
        chunk_size: Completion tokens per output-head call.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 256) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def forward(self, batch: Mapping[str, torch.Tensor], score_prompt: bool = False) -> SequenceLogps:
        return sequence_logps(self.model, batch, self.chunk_size, score_prompt)

    def scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[N]`` scalar scores of a sequence-classification model (reward models), at each row's last token.

        The last token comes from the attention mask (batches are right-padded), not from searching for pad
        ids as HF's own pooling does: with pad = EOS (Mistral, Llama) that search stops at the wrong token.
        """
        classifier = unwrap_causal_lm(self.model)
        decoder = getattr(classifier, classifier.base_model_prefix)
        outputs = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        hidden = outputs[0] if isinstance(outputs, tuple) else outputs.last_hidden_state
        last = batch["attention_mask"].sum(1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return classifier.score(pooled).squeeze(-1).float()

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        if not self.is_peft:
            raise ConfigError("algo.reference=adapter_off needs adapter=lora or adapter=dora")
        with self.model.disable_adapter():
            yield


class Reference(nn.Module):
    """Reference log-probs for one of the modes in `REFERENCE_MODES`.

    Args:
        mode: ``copy``, ``adapter_off``, ``precomputed`` or ``none``.
        policy: The policy (``adapter_off`` and ``precomputed`` run through it).
        frozen_model: For ``copy``: a separately loaded copy of the initial weights (loaded, not deep-copied,
            so a sharding strategy can partition it at init like the policy).
    """

    def __init__(self, mode: str, policy: Policy, frozen_model: nn.Module | None = None) -> None:
        super().__init__()
        check_choice("algo.reference", mode, REFERENCE_MODES)
        if mode == "copy" and frozen_model is None:
            raise ValueError("algo.reference=copy needs the frozen reference model")
        if mode == "adapter_off" and not policy.is_peft:
            raise ConfigError(
                "algo.reference=adapter_off needs adapter=lora or adapter=dora; "
                "use algo.reference=copy or precomputed for full fine-tuning"
            )
        self.mode = mode
        # Held in a list so the policy is not registered twice (state dict, device moves).
        self._policy = [policy]
        self.model = frozen_model if mode == "copy" else None
        if self.model is not None:
            self.model.requires_grad_(False)
            self.model.eval()
        self.tables: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> Reference:
        # The frozen copy stays in eval mode whatever the trainer asks.
        super().train(mode)
        if self.model is not None:
            self.model.eval()
        return self

    @torch.no_grad()
    def compute(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Summed reference log-probs ``[N]`` for every sequence of the batch, computed now."""
        policy = self._policy[0]
        if self.mode == "copy":
            assert self.model is not None
            return sequence_logps(self.model, batch, policy.chunk_size).logps
        if self.mode in ("adapter_off", "precomputed") and policy.is_peft:
            with policy.adapters_disabled():
                return policy(batch).logps
        if self.mode == "precomputed":
            return policy(batch).logps
        raise ConfigError(f"algo.reference={self.mode} has no reference model to run")

    def logps(self, batch: Mapping[str, torch.Tensor], split: str) -> torch.Tensor | None:
        """Reference log-probs ``[N]`` in the batch's row order, or None for ``none``."""
        if self.mode == "none":
            return None
        if self.mode == "precomputed":
            table = self.tables.get(split)
            if table is None:
                raise RuntimeError(f"no precomputed reference log-probs for split {split!r}")
            rows = table.to(batch["index"].device)[batch["index"]]  # [B, S]
            return rows.t().reshape(-1).to(torch.float32)  # chosen block, then rejected block
        return self.compute(batch)

    def precompute(self, loaders: Mapping[str, Any], device: torch.device, cache_file: Path | None) -> bool:
        """Fill the tables with one pass over each loader (unshuffled); load/save ``cache_file``.

        Returns:
            True if the tables were computed, False if they came from the cache.
        """
        if cache_file is not None and cache_file.exists():
            self.tables = torch.load(cache_file, map_location="cpu")
            log.info("reference log-probs loaded from cache %s", cache_file)
            return False
        policy = self._policy[0]
        was_training = policy.training
        policy.eval()
        tables: dict[str, torch.Tensor] = {}
        try:
            for split, loader in loaders.items():
                size = len(loader.dataset)
                table: torch.Tensor | None = None
                for batch in loader:
                    batch = {k: v.to(device) for k, v in batch.items()}
                    values = self.compute(batch).float().cpu()
                    per_example = values.view(-1, batch["index"].numel()).t()  # [B, S]
                    if table is None:
                        table = torch.full((size, per_example.shape[1]), float("nan"))
                    table[batch["index"].cpu()] = per_example
                if table is not None:
                    tables[split] = table
        finally:
            policy.train(was_training)
        self.tables = tables
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            # Per-process staging name: jobs of a parallel sweep may finish the same table together.
            staging = cache_file.with_suffix(f".{os.getpid()}.tmp")
            torch.save(tables, staging)
            staging.replace(cache_file)
            log.info("reference log-probs cached at %s", cache_file)
        return True


def cache_key(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:24]
