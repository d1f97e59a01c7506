"""Sampling completions from a causal LM: the generation service the objectives that sample share.

`generate` runs its own decoding loop over the decoder with a KV cache (the head only on the last
position), so it can return, for every sampled token, its log-prob under the sampling distribution
(``softmax(logits / temperature)``, before top-k/top-p filtering: the same quantity a teacher-forced pass
at that temperature gives, which is what importance ratios in online RL compare). Stops at EOS; a row that
reaches ``max_new_tokens`` without EOS is reported as truncated. Outputs and the attention mask are
preallocated for the longest completion and written in place; once half the batch has finished, finished
rows leave the batch and the KV cache (``compact_at``), so later steps compute only the rows still going.

Under data parallelism every rank runs the loop until every rank is done: sharded models (FSDP2,
DeepSpeed ZeRO-3) gather their parameters inside each forward, which is a collective, so no rank may stop
early (a rank whose rows have all finished keeps one in its batch).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf_lab.data.batches import Sequences
from rlhf_lab.draws import draw, row_uniforms
from rlhf_lab.errors import check_range
from rlhf_lab.logprobs import decoder_and_head, forward_inputs, last_hidden_state, unwrap_model


@dataclass
class SamplingConfig:
    """How completions are sampled.

    Attributes:
        max_new_tokens: Longest completion (EOS included).
        temperature: Softmax temperature (ignored when ``do_sample`` is false).
        top_p: Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``.
        top_k: Keep the ``top_k`` most likely tokens (0: all).
        do_sample: Sample; false decodes greedily.
        min_new_tokens: EOS cannot come before this many tokens (its logit is -inf until then, as
            transformers' ``MinNewTokensLengthLogitsProcessor``; the reported log-probs are those of the
            constrained distribution there).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("min_new_tokens", self.min_new_tokens, 0, self.max_new_tokens - 1)
        check_range("temperature", self.temperature, 0.0, None, low_inclusive=False)
        check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)
        check_range("top_k", self.top_k, 0)


@dataclass
class Generation:
    """Sampled completions and their log-probs.

    Attributes:
        prompts: The (left-padded) prompts generated from, ``[B, P]``.
        completion_ids: ``[B, L]`` sampled tokens, EOS included, ``pad_token_id`` after it.
        completion_mask: ``[B, L]`` True at sampled tokens up to and including EOS.
        logps: ``[B, L]`` log-prob of each sampled token under ``softmax(logits / temperature)`` (0 after
            the end).
        truncated: ``[B]`` True where no EOS came within ``max_new_tokens``.
    """

    prompts: Sequences
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logps: torch.Tensor
    truncated: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """``[B]`` completion lengths in tokens (EOS included)."""
        return self.completion_mask.sum(1)

    def completions(self) -> list[list[int]]:
        """Each row's completion tokens (EOS included, no padding)."""
        return [
            row[mask].tolist() for row, mask in zip(self.completion_ids, self.completion_mask, strict=True)
        ]

    def sequences(self) -> Sequences:
        """Prompt + completion rows for a teacher-forced pass: completion tokens marked in the mask."""
        prompt_width = self.prompts.input_ids.shape[1]
        return Sequences(
            input_ids=torch.cat([self.prompts.input_ids, self.completion_ids], 1),
            attention_mask=torch.cat([self.prompts.attention_mask, self.completion_mask.long()], 1),
            completion_mask=torch.cat(
                [torch.zeros_like(self.prompts.completion_mask[:, :prompt_width]), self.completion_mask], 1
            ),
            images=self.prompts.images,
        )


