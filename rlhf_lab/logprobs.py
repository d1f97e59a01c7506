"""The one place that turns hidden states into log-probs: chunked, and only where a token is scored.

Token ``t`` is predicted from the hidden state at ``t - 1``. The output head runs only at scored positions,
in chunks of ``chunk_size`` tokens, and each chunk takes ``logit[target] - logsumexp(logits)``: no
``[batch, seq, vocab]`` tensor and no full-vocabulary log-softmax copy ever exists. Under autograd each
chunk is checkpointed, so only ``[tokens, hidden]`` activations are kept for backward.

The same pass returns what the objectives need: per-sequence sums (offline preference losses), per-token
log-probs and entropies (online RL), and the top-k log-probs of each scored position (distillation).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rlhf_lab.errors import ConfigError


@dataclass
class SequenceLogps:
    """Statistics of the scored tokens of each sequence.

    Attributes:
        logps: ``[N]`` summed log-probs of the completion tokens.
        lengths: ``[N]`` number of completion tokens scored.
        mean_logits: ``[N]`` mean logit over the vocabulary and the completion tokens (detached).
        prompt_logps: ``[N]`` summed log-probs of the prompt tokens (when asked for).
        prompt_lengths: ``[N]`` number of prompt tokens scored (when asked for).
        token_logps: ``[N, T]`` log-prob of token ``t`` given the tokens before it, at completion positions
            (0 elsewhere, and at ``t = 0``), aligned with ``completion_mask`` (when asked for).
        token_entropy: ``[N, T]`` entropy of the predictive distribution for token ``t``, likewise.
        top_k_logps: ``[N, T, k]`` log-probs of the ``k`` most likely tokens at each completion position.
        top_k_ids: ``[N, T, k]`` their token ids.
        tail_logps: ``[N]`` ``logps`` past each row's first ``tail_after`` tokens (LD-DPO; when asked for).
        log_sum_sq_probs: ``[N]`` summed ``log sum_v pi(v)^2`` (WPO; detached; when asked for).
    """

    logps: torch.Tensor
    lengths: torch.Tensor
    mean_logits: torch.Tensor
    prompt_logps: torch.Tensor | None = None
    prompt_lengths: torch.Tensor | None = None
    token_logps: torch.Tensor | None = None
    token_entropy: torch.Tensor | None = None
    top_k_logps: torch.Tensor | None = None
    top_k_ids: torch.Tensor | None = None
    tail_logps: torch.Tensor | None = None
    log_sum_sq_probs: torch.Tensor | None = None

    def rows(self, part: slice) -> SequenceLogps:
        """The statistics of the rows ``part`` (e.g. the chosen block of a pair batch)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        sliced: dict[str, Any] = {k: None if v is None else v[part] for k, v in values.items()}
        return SequenceLogps(**sliced)

    @property
    def mean_logps(self) -> torch.Tensor:
        """``[N]`` per-token mean log-prob of each completion (length-normalised)."""
        return self.logps / self.lengths.clamp(min=1).to(self.logps.dtype)


#: ``logps_recompute=auto`` keeps a pass's head logits for backward when they take at most this many bytes.
STORED_LOGITS_BUDGET = 512 * 2**20


def stored_logits_bytes(tokens: int, head: nn.Module) -> float:
    """What keeping ``tokens`` positions' logits for backward costs: fp32 logits and their softmax (inf when
    the vocabulary is unknown, e.g. a ZeRO-3 partitioned head, so the choice falls to recomputing)."""
    layer: Any = head  # nn.Module types its attributes as Tensor | Module
    vocabulary = getattr(layer, "out_features", 0) or (
        layer.weight.shape[0] if hasattr(layer, "weight") else 0
    )
    return tokens * vocabulary * 8 if vocabulary else float("inf")


def _score_chunk(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    softcap: float | None,
    temperature: float,
    entropy: bool,
    sum_sq: bool,
    top_k: int,
) -> tuple[torch.Tensor, ...]:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    # The vocabulary size comes from the logits: a ZeRO-3 partitioned head's weight has shape [0].
    mean_logits = logits.mean(-1).detach()
    if temperature != 1.0:
        logits = logits / temperature
    normaliser = torch.logsumexp(logits, dim=-1)
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser
    outputs: list[torch.Tensor] = [token_logps, mean_logits]
    if entropy:
        probs = torch.softmax(logits, dim=-1)
        outputs.append(normaliser - (probs * logits).sum(-1))
    if sum_sq:
        # log sum_v p_v^2 = logsumexp(2 log p): WPO's alignment of the sampled distribution (detached).
        outputs.append(torch.logsumexp(2 * (logits - normaliser.unsqueeze(-1)), dim=-1).detach())
    if top_k:
        values, ids = logits.topk(top_k, dim=-1)
        outputs += [values - normaliser.unsqueeze(-1), ids]
    return tuple(outputs)


