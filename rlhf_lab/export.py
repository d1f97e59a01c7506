"""Export the trained policy in Hugging Face format (safetensors)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def export_model(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    merge_adapter: bool = True,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` (and ``tokenizer``) so ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it.

    A peft model is merged into its base first (``merge_adapter``; a quantised base is dequantised after
    the merge), or saved as an adapter alone that ``peft.AutoPeftModelForCausalLM.from_pretrained`` loads.
    Merging happens in place: call this last.

    Args:
        model: The trained model (possibly peft-wrapped).
        tokenizer: Its tokenizer (saved beside it, with the chat template).
        out_dir: Target directory.
        merge_adapter: Merge LoRA/DoRA weights into the base.
        state_dict: A full (gathered) state dict of a sharded model; saved instead of the model's own. A
            sharded peft model is saved as an adapter (merging needs the unsharded weights).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        return out_dir
    if hasattr(model, "merge_and_unload") and merge_adapter:
        model = model.merge_and_unload()
        if getattr(model, "is_quantized", False):
            # QLoRA: merged into the 4/8-bit base, then dequantised so the export loads without bitsandbytes.
            model = model.dequantize()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    log.info("exported model to %s", out_dir)
    return out_dir
