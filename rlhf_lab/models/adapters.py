"""Adapters: full fine-tuning, LoRA and DoRA (peft)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlhf_lab.errors import ConfigError, check_range

# Attention input projections across common architectures (ms-swift's DEFAULT targets q/k/v).
ATTENTION_QKV_NAMES = ("q_proj", "k_proj", "v_proj", "query_key_value", "c_attn", "Wqkv", "qkv_proj", "qkv")


class Adapter:
    """Turns a loaded base model into the trainable policy."""

    is_peft: bool = False

    def apply(
        self,
        model: Any,
        task: str = "causal_lm",
        frozen: Callable[[str], bool] | None = None,
        train_in_full: tuple[str, ...] = (),
    ) -> Any:
        """The trainable policy made from ``model``.

        Args:
            model: The loaded base model.
            task: ``causal_lm`` or ``sequence_classification``.
            frozen: Whether a module (by qualified name) stays frozen (a vision-language model's vision
                tower); its parameters already have ``requires_grad`` off.
            train_in_full: Modules trained in full beside an adapter (an unfrozen projector).
        """
        return model


@dataclass
class FullFinetune(Adapter):
    """Train every parameter."""


@dataclass
class LoraAdapter(Adapter):
    """LoRA (Hu et al., 2021) or, with ``use_dora``, DoRA (Liu et al., 2024) through peft.

    Attributes:
        r: Rank of the update.
        alpha: Scaling numerator (update scaled by ``alpha / r``).
        dropout: Dropout on the adapter input.
        target_modules: ``default`` (attention q/k/v projections), ``all`` (every linear layer but the
            output head) or an explicit list of module names.
        use_dora: Weight-decomposed LoRA.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Any = "default"
    use_dora: bool = False
    is_peft: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"adapter.r={self.r} must be a positive integer")
        check_range("adapter.dropout", self.dropout, 0.0, 1.0, high_inclusive=False)

    def resolve_targets(self, model: Any, frozen: Callable[[str], bool] | None = None) -> Any:
        """peft's ``target_modules``; with ``frozen`` (a vision-language model), the qualified names of the
        matching linear layers outside the frozen modules, so LoRA never trains a frozen vision tower."""
        import torch

        linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        if frozen is not None:
            head = model.get_output_embeddings()
            heads = {name for name, module in model.named_modules() if module is head}
            linear = [name for name in linear if not frozen(name) and name not in heads]
        if self.target_modules == "all":
            return "all-linear" if frozen is None else linear
        if self.target_modules == "default":
            present = {name.rsplit(".", 1)[-1] for name in linear}
            targets = [name for name in ATTENTION_QKV_NAMES if name in present]
            if frozen is not None:
                targets = [name for name in linear if name.rsplit(".", 1)[-1] in ATTENTION_QKV_NAMES]
            if not targets:
                raise ConfigError(
                    "adapter.target_modules=default found no attention q/k/v projection in this model; "
                    "set adapter.target_modules=all or list module names"
                )
            return targets
        if isinstance(self.target_modules, str):
            return [self.target_modules]
        return list(self.target_modules)

    def apply(
        self,
        model: Any,
        task: str = "causal_lm",
        frozen: Callable[[str], bool] | None = None,
        train_in_full: tuple[str, ...] = (),
    ) -> Any:
        """Wrap ``model``; for a reward model (``sequence_classification``) the new score head trains in full,
        as do the ``train_in_full`` modules."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.resolve_targets(model, frozen),
            use_dora=self.use_dora,
            bias="none",
            task_type="CAUSAL_LM" if task == "causal_lm" else "SEQ_CLS",
            modules_to_save=list(train_in_full) or None,
        )
        return get_peft_model(model, config)