def _all_finished(finished: torch.Tensor) -> bool:
    done = finished.all().to(torch.int32)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(done, op=torch.distributed.ReduceOp.MIN)
    return bool(done)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Dropout off, and transformers turns the KV cache off under gradient checkpointing in train mode.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _fast_head(head: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The output head as the loop applies it: on CPU, a plain linear head multiplies by a contiguous copy
    of its transposed weight (made once per `generate`: MKL's GEMM runs the ``[B, H] x [H, V]`` product
    about a third faster that way than with the transposed ``[V, H]`` weight). The module itself elsewhere,
    and always for an adapted or a sharded head (FSDP2's DTensor, ZeRO-3's empty partition outside the
    forward that gathers it)."""
    if device.type != "cpu" or type(head) is not nn.Linear or type(head.weight) is not nn.Parameter:
        return head
    if head.weight.shape != (head.out_features, head.in_features):
        return head
    weight = head.weight.t().contiguous()
    bias = head.bias
    return (
        (lambda hidden: hidden @ weight)
        if bias is None
        else (lambda hidden: torch.addmm(bias, hidden, weight))
    )


def _next_token_logits(
    decoder: nn.Module,
    head: Callable[[torch.Tensor], torch.Tensor],
    step_inputs: dict[str, Any],
    cache: Any,
    banned: torch.Tensor,
    cache_name: str = "past_key_values",
) -> tuple[torch.Tensor, Any]:
    """One decoder pass (the prompts, or the last sampled token against the cache): ``[B, V]`` fp32 logits of
    the next token, the multimodal tokens masked, and the updated cache (named ``cache_name``)."""
    outputs = decoder(**step_inputs, **{cache_name: cache}, use_cache=True)
    logits = head(last_hidden_state(outputs)[:, -1]).float()
    if banned.numel():
        logits[:, banned] = float("-inf")
    return logits, getattr(outputs, cache_name)


def cache_keyword(decoder: nn.Module) -> str:
    """The KV cache's name in a decoder's ``forward`` and outputs: ``cache`` from transformers 5.x (which
    warns on every call that still passes ``past_key_values``), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _end_rows(
    token: torch.Tensor,
    token_logp: torch.Tensor,
    finished: torch.Tensor,
    eos: torch.Tensor,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bookkeeping of ended rows: ``pad_token_id`` and log-prob 0 where a row had already ended; also which
    rows were still going (this step's token is theirs) and which have ended now (EOS)."""
    token = torch.where(finished, torch.full_like(token, pad_token_id), token)
    token_logp = torch.where(finished, torch.zeros_like(token_logp), token_logp)
    return token, token_logp, ~finished, finished | torch.isin(token, eos)


@dataclass
class _Rows:
    """The rows still in the decoding batch: their indices in the prompts' batch, the KV cache's rows, their
    attention masks (preallocated to the longest completion, filled in place) and their positions."""

    index: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    finished: torch.Tensor
    width: int
    static: bool

    @classmethod
    def start(cls, prompts: Sequences, positions: torch.Tensor, length: int, static: bool) -> _Rows:
        """Every prompt's row, its mask preallocated for ``length`` more tokens (``static``: for a static KV
        cache, which every pass attends over whole, so every pass gets the whole mask)."""
        batch, width = prompts.input_ids.shape
        mask = prompts.attention_mask.new_zeros(batch, width + length)
        mask[:, :width] = prompts.attention_mask
        device = prompts.input_ids.device
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        return cls(torch.arange(batch, device=device), mask, positions, finished, width, static)

    def mask(self, step: int) -> torch.Tensor:
        """The attention mask of the pass at step ``step`` (its columns up to that token's)."""
        return self.attention_mask if self.static else self.attention_mask[:, : self.width + step]

    def next_inputs(self, tokens: torch.Tensor, step: int) -> dict[str, Any]:
        """The pass after step ``step``: each row's token alone, its mask so far, positions advanced by one
        (``[..., -1:]``: after the prompt's last, text, token every multimodal rotary axis advances too)."""
        self.positions = self.positions[..., -1:] + 1
        return {
            "input_ids": tokens[self.index, step].unsqueeze(1),
            "attention_mask": self.mask(step + 1),
            "position_ids": self.positions,
        }

    def keep(self, keep: torch.Tensor, cache: Any) -> None:
        """Drop the rows not in ``keep`` (a bool mask) from the batch and from ``cache``."""
        kept = keep.nonzero().squeeze(1)
        if self.static:
            _select_static_rows(cache, kept)
        else:
            cache.batch_select_indices(kept)
        self.index, self.attention_mask = self.index[kept], self.attention_mask[kept]
        # Multimodal rotary positions are [3, B, T]: the batch is the second-to-last axis either way.
        self.positions = self.positions.index_select(-2, kept)
        self.finished = self.finished[kept]


def _static_cache(model: nn.Module, length: int) -> Any:
    """A transformers ``StaticCache`` for ``length`` positions: keys and values preallocated on the first
    pass and written in place at each step after (no per-step concatenation)."""
    from transformers import StaticCache

    causal_lm: Any = unwrap_model(model)
    return StaticCache(config=causal_lm.config, max_cache_len=length)


def _select_static_rows(cache: Any, kept: torch.Tensor) -> None:
    """Keep the rows ``kept`` of a ``StaticCache`` (whose layers have no ``batch_select_indices``): one copy
    per compaction, the new tensors' addresses static again for CUDA graphs."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[kept], layer.values[kept]
        layer.batch_size = len(kept)
        torch._dynamo.mark_static_address(layer.keys)
        torch._dynamo.mark_static_address(layer.values)


def _next_tokens(
    logits: torch.Tensor,
    step: int,
    sampling: SamplingConfig,
    eos: torch.Tensor,
    generator: torch.Generator | None,
    uniforms: torch.Tensor | None,
    rows: _Rows,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' next tokens and log-probs (`rlhf_lab.draws.draw`): EOS banned before ``min_new_tokens``,
    each row drawing at its own uniforms when seeded."""
    if step < sampling.min_new_tokens:
        logits[:, eos] = float("-inf")
    return draw(logits, sampling, step, generator, None if uniforms is None else uniforms[rows.index])


def _compact(rows: _Rows, cache: Any, share: float) -> None:
    """Drop finished rows once at least ``share`` of the batch has finished, keeping one row at least (the
    loop runs on until every rank is done: a sharded model's forward is collective)."""
    done = int(rows.finished.sum())
    if not share or done == 0 or done < share * rows.finished.numel():
        return
    keep = ~rows.finished
    if not keep.any():
        keep[0] = True
    rows.keep(keep, cache)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: Sequences,
    sampling: SamplingConfig,
    *,
    eos_token_id: int | list[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    row_seeds: list[int] | None = None,
    compact_at: float = 0.5,
    static_cache: bool = False,
    compile: bool = False,
) -> Generation:
    """Complete left-padded ``prompts`` with ``model`` (a causal LM, possibly peft-wrapped; a vision-language
    model reads the prompts' images in its first pass and never generates its image tokens).

    Args:
        model: The model to sample from.
        prompts: ``[B, P]`` left-padded prompts (`rlhf_lab.data.collate.PromptCollator`).
        sampling: Length, temperature, top-k/top-p, greedy or sampled.
        eos_token_id: Token id(s) that end a completion.
        pad_token_id: Written after a completion's end.
        generator: Random generator for sampling (on the model's device), for reproducible rollouts.
        row_seeds: One seed per row instead of ``generator``: row ``b``'s samples depend on its seed alone,
            not on its batch or process (`rlhf_lab.draws`; online RL seeds by prompt and sample).
        compact_at: Drop finished rows from the batch and the KV cache once this share of it has finished
            (0: never). Never with ``generator``: which rows share a draw would change what each samples.
        static_cache: A KV cache preallocated and written in place (transformers' ``StaticCache``).
        compile: Each one-token pass through ``torch.compile(mode="reduce-overhead")`` over a static cache
            (CUDA graphs on a GPU). The first call compiles.
    """
    decoder, head_module = decoder_and_head(model)
    device, batch = prompts.input_ids.device, prompts.input_ids.shape[0]
    head = _fast_head(head_module, device)
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    banned = torch.tensor(multimodal_token_ids(model) or [], dtype=torch.long, device=device)
    uniforms = row_uniforms(row_seeds, batch, sampling, device)
    if sampling.do_sample and uniforms is None:
        compact_at = 0.0
    # The first pass reads the prompts (and images) and fills the cache (the model's own, if not static).
    step_inputs, cache_name = forward_inputs(decoder, prompts), cache_keyword(decoder)
    rows = _Rows.start(prompts, step_inputs["position_ids"], sampling.max_new_tokens, static_cache or compile)
    step_inputs["attention_mask"] = rows.mask(0)
    cache = _static_cache(model, rows.attention_mask.shape[1]) if rows.static else None
    decode = torch.compile(_next_token_logits, mode="reduce-overhead") if compile else _next_token_logits
    out = _Outputs.empty(batch, sampling.max_new_tokens, pad_token_id, device)
    with _eval_mode(model):
        for step in range(sampling.max_new_tokens):
            forward = decode if step else _next_token_logits  # the prompts' pass has its own shapes
            logits, cache = forward(decoder, head, step_inputs, cache, banned, cache_name)
            token, token_logp = _next_tokens(logits, step, sampling, eos, generator, uniforms, rows)
            token, token_logp, alive, rows.finished = _end_rows(
                token, token_logp, rows.finished, eos, pad_token_id
            )
            out.write(rows, step, token, token_logp, alive)
            if _all_finished(rows.finished):
                break
            _compact(rows, cache, compact_at)
            step_inputs = rows.next_inputs(out.tokens, step)
    return out.generation(prompts)


@dataclass
class _Outputs:
    """Every row's sampled tokens, log-probs, completion mask and whether it ended, preallocated for the
    longest completion and written in place at each row's index in the prompts' batch."""

    tokens: torch.Tensor
    logps: torch.Tensor
    completion_mask: torch.Tensor
    ended: torch.Tensor
    steps: int = 0

    @classmethod
    def empty(cls, batch: int, length: int, pad_token_id: int, device: torch.device) -> _Outputs:
        return cls(
            torch.full((batch, length), pad_token_id, dtype=torch.long, device=device),
            torch.zeros(batch, length, device=device),
            torch.zeros(batch, length, dtype=torch.bool, device=device),
            torch.zeros(batch, dtype=torch.bool, device=device),
        )

    def write(
        self, rows: _Rows, step: int, token: torch.Tensor, logp: torch.Tensor, alive: torch.Tensor
    ) -> None:
        """Step ``step``'s token of each row in the batch (part of the completion where ``alive``: the row
        had not ended before it)."""
        self.tokens[rows.index, step], self.logps[rows.index, step] = token, logp
        self.completion_mask[rows.index, step] = alive
        self.ended[rows.index] = rows.finished
        rows.attention_mask[:, rows.width + step] = alive.long()
        self.steps = step + 1

    def generation(self, prompts: Sequences) -> Generation:
        steps = self.steps
        return Generation(
            prompts=prompts,
            completion_ids=self.tokens[:, :steps],
            completion_mask=self.completion_mask[:, :steps],
            logps=self.logps[:, :steps],
            truncated=~self.ended,
        )


#: Config keys of the tokens that stand for images and videos in a vision-language model's input.
MULTIMODAL_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def multimodal_token_ids(model: nn.Module) -> list[int]:
    """The token ids a vision-language model reads images through, which it must never generate: a
    completion holding one would be taken for an image's place. Empty for a text model."""
    config = getattr(unwrap_model(model), "config", None)
    if getattr(config, "vision_config", None) is None:
        return []
    return sorted(
        {value for key in MULTIMODAL_TOKEN_KEYS if isinstance(value := getattr(config, key, None), int)}
    )


def stop_and_pad_ids(model: nn.Module, tokenizer: Any) -> dict[str, Any]:
    """``eos_token_id`` (the tokenizer's EOS and any the model's generation config adds, e.g. an end-of-turn
    token) and ``pad_token_id``, as `generate` takes them."""
    eos = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        eos |= set(configured if isinstance(configured, list) else [configured])
    return {"eos_token_id": sorted(e for e in eos if e is not None), "pad_token_id": tokenizer.pad_token_id}


#: Where rollouts are generated: ``hf`` (`generate` on the policy itself, any strategy) or ``vllm``.
GENERATION_BACKENDS = ("hf", "vllm")


def check_generation_backend(name: str) -> None:
    """Fail early, with what is missing, for a backend that cannot run here.

    Raises:
        ConfigError: An unknown backend, or ``vllm`` (colocated vLLM needs a CUDA GPU and the ``vllm``
            package, and is not part of this release: rollouts use the policy's own ``hf`` generation).
    """
    from rlhf_lab.errors import ConfigError, check_choice

    check_choice("algo.generation_backend", name, GENERATION_BACKENDS)
    if name == "vllm":
        import importlib.util

        missing = []
        if not torch.cuda.is_available():
            missing.append("no CUDA GPU is visible")
        if importlib.util.find_spec("vllm") is None:
            missing.append("the vllm package is not installed")
        why = "; ".join(missing) if missing else "the colocated vLLM backend is not implemented yet"
        raise ConfigError(
            f"algo.generation_backend=vllm cannot run here ({why}); use algo.generation_backend=hf, which "
            "generates with the policy itself under every strategy"
        )
