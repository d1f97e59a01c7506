"""Export the trained policy in Hugging Face format (safetensors)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from rlhf_lab.models.vision import save_processor

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
        tokenizer: Its tokenizer (saved beside it, with the chat template), or a vision-language model's
            processor (its image processor too).
        out_dir: Target directory.
        merge_adapter: Merge LoRA/DoRA weights into the base.
        state_dict: A full (gathered) state dict of a sharded model; saved instead of the model's own. A
            sharded peft model is saved as an adapter (merging needs the unsharded weights).
    """
    # Written beside the target and swapped in whole: a kill mid-export leaves the previous export or none,
    # never a partial one (and the partial staging directory is removed by the next export).
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    staging.mkdir()
    if state_dict is not None:
        model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
    else:
        if hasattr(model, "merge_and_unload") and merge_adapter:
            model = model.merge_and_unload()
            if getattr(model, "is_quantized", False):
                # QLoRA: merged into the 4/8-bit base, then dequantised so the export loads without bitsandbytes.
                model = model.dequantize()
        model.save_pretrained(staging, safe_serialization=True)
    save_processor(tokenizer, staging)
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.tmp-old-{os.getpid()}")
        out_dir.rename(previous)
        os.replace(staging, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
    log.info("exported model to %s", out_dir)
    return out_dir
