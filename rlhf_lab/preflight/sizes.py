"""Parameter counts of a run's models, from their configs alone: instantiated on the meta device (no memory)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The output head and embeddings: never quantised by bitsandbytes, never LoRA targets under ``all``.
HEAD_NAMES = ("lm_head", "embed_out", "output", "score")


@dataclass
class ModelSize:
    """A model's parameters and the shapes that decide its memory.

    Attributes:
        params: All parameters.
        frozen_params: Parameters frozen even under full fine-tuning (a vision-language model's tower).
        linears: ``(name, in_features, out_features)`` of every linear layer but the output head: what
            quantisation packs and what LoRA can target.
        layers, hidden, intermediate, vocab, heads, kv_dim: The decoder's dimensions (activations).
    """

    params: int
    frozen_params: int = 0
    linears: list[tuple[str, int, int]] = field(default_factory=list)
    layers: int = 1
    hidden: int = 1
    intermediate: int = 1
    vocab: int = 1
    heads: int = 1
    kv_dim: int = 1

    @property
    def linear_params(self) -> int:
        return sum(n_in * n_out for _, n_in, n_out in self.linears)

    def lora_params(self, rank: int, targets: Any, dora: bool = False) -> int:
        """The LoRA factors an adapter of ``rank`` on ``targets`` (``default``, ``all`` or names) adds."""
        from rlhf_lab.models.adapters import ATTENTION_QKV_NAMES

        if targets == "default":
            names: tuple[str, ...] | None = ATTENTION_QKV_NAMES
        elif targets == "all":
            names = None
        else:
            names = (targets,) if isinstance(targets, str) else tuple(targets)
        chosen = [(n_in, n_out) for name, n_in, n_out in self.linears if names is None or name in names]
        return sum(rank * (n_in + n_out) + (n_out if dora else 0) for n_in, n_out in chosen)


def text_dimensions(config: Any) -> dict[str, int]:
    """The decoder's dimensions from a transformers config (a vision-language model's text config)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or 1)
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 1)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or hidden // heads)
    return {
        "layers": int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0) or 1),
        "hidden": hidden,
        "intermediate": int(getattr(text, "intermediate_size", 0) or 4 * hidden),
        "vocab": int(getattr(text, "vocab_size", 0) or 1),
        "heads": heads,
        "kv_dim": kv_heads * head_dim,
    }


def measure_meta(model: Any, frozen_prefixes: tuple[str, ...]) -> tuple[int, int, list[tuple[str, int, int]]]:
    """``(params, frozen params, linears)`` of a meta-device model."""
    from torch import nn

    params = sum(p.numel() for p in model.parameters())
    frozen = sum(
        p.numel()
        for name, p in model.named_parameters()
        if any(part in name.split(".") for part in frozen_prefixes)
    )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = [
        (name.rsplit(".", 1)[-1], module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head and name.rsplit(".", 1)[-1] not in HEAD_NAMES
    ]
    return params, frozen, linears


def size_of_config(config: Any, auto_class: Any, frozen_prefixes: tuple[str, ...] = ()) -> ModelSize:
    """Instantiate ``auto_class`` from ``config`` on the meta device and count (no weights are allocated)."""
    import torch

    with torch.device("meta"):
        model = auto_class.from_config(config)
    params, frozen, linears = measure_meta(model, frozen_prefixes)
    return ModelSize(params=params, frozen_params=frozen, linears=linears, **text_dimensions(config))


def formula_size(dims: dict[str, int], tied: bool = False) -> ModelSize:
    """A Llama-style decoder's parameters from its dimensions (when the config cannot be instantiated)."""
    h, i, kv, vocab, layers = (
        dims["hidden"],
        dims["intermediate"],
        dims["kv_dim"],
        dims["vocab"],
        dims["layers"],
    )
    linears = [("q_proj", h, h), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", h, h)]
    linears += [("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)]
    per_layer = [(name, n_in, n_out) for name, n_in, n_out in linears]
    params = layers * (sum(a * b for _, a, b in per_layer) + 2 * h) + vocab * h * (1 if tied else 2) + h
    return ModelSize(params=params, linears=per_layer * layers, **dims)


def tiny_config(node: Any) -> Any:
    """The transformers config a tiny model (``model=tiny``) is built from (`rlhf_lab.models.tiny`)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=int(node.vocab_size),
        hidden_size=int(node.hidden_size),
        num_hidden_layers=int(node.num_layers),
        num_attention_heads=int(node.num_heads),
        num_key_value_heads=int(node.num_kv_heads),
        intermediate_size=int(node.intermediate_size),
        tie_word_embeddings=False,
    )


def size_of_file(config_file: Path, task: str, trust_remote_code: bool = False) -> ModelSize:
    """The size of a saved model from its ``config.json`` (meta instantiation, else the Llama formula)."""
    from transformers import AutoConfig

    from rlhf_lab.models.vision import PROJECTOR_NAMES, VISION_TOWER_NAMES

    config = AutoConfig.from_pretrained(config_file.parent, trust_remote_code=trust_remote_code)
    vision = getattr(config, "vision_config", None) is not None
    try:
        auto = auto_class_for(task, vision)
        frozen = (*VISION_TOWER_NAMES, *PROJECTOR_NAMES) if vision else ()
        return size_of_config(config, auto, frozen)
    except Exception:  # custom code or an unknown architecture: count the decoder by formula
        raw = json.loads(config_file.read_text())
        return formula_size(text_dimensions(config), bool(raw.get("tie_word_embeddings", False)))


def auto_class_for(task: str, vision: bool) -> Any:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForSequenceClassification,
    )

    if task == "sequence_classification":
        return AutoModelForSequenceClassification
    return AutoModelForImageTextToText if vision else AutoModelForCausalLM
