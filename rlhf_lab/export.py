"""Export the trained policy in Hugging Face format (safetensors)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def export_model(model: Any, tokenizer: Any, out_dir: Path, merge_adapter: bool = True) -> Path:
    """Save ``model`` (and ``tokenizer``) so ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it.

    A peft model is merged into its base first (``merge_adapter``), or saved as an adapter alone that
    ``peft.AutoPeftModelForCausalLM.from_pretrained`` loads. Merging happens in place: call this last.

    Args:
        model: The trained model (possibly peft-wrapped).
        tokenizer: Its tokenizer (saved beside it, with the chat template).
        out_dir: Target directory.
        merge_adapter: Merge LoRA/DoRA weights into the base.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload") and merge_adapter:
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    log.info("exported model to %s", out_dir)
    return out_dir