def _score_chunks(
    selected_hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    chunk_size: int,
    recompute: bool,
    options: tuple[float | None, float, bool, bool, int],
) -> list[torch.Tensor]:
    """`_score_chunk` over ``chunk_size`` scored positions at a time (checkpointed when ``recompute`` and
    autograd is on), its columns concatenated; empty when there is nothing to score."""
    chunks: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, targets.numel(), chunk_size):
        arguments = (
            selected_hidden[start : start + chunk_size],
            targets[start : start + chunk_size],
            head,
            *options,
        )
        if recompute and torch.is_grad_enabled() and selected_hidden.requires_grad:
            chunks.append(checkpoint(_score_chunk, *arguments, use_reentrant=False))
        else:
            chunks.append(_score_chunk(*arguments))
    return [torch.cat(parts) for parts in zip(*chunks, strict=True)]


def _empty_columns(
    hidden_states: torch.Tensor, entropy: bool, sum_sq: bool, top_k: int
) -> list[torch.Tensor]:
    """`_score_chunks`' columns when nothing is scored: empty, of the right kinds."""
    empty = hidden_states.new_zeros(0, dtype=torch.float32)
    columns = [empty, empty]
    if entropy:
        columns.append(empty)
    if sum_sq:
        columns.append(empty)
    if top_k:
        columns += [hidden_states.new_zeros(0, top_k), torch.zeros(0, top_k, dtype=torch.long)]
    return columns


def _dense(
    values: torch.Tensor, keep: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor], shape: tuple[int, int]
) -> torch.Tensor:
    """Scatter the per-scored-token ``values`` kept by ``keep`` to ``index`` of a ``[N, T, ...]`` tensor, zero
    elsewhere (differentiable)."""
    return values.new_zeros((*shape, *values.shape[1:])).index_put(index, values[keep])


def _sequence_statistics(
    columns: list[torch.Tensor],
    positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    target_mask: torch.Tensor,
    prompt_scored: torch.Tensor | None,
    partial: tuple[torch.Tensor | None, torch.Tensor | None],
) -> SequenceLogps:
    """Per-sequence sums of the scored tokens' columns (completion and, with ``prompt_scored``, prompt), and
    the ``partial`` sums asked for: LD-DPO's tail past ``partial[0]`` tokens, WPO's column ``partial[1]``."""
    rows, cols, is_completion = positions
    token_logps, token_mean_logits = columns[0], columns[1]
    zeros = torch.zeros(target_mask.shape[0], device=target_mask.device, dtype=torch.float32)
    lengths = target_mask.sum(1)
    result = SequenceLogps(
        logps=zeros.index_add(0, rows, torch.where(is_completion, token_logps, 0.0)),
        lengths=lengths,
        mean_logits=zeros.index_add(0, rows, torch.where(is_completion, token_mean_logits, 0.0))
        / lengths.clamp(min=1).float(),
    )
    if prompt_scored is not None:
        result.prompt_logps = zeros.index_add(0, rows, torch.where(is_completion, 0.0, token_logps))
        result.prompt_lengths = prompt_scored.sum(1)
    tail_after, sum_sq_column = partial
    if tail_after is not None:
        ordinal = target_mask.cumsum(1)[rows, cols]  # 1-based position of each token in its completion
        in_tail = is_completion & (ordinal > tail_after.to(ordinal.device)[rows])
        result.tail_logps = zeros.index_add(0, rows, torch.where(in_tail, token_logps, 0.0))
    if sum_sq_column is not None:
        result.log_sum_sq_probs = zeros.index_add(0, rows, torch.where(is_completion, sum_sq_column, 0.0))
    return result


def _add_per_token(
    result: SequenceLogps,
    columns: list[torch.Tensor],
    positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    shape: tuple[int, int],
    per_token: bool,
    entropy: bool,
    top_k: int,
) -> SequenceLogps:
    """``result`` with the per-token columns asked for, at the completion tokens of ``[N, T, ...]`` tensors
    (``positions``: each scored token's row, its predicting column, whether it is a completion token)."""
    rows, cols, is_completion = positions
    index = (rows[is_completion], cols[is_completion] + 1)
    if per_token:
        result.token_logps = _dense(columns[0], is_completion, index, shape)
    if entropy:
        result.token_entropy = _dense(columns[2], is_completion, index, shape)
    if top_k:
        result.top_k_logps = _dense(columns[-2], is_completion, index, shape)
        result.top_k_ids = _dense(columns[-1], is_completion, index, shape)
    return result


