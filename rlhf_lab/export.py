"""Export the trained policy in Hugging Face format (safetensors), with a model card, and upload it."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlhf_lab.errors import ConfigError
from rlhf_lab.models.vision import save_processor

log = logging.getLogger(__name__)

_TRUE = {"1", "on", "yes", "true"}


class PushError(ConfigError):
    """``export.push_to_hub`` could not upload the export (offline, no token, or the hub refused it)."""


def export_model(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    merge_adapter: bool = True,
    state_dict: dict[str, Any] | None = None,
    *,
    cfg: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
    push: bool = True,
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
        cfg: The run's config: with it the export gets a model card (``README.md``), and is uploaded when
            ``export.push_to_hub`` names a repository.
        summary: The run's ``summary.json`` values (the card's data counts and held-out metrics).
        push: Upload as ``export.push_to_hub`` says (false: the caller uploads later, `push_to_hub`).

    Raises:
        PushError: The upload failed; the local export is complete.
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
    repo_id = push_target(cfg)
    if cfg is not None:
        write_card(staging, out_dir, cfg, summary or {}, repo_id)
    swap_in(staging, out_dir)
    log.info("exported model to %s", out_dir)
    if repo_id and push:
        push_to_hub(out_dir, repo_id, private=bool((cfg or {}).get("export", {}).get("private", False)))
    return out_dir


def write_card(
    staging: Path, out_dir: Path, cfg: Mapping[str, Any], summary: Mapping[str, Any], repo_id: str | None
) -> None:
    """``README.md``, the model card; a problem writing it only warns (the weights are what matters)."""
    from rlhf_lab.model_card import model_card

    try:
        card = model_card(cfg, summary, staging, local=str(out_dir.resolve()), repo_id=repo_id)
        (staging / "README.md").write_text(card, encoding="utf-8")
    except Exception as error:  # a config shape the card does not know (a custom objective's, say)
        log.warning("could not write the model card %s: %s", out_dir / "README.md", error)


def swap_in(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` (if any) by ``staging``, a sibling directory, in one rename each."""
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.tmp-old-{os.getpid()}")
        out_dir.rename(previous)
        os.replace(staging, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def push_target(cfg: Mapping[str, Any] | None) -> str | None:
    """``export.push_to_hub`` (a repository id), or None."""
    export = (cfg or {}).get("export") or {}
    repo_id = export.get("push_to_hub")
    return str(repo_id) if repo_id else None


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create (or reuse) the model repository ``repo_id`` and upload ``folder`` to it; returns its URL.

    Raises:
        PushError: Offline (``HF_HUB_OFFLINE``), no token, or the hub could not be reached or refused.
    """
    import huggingface_hub
    from huggingface_hub import HfApi

    where = f"export.push_to_hub={repo_id}: not uploaded (the export is kept at {folder})"
    # Checked before any request: the hub client would otherwise retry and print tracebacks.
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE or huggingface_hub.constants.HF_HUB_OFFLINE:
        raise PushError(
            f"{where}: HF_HUB_OFFLINE is set; unset it and upload with `hf upload {repo_id} {folder}`"
        )
    if not huggingface_hub.get_token():
        raise PushError(f"{where}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message="Upload rlhf_lab export",
        )
    except Exception as error:
        # Whatever the hub client raises (its HTTP client's connection errors are not OSErrors, a bad id is a
        # ValueError): the run has finished and its export is on disk, so the failure is one named line.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PushError(f"{where}: {reason}") from error
    log.info("uploaded %s to %s", folder, url)
    print(f"uploaded the export to {url}", flush=True)
    return str(url)


def non_finite(summary: Mapping[str, Any]) -> list[str]:
    """The keys of ``summary`` whose values are NaN or infinite."""
    return sorted(k for k, v in summary.items() if isinstance(v, float) and not math.isfinite(v))


def write_summary(path: Path, summary: Mapping[str, Any]) -> None:
    """``summary.json``, with NaN/inf metrics kept as ``null`` (JSON has no NaN)."""
    from rlhf_lab.checkpoints import atomic_write_text

    diverged = non_finite(summary)
    values = {k: None if k in diverged else v for k, v in summary.items()}
    atomic_write_text(path, json.dumps(values, indent=2, sort_keys=True))


def export_run(
    cfg: Any,
    run_dir: Path,
    objective: Any,
    datamodule: Any,
    tokenizer: Any,
    state_dict: dict[str, Any] | None,
    summary: Mapping[str, Any],
) -> bool:
    """A finished run's ``<run dir>/export`` with its model card, unless the weights or the metrics are not
    finite (`rlhf_lab.train.run` calls it on rank zero); returns whether it exported."""
    import torch

    weights = state_dict.values() if state_dict is not None else objective.policy.model.parameters()
    finite = all(bool(torch.isfinite(w).all()) for w in weights if torch.is_floating_point(w))
    if not finite or summary["run/diverged"]:
        # A model that produces NaN is never published as if it were trained.
        why = "its weights are not finite" if not finite else f"non-finite {', '.join(non_finite(summary))}"
        log.error("not exporting the model: %s", why)
        return False
    export_model(
        objective.policy.model,
        datamodule.images.processor if datamodule.images is not None else tokenizer,
        run_dir / "export",
        cfg.export.merge_adapter,
        state_dict,
        cfg=cfg,
        summary=summary,
        push=False,
    )
    return True
