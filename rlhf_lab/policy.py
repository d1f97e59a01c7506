"""The policy and its companions: frozen models (teacher, reward models, the copy reference's) and a value model.

`Policy` owns the trainable model (with its adapter) and turns `Sequences` into log-probs through the
chunked path of `rlhf_lab.logprobs` (per sequence, per token, entropies, top-k), scores sequences with a
classification head, and samples completions (`rlhf_lab.generation`).

`FrozenModel` wraps a model built beside the policy from its own spec (`rlhf_lab.models.build`): eval mode,
no gradients, its own tokenizer. `ValueModel` wraps a trainable sequence classifier read at every position.
"The base with its adapters off" is one view, `adapters_disabled`, read by the ``adapter_off`` reference
(`rlhf_lab.reference`), the ``adapter_off`` teacher and a precomputed table under LoRA/DoRA.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

from rlhf_lab.data.batches import Sequences
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
_told_shared: set[str] = set()


def shares_prompts(backbone: nn.Module, width: int) -> bool:
    """Whether ``backbone`` can read packed pairs ``width`` tokens long: a text decoder taking a custom 4-D mask
    (sdpa or eager attention) and no sliding window shorter than the row (the custom mask replaces the
    window); others fall back to unshared rows, saying so once."""
    implementation = _attention(backbone)
    window = getattr(backbone.config, "sliding_window", None)
    name = f"{type(backbone).__name__}/{implementation}/window {window}"
    if (
        implementation in ("sdpa", "eager")
        and getattr(backbone.config, "vision_config", None) is None
        and (window is None or width <= window)
    ):
        if name not in _told_shared:
            _told_shared.add(name)
            log.info(
                "data.prefix_sharing: %s reads each pair's prompt once (chosen and rejected packed)", name
            )
        return True
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
    tail_after: torch.Tensor | None = None,
    sum_sq: bool = False,
) -> SequenceLogps:
    """Run the decoder once over ``sequences`` and score their completion (and, if asked, prompt) tokens
    (`rlhf_lab.logprobs.completion_logps`'s options)."""
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
        tail_after=tail_after,
        sum_sq=sum_sq,
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
        (``eos_token_id``, ``pad_token_id``, ``generator``, ``row_seeds``, ``static_cache``, ``compile``)."""
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


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` (a peft-wrapped model) as its base with the adapters disabled, inside the block: the view
    that the ``adapter_off`` reference, the ``adapter_off`` teacher and a precomputed table under LoRA read."""
    with cast(Any, model).disable_adapter():  # peft's PeftModel.disable_adapter
        yield model