def completion_logps(
    hidden_states: torch.Tensor,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    head: nn.Module,
    *,
    chunk_size: int = 256,
    logit_softcap: float | None = None,
    prompt_mask: torch.Tensor | None = None,
    per_token: bool = False,
    entropy: bool = False,
    top_k: int = 0,
    temperature: float = 1.0,
    recompute: bool | str = "auto",
    tail_after: torch.Tensor | None = None,
    sum_sq: bool = False,
) -> SequenceLogps:
    """Log-probs of the completion tokens, computing the head only where needed.

    A position counts when ``completion_mask[:, t]`` is set (the first position has no prediction and
    never counts).

    Args:
        hidden_states: ``[N, T, H]`` final hidden states (after the final norm).
        input_ids: ``[N, T]`` token ids.
        completion_mask: ``[N, T]`` bool, True at completion tokens.
        head: The output projection (``lm_head``).
        chunk_size: Tokens per head call; bounds the ``[chunk, vocab]`` logits alive at once.
        logit_softcap: Final logit soft-capping (Gemma 2), if the model uses it.
        prompt_mask: ``[N, T]`` bool, prompt tokens to score as well (summed apart, in ``prompt_logps``).
        per_token, entropy, top_k: Also return ``token_logps`` / ``token_entropy`` ``[N, T]`` / the top-``k``
            log-probs and ids ``[N, T, k]`` (0: no).
        temperature: Divide the logits by this before the softmax (sampling temperature of online RL).
        recompute: True: checkpoint each chunk (its logits are recomputed in backward, never stored). False:
            keep them for backward (one head matmul and softmax fewer per token, ``[tokens, vocab]`` floats
            more memory). ``auto``: keep them when they fit in `STORED_LOGITS_BUDGET` bytes, else recompute.
        tail_after, sum_sq: Also return ``tail_logps`` past ``tail_after[n]`` tokens / ``log_sum_sq_probs``.

    Returns:
        `SequenceLogps`.
    """
    num_sequences, length = input_ids.shape
    target_mask = completion_mask[:, 1:].bool()
    scored_mask = target_mask if prompt_mask is None else target_mask | prompt_mask[:, 1:].bool()
    rows, cols = scored_mask.nonzero(as_tuple=True)
    is_completion = target_mask[rows, cols]
    selected_hidden = hidden_states[:, :-1][rows, cols]
    targets = input_ids[:, 1:][rows, cols]
    if recompute == "auto":
        recompute = stored_logits_bytes(targets.numel(), head) > STORED_LOGITS_BUDGET
    options = (logit_softcap, temperature, entropy, sum_sq, top_k)
    columns = _score_chunks(selected_hidden, targets, head, chunk_size, bool(recompute), options)
    columns = columns or _empty_columns(hidden_states, entropy, sum_sq, top_k)
    prompt_scored = None if prompt_mask is None else scored_mask & ~target_mask
    positions = (rows, cols, is_completion)
    partial = (tail_after, columns[2 + int(entropy)] if sum_sq else None)
    result = _sequence_statistics(columns, positions, target_mask, prompt_scored, partial)
    return _add_per_token(result, columns, positions, (num_sequences, length), per_token, entropy, top_k)


def naive_completion_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """Reference implementation with a full log-softmax (tests only: it materialises ``[N, T, V]``)."""
    return naive_token_logps(logits, input_ids, completion_mask).sum(-1)


def naive_token_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """``[N, T]`` per-token completion log-probs from full logits, aligned like `SequenceLogps.token_logps`."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return F.pad(token_logps * completion_mask[:, 1:], (1, 0))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The underlying transformers model (peft wraps it; its LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack and the output projection of a causal LM (of a vision-language model: its multimodal
    base, which takes the images, and the language model's head)."""
    causal_lm: Any = unwrap_model(model)
    head = causal_lm.get_output_embeddings()
    if hasattr(getattr(causal_lm, "model", None), "get_image_features"):
        decoder = causal_lm.model
    else:
        decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else causal_lm.model
    if head is None or decoder is None:
        raise ConfigError(f"{type(causal_lm).__name__} exposes no decoder/output head; it is not a causal LM")
    return decoder, head


