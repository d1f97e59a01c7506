"""Quantised base weights through bitsandbytes: QLoRA (4-bit NF4) and 8-bit.

A quantised base only makes sense under an adapter: `check_compatible` refuses ``adapter=full`` and the
strategies that cannot shard bitsandbytes parameters, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf_lab.errors import ConfigError, check_choice
from rlhf_lab.models.hub import torch_dtype


class NoQuantization:
    """Full-precision weights (``model.dtype``)."""

    is_quantized = False
    name = "none"

    def load_kwargs(self) -> dict[str, Any]:
        return {}

    def identity(self) -> dict[str, Any]:
        """What changes the quantised weights (keys caches of values computed from them)."""
        return {"name": self.name}

    def prepare(self, model: Any, gradient_checkpointing: bool) -> Any:
        return model


@dataclass
class BitsAndBytes(NoQuantization):
    """bitsandbytes quantisation of the frozen base.

    Attributes:
        bits: 4 (QLoRA, Dettmers et al., 2023) or 8.
        quant_type: 4-bit data type: ``nf4`` or ``fp4``.
        double_quant: Quantise the quantisation constants too (QLoRA's double quantisation).
        compute_dtype: Dtype the 4-bit weights are dequantised to for matmuls.
    """

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    is_quantized = True

    def __post_init__(self) -> None:
        check_choice("quant.bits", self.bits, (4, 8))
        check_choice("quant.quant_type", self.quant_type, ("nf4", "fp4"))
        check_choice("quant.compute_dtype", self.compute_dtype, ("bfloat16", "float16", "float32"))
        self.name = "nf4" if self.bits == 4 else "int8"

    def identity(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "quant_type": self.quant_type,
            "double_quant": self.double_quant,
            "compute_dtype": self.compute_dtype,
        }

    def load_kwargs(self) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.quant_type,
                bnb_4bit_use_double_quant=self.double_quant,
                bnb_4bit_compute_dtype=torch_dtype(self.compute_dtype),
            )
        }

    def prepare(self, model: Any, gradient_checkpointing: bool) -> Any:
        """``prepare_model_for_kbit_training``: fp32 norms/head, input grads, (non-reentrant) checkpointing."""
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )


def check_compatible(quant: Any, adapter: Any, strategy: Any) -> None:
    """Refuse combinations that cannot work, naming both settings and the alternative."""
    if not getattr(quant, "is_quantized", False):
        return
    if not getattr(adapter, "is_peft", False):
        raise ConfigError(
            f"quant={quant.name} with adapter=full: quantised base weights cannot be trained directly; "
            "use adapter=lora (QLoRA) or adapter=dora, or quant=none for full fine-tuning"
        )
    kind = type(strategy).__name__
    if kind == "FSDPSpec":
        raise ConfigError(
            f"quant={quant.name} with strategy=fsdp: FSDP2 cannot shard bitsandbytes parameters; "
            "use strategy=ddp (or zero2), or quant=none with strategy=fsdp"
        )
    stage = getattr(strategy, "stage", None)
    if stage == 3:
        raise ConfigError(
            f"quant={quant.name} with strategy=zero3: ZeRO-3 cannot partition bitsandbytes "
            "parameters with the installed versions; use strategy=zero2 or ddp with QLoRA, or "
            "quant=none with strategy=zero3"
        )