def backbone_and_score_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack and the score head of a sequence classifier (reward and value models)."""
    classifier: Any = unwrap_model(model)
    return getattr(classifier, classifier.base_model_prefix), classifier.score


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left- and right-padded rows get the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_inputs(backbone: Any, sequences: Any) -> dict[str, Any]:
    """The keyword arguments of one decoder pass over ``sequences`` (`rlhf_lab.data.batches.Sequences`).

    Text rows get positions counted over real tokens. Rows with images (a vision-language model's
    multimodal base) also get the image features: the vision tower encodes each distinct image once and
    its features go to every row that shows it (``mm_encoder_outputs``), so a pair's chosen and rejected
    rows share one encoding. Models with multimodal rotary positions (Qwen2-VL's mRoPE) get them from the
    model's own ``get_rope_index``, with the image sizes in the rows' order and padding ignored.
    """
    inputs: dict[str, Any] = {"input_ids": sequences.input_ids, "attention_mask": sequences.attention_mask}
    images = sequences.images
    if images is None or images.shown.numel() == 0:
        inputs["position_ids"] = position_ids(sequences.attention_mask)
        return inputs
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    encoded = backbone.get_image_features(pixel_values=images.pixel_values, **images.per_image)
    distinct = encoded.pooler_output if hasattr(encoded, "pooler_output") else encoded
    shown = tuple(distinct[index] for index in images.shown.tolist())
    # One tensor per row's image, not one stacked tensor: the model takes the tuple as it is.
    inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=shown)}  # type: ignore[arg-type]
    if hasattr(backbone, "get_rope_index"):
        image_token_id = backbone.config.image_token_id
        inputs["position_ids"] = backbone.get_rope_index(
            sequences.input_ids,
            mm_token_type_ids=(sequences.input_ids == image_token_id).int(),
            image_grid_thw=images.per_image["image_grid_thw"][images.shown],
            attention_mask=sequences.attention_mask,
        )[0]
    else:
        inputs["position_ids"] = position_ids(sequences.attention_mask)
    return inputs


def last_hidden_state(outputs: Any) -> torch.Tensor:
    return outputs[0] if isinstance(outputs, tuple) else outputs.last_hidden_state


def _distill_chunk(
    student_hidden: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    beta: float,
    temperature: float,
    teacher_topk: int,
    nll_grad: bool,
) -> tuple[torch.Tensor, ...]:
    from rlhf_lab.losses.distill import distillation_tokens

    tokens = distillation_tokens(
        head(student_hidden),
        teacher_logits,
        targets,
        beta=beta,
        temperature=temperature,
        teacher_topk=teacher_topk,
        nll_grad=nll_grad,
    )
    return tokens.divergence, tokens.nll, tokens.forward_kl, tokens.reverse_kl


def completion_distillation(
    student_hidden: torch.Tensor,
    teacher_logits_at: Any,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    student_head: nn.Module,
    *,
    chunk_size: int = 256,
    beta: float = 0.5,
    temperature: float = 1.0,
    teacher_topk: int = 0,
    nll_grad: bool = True,
) -> Any:
    """Per-token distillation quantities (`rlhf_lab.losses.distill.DistillationTokens`) of every completion
    token, chunked like `completion_logps`: a chunk's student and teacher ``[chunk, vocab]`` logits exist
    only while it is scored, and the student's are recomputed in backward (checkpointed).

    Args:
        student_hidden: ``[N, T, H]`` the student's final hidden states.
        teacher_logits_at: ``(rows, cols) -> [M, V]`` the teacher's logits predicting the tokens after those
            positions (no gradient), called once per chunk.
        input_ids: ``[N, T]``.
        completion_mask: ``[N, T]`` the scored tokens.
        student_head: The student's output projection.
        nll_grad: Whether the loss uses the NLL (False: a metric, computed without gradient).
    """
    from rlhf_lab.losses.distill import DistillationTokens

    rows, cols = completion_mask[:, 1:].bool().nonzero(as_tuple=True)
    targets = input_ids[:, 1:][rows, cols]
    selected = student_hidden[:, :-1][rows, cols]
    parts = []
    for start in range(0, targets.numel(), chunk_size):
        part = slice(start, start + chunk_size)
        with torch.no_grad():
            teacher_logits = teacher_logits_at(rows[part], cols[part])
        arguments = (
            selected[part],
            teacher_logits,
            targets[part],
            student_head,
            beta,
            temperature,
            teacher_topk,
            nll_grad,
        )
        if torch.is_grad_enabled() and selected.requires_grad:
            parts.append(DistillationTokens(*checkpoint(_distill_chunk, *arguments, use_reentrant=False)))
        else:
            parts.append(DistillationTokens(*_distill_chunk(*arguments)))
    if not parts:
        empty = student_hidden.new_zeros(0, dtype=torch.float32)
        return DistillationTokens(empty, empty, empty, empty)
    return DistillationTokens.cat(parts)
